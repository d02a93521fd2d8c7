"""The serving image recipe: Dockerfile stages and lint, the archive step it runs, the
pinned wheel lists, logs to stdout."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import sys
import xml.etree.ElementTree as ET
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
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


def test_dockerfile_final_stage_is_lean_and_starts_torchserve():
    instructions = dockerfile_instructions()
    stages = [a for s, i, a in instructions if i == "FROM"]
    assert stages[0].endswith(" AS runtime") and stages[1] == "runtime AS archive"
    base_images = {a.split()[0] for a in stages} - {"runtime"}
    assert len(base_images) == 1, "the venv moves between stages: same Python in both"
    assert base_images.pop().startswith("python:3.11-")
    final = final_stage(instructions)
    installs = " ".join(a for i, a in final if i == "RUN")
    assert "openjdk-17-jre-headless" in installs
    for build_tool in ("build-essential", "gcc", "g++", "make ", "git", "-dev ", "pip install"):
        assert build_tool not in installs, build_tool
    copied = [a.split() for i, a in final if i == "COPY" and a.startswith("--from=")]
    # The served venv comes from the runtime stage, never from the stage with the archiver.
    assert ["--from=runtime", "/opt/venv", "/opt/venv"] in copied
    assert [c for c in copied if c[0] == "--from=archive"] == [
        ["--from=archive", "/model-store", "/home/model-server/model-store"]
    ]
    entrypoint = exec_form([a for i, a in final if i == "ENTRYPOINT"][-1])
    # tini -g: SIGTERM reaches the JVM and the worker, not only the torchserve launcher.
    assert entrypoint[:5] == ["tini", "-g", "--", "torchserve", "--foreground"]
    assert "--ts-config" in entrypoint


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


def load_image_lock_module():
    spec = importlib.util.spec_from_file_location("image_lock", K8S / "image_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
