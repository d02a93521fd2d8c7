"""The serving image recipe: Dockerfile stages and lint, the archive step it runs, the
pinned wheel lists, logs to stdout."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import sys
import xml.etree.ElementTree as ET
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from serving.runtime import constants as C
from tests.support.k8s import (
    container,
    dockerfile_instructions,
    exec_form,
    final_stage,
    run,
    tool,
)
from tests.support.paths import K8S, REPO


def test_hadolint_passes_the_dockerfile():
    done = run([tool("hadolint"), str(K8S / "Dockerfile")])
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    done = run([tool("hadolint"), str(bad)])
    assert done.returncode != 0 and "DL3007" in done.stdout, done.stdout


ARCHIVE_CMD = "python -m serving.cli archive"  # `colorizer archive`, from the source tree


def archives_built_by_dockerfile() -> dict[str, str]:
    """{profile: archive file name in the image's model store}, from the build stage."""
    runs = [a for s, i, a in dockerfile_instructions() if i == "RUN" and ARCHIVE_CMD in a]
    assert len(runs) == 1
    m = re.search(r"for profile in ([\w ]+); do", runs[0])
    assert m, runs[0]
    names = re.findall(r"/model-store/(colorizer-\$profile\.mar)", runs[0])
    assert names, runs[0]
    return {p: names[0].replace("$profile", p) for p in m[1].split()}


def test_dockerfile_archive_commands_parse_with_the_real_cli():
    """The image runs `colorizer archive` (as python -m serving.cli) like the tests and
    `make serve` do; a renamed flag or profile fails here, not in someone's image build."""
    from serving.cli import build_parser
    from serving.launcher.archive import PROFILES

    (run_args,) = [a for s, i, a in dockerfile_instructions() if i == "RUN" and ARCHIVE_CMD in a]
    built = archives_built_by_dockerfile()
    assert set(built) == set(PROFILES)
    command = re.search(r"python -m serving\.cli (archive .*?)(?:&&|;|$)", run_args)[1]
    for profile in built:
        argv = shlex.split(command.replace("$profile", profile))
        args = build_parser("archive").parse_args(argv)
        assert args.command == "archive" and args.profile == profile
        assert str(args.model) == "model_store/default/colorizer.pt"


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # the tiny model export
def test_dockerfile_archive_step_runs_on_what_the_build_stage_copies(tmp_path):
    """Replays the build stage outside a container: copy exactly what its COPY lines name
    (the shipped weights replaced by a tiny exported model, for speed), run its archive
    RUN line with /model-store redirected, and open the two archives it leaves."""
    from tests.support.models import export_test_model

    src, store = tmp_path / "src", tmp_path / "model-store"
    instructions = dockerfile_instructions()
    (archive_stage,) = {s for s, i, a in instructions if i == "RUN" and ARCHIVE_CMD in a}
    build_stage = [(i, a) for s, i, a in instructions if s == archive_stage]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "generated")
    for instr, args in build_stage:
        if instr != "COPY":
            continue
        *sources, dest = args.split()
        for source in sources:
            target = src / dest / Path(source).name if dest.endswith("/") else src / dest
            if source == "model_store/default":
                export_test_model(target / "colorizer.pt", "tiny")
            elif (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=ignore)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, target)
    (step,) = [a for i, a in build_stage if i == "RUN" and ARCHIVE_CMD in a]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    done = run(
        ["bash", "-o", "pipefail", "-c", step.replace("/model-store/", f"{store}/")],
        cwd=src,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for profile, name in archives_built_by_dockerfile().items():
        with zipfile.ZipFile(store / name) as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
            assert manifest["model"]["modelName"] == C.MODEL_NAME
            config = mar.read("model-config.yaml").decode()
            assert f"profile: {profile}" in config.splitlines()[0]


def test_each_overlay_serves_its_profile_archive_under_the_model_name(rendered):
    built = archives_built_by_dockerfile()
    cmd = exec_form([a for i, a in final_stage(dockerfile_instructions()) if i == "CMD"][-1])
    assert cmd[1] in {f"{C.MODEL_NAME}={name}" for name in built.values()}
    for overlay, docs in rendered.items():
        args = container(docs)["args"]
        assert args == ["--models", f"{C.MODEL_NAME}={built[overlay]}"], overlay


def stage_runs(name: str) -> list[str]:
    """The RUN arguments of the stage named ``name``."""
    instructions = dockerfile_instructions()
    (index,) = {s for s, i, a in instructions if i == "FROM" and a.endswith(f" AS {name}")}
    return [a for s, i, a in instructions if s == index and i == "RUN"]


def build_args() -> dict[str, str]:
    """{name: default} of the ARGs before the first FROM."""
    return dict(
        a.partition("=")[::2] for s, i, a in dockerfile_instructions() if i == "ARG" and s == -1
    )


def test_dockerfile_base_is_the_official_python_by_default_and_the_helpers_too():
    """`docker build -f k8s/Dockerfile .` (README) builds on the official image; the
    helper's default and its stand-in's name agree, and the stand-in never takes the
    official name."""
    image = load_module("image")
    stages = dict(reversed(a.split(" AS ")) for s, i, a in dockerfile_instructions() if i == "FROM")
    assert stages["venv"] == "${BASE_IMAGE}" and stages["archive"] == "runtime"
    assert stages["runtime-cuda"] == stages["runtime-cpu"] == "venv"
    assert stages["runtime"] == "runtime-${TORCH_VARIANT}"
    base_images = set(stages.values()) - set(stages) - {"runtime-${TORCH_VARIANT}"}
    assert base_images == {"${BASE_IMAGE}"}, "the venv moves between stages: same Python"
    assert build_args()["TORCH_VARIANT"] == "cuda"  # one image for CPU and GPU nodes
    assert build_args()["BASE_IMAGE"] == image.DEFAULT_BASE == "python:3.11-slim-bookworm"
    assert image.STANDIN_BASE.startswith("colorizer-base:") and "standin" in image.STANDIN_BASE
    assert "python3.11" in image.STANDIN_PACKAGES  # the official image's minor version


def test_dockerfile_final_stage_is_lean_and_starts_torchserve():
    instructions = dockerfile_instructions()
    final = final_stage(instructions)
    installs = " ".join(a for i, a in final if i == "RUN")
    # Java for TorchServe's frontend, tini as PID 1, nginx-light for the REST front.
    for package in ("openjdk-17-jre-headless", "tini", "nginx-light"):
        assert package in installs.split(), package
    for build_tool in ("build-essential", "gcc", "g++", "make ", "git", "-dev ", "pip install"):
        assert build_tool not in installs, build_tool
    assert "dumb-init" not in installs
    copied = [a.split() for i, a in final if i == "COPY" and a.startswith("--from=")]
    # The served venv comes from the runtime stage, never from the stage with the archiver.
    assert ["--from=runtime", "/opt/venv", "/opt/venv"] in copied
    assert [c for c in copied if c[0] == "--from=archive"] == [
        ["--from=archive", "/model-store", "/home/model-server/model-store"]
    ]
    entrypoint = exec_form([a for i, a in final if i == "ENTRYPOINT"][-1])
    # tini reaps; drain.py --group holds SIGTERM until nothing is in flight, then signals
    # the JVM and the workers too, not only the torchserve launcher, and exits 0 for it.
    drain = ["python", "-I", "/home/model-server/drain.py", "--group", "--"]
    assert entrypoint[:8] == ["tini", "--", *drain[:3], "--group", "--", "torchserve"]
    assert entrypoint[8] == "--foreground" and "--ts-config" in entrypoint
    copied_here = " ".join(a for i, a in final if i == "COPY" and not a.startswith("--from="))
    assert "k8s/drain.py" in copied_here


APP = "/home/model-server/app"  # the colorizer's code in the served image


def test_served_image_can_import_the_fronts_code_but_workers_use_their_archive():
    """The gRPC front runs as `python -m serving.front.grpc_front`: serving/ is copied to
    APP, which a .pth puts on the venv's path after site-packages (not PYTHONPATH, which
    would come before the archive a TorchServe worker imports serving.runtime from)."""
    instructions = dockerfile_instructions()
    final = final_stage(instructions)
    assert ["serving", f"{APP}/serving"] in [a.split() for i, a in final if i == "COPY"]
    pth = [a for a in stage_runs("venv") if ".pth" in a]
    assert len(pth) == 1 and f"echo {APP} >" in pth[0], pth
    assert not any("PYTHONPATH" in a for i, a in final if i == "ENV")


def test_pip_steps_cache_wheels_outside_the_layers_and_take_an_optional_ca():
    """A rebuild after a requirements change downloads only what changed (pip's cache is a
    BuildKit cache mount), and the CA secret is optional: a build without it works."""
    pip_runs = [a for s, i, a in dockerfile_instructions() if i == "RUN" and "pip install" in a]
    assert len(pip_runs) == 3  # the image list (cuda or cpu variant), the build stage's tools
    for step in pip_runs:
        assert "--mount=type=cache,target=/root/.cache/pip" in step
        assert "--mount=type=secret,id=ca " in step and "required" not in step
        assert "if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi" in step
        assert "--no-cache-dir" not in step and "--no-deps" in step and "pip check" in step
    assert "PIP_NO_CACHE_DIR" not in (K8S / "Dockerfile").read_text()


def test_pruned_triton_is_never_needed_by_the_served_code():
    """The runtime stage deletes triton's files (torch.compile's GPU code generator):
    the served code runs TorchScript and never compiles."""
    prune = [a for a in stage_runs("runtime-cuda") if "rm -rf" in a]
    assert len(prune) == 1 and '"$site/triton"' in prune[0] and "pip check" in prune[0]
    for path in [*(REPO / "serving").rglob("*.py"), *(REPO / "handlers").rglob("*.py")]:
        text = path.read_text()
        for use in ("torch.compile", "import triton", "torch._inductor", "torch._dynamo"):
            assert use not in text, f"{path}: {use} needs the triton the image prunes"


def test_dockerfile_copies_only_what_the_context_allows_and_the_repo_has():
    patterns = [
        line.strip()
        for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    assert patterns[0] == "*", "an allow-list"
    for _, instr, args in dockerfile_instructions():
        if instr != "COPY" or args.startswith("--from"):
            continue
        for src in args.split()[:-1]:
            src = src.rstrip("/")
            assert any(src == a or src.startswith(a + "/") for a in allowed), src
            assert (REPO / src).exists() or src.startswith("model_store/default"), src


def read_lock(name: str) -> dict[str, str]:
    """{canonical name: version} of k8s/requirements-<name>.txt; every line pinned."""
    pinned = {}
    for ln in (K8S / f"requirements-{name}.txt").read_text().splitlines():
        if not ln.strip() or ln.startswith("#"):
            continue
        pkg, sep, version = ln.partition("==")
        assert sep and version, f"not pinned: {ln}"
        pinned[canonicalize_name(pkg)] = version
    return pinned


def load_module(name: str):
    """k8s/<name>.py (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"k8s_{name}", K8S / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_image_lock_module():
    return load_module("image_lock")


@pytest.mark.parametrize("name", ["image", "archive"])
def test_image_wheel_lists_agree_with_pyproject(name):
    image_lock = load_image_lock_module()
    pinned = read_lock(name)
    wanted = {"image": image_lock.runtime_requirements, "archive": image_lock.archive_requirements}
    available = pinned | (read_lock("image") if name == "archive" else {})
    stale = [
        str(req)
        for req in wanted[name]()
        if canonicalize_name(req.name) not in available
        or not req.specifier.contains(available[canonicalize_name(req.name)], prereleases=True)
    ]
    assert not stale, f"k8s/requirements-{name}.txt is stale for {stale}: run `make image-lock`"
    # Closed under dependencies (names from the installed metadata): the image installs
    # each list with --no-deps (the archive list on top of the image list), then pip check.
    missing = set()
    for pkg in pinned:
        try:
            requires = metadata.requires(pkg) or []
        except metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, requires):
            if (r.marker is None or r.marker.evaluate({"extra": ""})) and canonicalize_name(
                r.name
            ) not in available:
                missing.add(f"{pkg} -> {r.name}")
    assert not missing, f"run `make image-lock`: {sorted(missing)}"


def test_served_image_holds_the_runtime_torchserve_and_the_grpc_front_only():
    image = read_lock("image")
    assert {"torch", "pillow", "numpy", "torchserve", "torchvision"} <= set(image)  # nvJPEG
    assert {"grpcio", "protobuf"} <= set(image)  # the gRPC front
    for not_served in ("timm", "grpcio-tools", "torch-model-archiver", "requests", "tqdm"):
        assert not_served not in image, f"{not_served} is not used by the served image"
    assert "torch-model-archiver" in read_lock("archive")


def test_container_logs_go_to_stdout_only():
    root = ET.parse(K8S / "log4j2.xml").getroot()
    appenders = list(root.find("Appenders"))
    assert [a.tag for a in appenders] == ["Console"]
    assert appenders[0].get("target") == "SYSTEM_OUT"


# ---- the build helper (k8s/image.py, `make image`) -------------------------------------


def test_helper_tags_the_image_the_manifests_deploy():
    image = load_module("image")
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (entry,) = [e for e in kustomization["images"] if e["name"] == image.IMAGE_NAME]
    assert image.default_tag() == f"{image.IMAGE_NAME}:{entry['newTag']}"


def test_helper_builds_with_host_network_the_base_arg_and_an_optional_ca():
    image = load_module("image")
    cmd = image.build_command("docker", False, "b:1", "colorizer:0.1.0", cert="/ca.pem")
    assert cmd[:2] == ["docker", "build"] and cmd[-1] == str(REPO)
    joined = " ".join(cmd)
    assert f"--file {K8S / 'Dockerfile'}" in joined and "--network host" in joined
    assert "--build-arg BASE_IMAGE=b:1" in joined and "--secret id=ca,src=/ca.pem" in joined
    without = image.build_command("docker", True, "b:1", "colorizer:0.1.0")
    assert without[:4] == ["docker", "buildx", "build", "--load"]
    assert "--secret" not in without
    # Never a bridge or NAT rules: no container gets a non-loopback address of its own.
    assert set(image.DOCKERD_ARGS) == {"--bridge=none", "--iptables=false"}


def test_helper_stops_only_a_dockerd_it_started(tmp_path, monkeypatch):
    """A recorded pid that is not a dockerd (here: this test's own process) is left alone."""
    monkeypatch.setenv("COLORIZER_IMAGE_STATE", str(tmp_path))
    image = load_module("image")
    assert image.stop_engine() is False  # nothing recorded
    (tmp_path / "dockerd.json").write_text(json.dumps({"pid": os.getpid()}))
    assert image.stop_engine() is False  # recorded, but not a dockerd: not signalled
    assert not (tmp_path / "dockerd.json").exists()


def test_helper_labels_its_images_and_prunes_only_those():
    """Every build labels its image; tidy removes untagged images with that label only,
    and trims the build cache only on an engine the helper started."""
    image = load_module("image")
    cmd = image.build_command("docker", False, "b:1", "colorizer:0.1.0")
    assert f"--label {image.TITLE_LABEL}" in " ".join(cmd)
    assert image.TITLE_LABEL == "org.opencontainers.image.title=colorizer"
    ours = image.tidy_commands("docker", True, 10)
    theirs = image.tidy_commands("docker", False, 10)
    (prune_images,) = theirs
    assert prune_images == ours[0]
    assert prune_images[1:3] == ["image", "prune"] and "--all" not in prune_images
    assert prune_images[-2:] == ["--filter", f"label={image.TITLE_LABEL}"]
    assert ours[1] == ["docker", "builder", "prune", "--force", "--keep-storage", "10000000000"]
    assert image.tidy_commands("docker", True, -1) == theirs  # negative: cache left alone
    assert image.reclaimed("Deleted Images:\n...\nTotal reclaimed space: 5.34GB\n") == "5.34GB"
    assert image.reclaimed("") == "0B"


def test_make_test_builds_the_image_first():
    makefile = (REPO / "Makefile").read_text()
    (test_rule,) = re.findall(r"^test:(.*)$", makefile, re.M)
    assert "image" in test_rule.split()
    (image_rule,) = re.findall(r"^image:.*\n\t(.*)$", makefile, re.M)
    assert "k8s/image.py build" in image_rule


def test_cpu_variant_has_no_cuda_wheels_and_takes_torch_from_the_wheelhouse():
    """TORCH_VARIANT=cpu: the pinned list minus torch, torchvision, triton and the CUDA
    wheels, plus a +cpu torch from k8s/wheelhouse (never from an index); pip check."""
    (step,) = [a for a in stage_runs("runtime-cpu") if "pip install" in a]
    assert "--mount=type=bind,source=k8s/wheelhouse,target=/wheelhouse" in step
    assert '--no-index --find-links /wheelhouse "torch==${version}+cpu"' in step
    dropped = re.search(r"grep -vE '\^\((.*?)\)==' /tmp/requirements-image.txt", step)[1]
    pattern = re.compile(rf"^({dropped})$")
    image = read_lock("image")
    gone = {name for name in image if pattern.match(name)}
    assert {"torch", "torchvision", "triton"} <= gone
    assert {n for n in image if n.startswith(("nvidia-", "cuda-"))} <= gone
    assert not gone & {"torchserve", "pillow", "numpy", "grpcio", "protobuf", "pyyaml"}
    assert step.rstrip().endswith("-delete") and "pip check" in step
    image_helper = load_module("image")
    assert image_helper.variant_tag("colorizer:0.1.0", "cpu") == "colorizer:0.1.0-cpu"
    assert (K8S / "wheelhouse" / ".gitignore").is_file()  # the bind mount's source exists
    assert "!k8s/wheelhouse/" in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
