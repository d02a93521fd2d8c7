"""What a caller installs: pyproject's base dependencies are the client alone (no torch,
numpy or TorchServe), on Python 3.10-3.13, and every other command names its extra.
tests/e2e/test_client_install.py installs it for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from serving.cli import COMMANDS, EXTRA_OF_COMMAND, main
from tests.support.paths import REPO

CLIENT_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# What the client install runs: ColorizerClient, `colorizer colorize`, the gRPC stubs' loader.
CLIENT_FILES = (
    "serving/__init__.py",
    "serving/cli.py",
    "serving/client/__init__.py",
    "serving/client/base.py",
    "serving/client/colorize.py",
    "serving/client/grpc_transport.py",
    "serving/client/rest.py",
    "serving/client/retry.py",
    "serving/client/sdk.py",
    "serving/runtime/__init__.py",
    "serving/runtime/constants.py",
    "serving/runtime/errors.py",
    "serving/runtime/request_meta.py",
    "protos/__init__.py",
)
# Everything the distribution packages (requires-python holds for all of it).
PACKAGED = ("serving", "handlers", "training", "protos")
HEAVY = ("torch", "torchvision", "numpy", "pillow", "torchserve", "torch-model-archiver", "timm")


def project() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def test_the_base_install_is_the_client_and_pulls_no_model_runtime():
    names = {canonicalize_name(Requirement(r).name) for r in project()["dependencies"]}
    assert names == {"requests", "grpcio", "protobuf", "tqdm"}
    assert not names & set(HEAVY)


def test_the_client_admits_python_3_10_to_3_13():
    admitted = SpecifierSet(project()["requires-python"])
    assert all(admitted.contains(version) for version in CLIENT_PYTHONS)


def vermin_310(*paths: str) -> subprocess.CompletedProcess:
    """vermin on ``paths``: syntax and standard-library use newer than Python 3.10 fail it."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "vermin"), "-t=3.10-", "--no-tips",
         "--eval-annotations", "--violations", *paths],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip


def test_the_clients_code_needs_no_python_newer_than_3_10():
    done = vermin_310(*CLIENT_FILES)
    assert done.returncode == 0, done.stdout + done.stderr


def test_nothing_packaged_needs_a_python_newer_than_requires_python():
    done = vermin_310(*PACKAGED)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_version_check_can_fail(tmp_path):
    newer = tmp_path / "newer.py"
    newer.write_text("import tomllib\nfrom datetime import UTC\n")
    done = vermin_310(str(newer))
    assert done.returncode != 0 and "tomllib" in done.stdout


def test_every_command_but_colorize_names_an_extra_that_exists():
    extras = project()["optional-dependencies"]
    assert set(EXTRA_OF_COMMAND) == set(COMMANDS) - {"colorize"}
    assert set(EXTRA_OF_COMMAND.values()) <= set(extras)


def test_a_command_whose_extra_is_missing_says_which_to_install(monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def without_torch(name, *args):
        if name == "training.train":
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_torch)
    assert main(["train", "--help"]) == 2
    err = capsys.readouterr().err
    assert "`colorizer train` needs torch" in err and "pip install 'colorizer[train]'" in err
