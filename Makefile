# All set-up goes through these targets; each is idempotent.
#   make serve  - set up what is missing, build the archive from the shipped default, start the service
#   make test   - set up what is missing and run the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv java protos test lint serve stop clean

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

# gRPC stubs from the .proto files shipped inside the installed TorchServe.
protos: venv
	$(PY) -m protos.build

test: venv java protos
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

serve: venv java protos
	$(VENV)/bin/colorizer serve

stop: venv
	$(VENV)/bin/colorizer stop

clean:
	rm -rf $(VENV) protos/generated model_store/*.mar .serve
