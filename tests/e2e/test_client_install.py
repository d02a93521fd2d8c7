"""The client as a caller installs it: the wheel `make client-wheel` builds, in a clean
venv with nothing but its own dependencies (no torch, numpy or TorchServe), colorizing
through the session's real TorchServe over REST and gRPC. pip also resolves the same
wheel for Python 3.10, 3.12 and 3.13 (binary wheels only, without installing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.support.paths import REPO
from tests.support.photos import open_image, photo_paths

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HEAVY = {"torch", "torchvision", "numpy", "pillow", "torchserve", "torch-model-archiver"}
OTHER_PYTHONS = ("3.10", "3.12", "3.13")


def run(*argv: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The client wheel, built as `make client-wheel` builds it (stubs from `make protos`)."""
    assert (REPO / "protos" / "generated" / "inference_pb2.py").is_file(), "run `make protos`"
    shutil.rmtree(REPO / "build", ignore_errors=True)  # setuptools would reuse stale copies
    out = tmp_path_factory.mktemp("wheel")
    built = run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", out, REPO, cwd=REPO,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("colorizer-*.whl")
    return path


@pytest.fixture(scope="module")
def client_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel and what it pulls from the package index."""
    root = tmp_path_factory.mktemp("client-venv")
    venv.create(root, with_pip=True)
    done = run(root / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    assert done.returncode == 0, done.stderr
    return root


def test_the_install_holds_no_model_runtime(client_venv):
    listed = run(client_venv / "bin" / "python", "-m", "pip", "list", "--format", "json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"colorizer", "requests", "grpcio", "protobuf"} <= names
    assert not names & HEAVY, names & HEAVY
    probe = run(client_venv / "bin" / "python", "-c", "import torch")
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_colorize_runs_from_the_client_install(client_venv, server, protocol, tmp_path):
    photo = photo_paths()[0]
    where = ["--url", server.url] if protocol == "rest" else ["--grpc", server.grpc]
    done = run(client_venv / "bin" / "colorizer", "colorize", photo, "-o", tmp_path, *where)
    assert done.returncode == 0, done.stderr
    out = tmp_path / photo.name
    assert open_image(out.read_bytes()).size == open_image(photo.read_bytes()).size


def test_colorizer_client_runs_and_names_the_request_id_on_failure(client_venv, server):
    code = (
        "import sys\n"
        "from serving.client import ColorizerClient, ServiceError\n"
        "with ColorizerClient(sys.argv[1]) as client:\n"
        "    print(len(client.colorize(open(sys.argv[2], 'rb').read()).data))\n"
        "    try:\n"
        "        client.colorize(b'junk', request_id='from-clean-venv')\n"
        "    except ServiceError as exc:\n"
        "        print(exc)\n"
    )
    done = run(client_venv / "bin" / "python", "-c", code, server.url, photo_paths()[0])
    assert done.returncode == 0, done.stderr
    size, error = done.stdout.splitlines()
    assert int(size) > 1000
    assert error.startswith("400 not_an_image") and "request id from-clean-venv" in error


def test_other_commands_name_the_extra_they_need(client_venv):
    done = run(client_venv / "bin" / "colorizer", "serve", "--help")
    assert done.returncode == 2
    assert "pip install 'colorizer[launcher]'" in done.stderr


@pytest.mark.parametrize("python", OTHER_PYTHONS)
def test_pip_resolves_the_client_for_other_pythons_without_torch(wheel, python, tmp_path):
    report = tmp_path / "report.json"
    done = run(
        sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
        "--only-binary=:all:", "--python-version", python, "--target", tmp_path / "target",
        "--report", report, wheel,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"colorizer", "grpcio", "protobuf", "requests"} <= names
    assert not names & HEAVY, names & HEAVY
