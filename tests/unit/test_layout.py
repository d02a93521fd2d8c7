"""The package layout holds: the runtime pulls in nothing else, the CLI loads commands lazily."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serving.cli import COMMANDS, build_parser

RUNTIME = [
    "serving.runtime.colorspace",
    "serving.runtime.constants",
    "serving.runtime.device",
    "serving.runtime.errors",
    "serving.runtime.imageio",
    "serving.runtime.model_spec",
    "serving.runtime.nvjpeg",
    "serving.runtime.pipeline",
    "serving.runtime.precision",
    "serving.runtime.request_meta",
    "serving.runtime.service",
]
NOT_IN_RUNTIME = (
    "training",
    "serving.client",
    "serving.launcher",
    "serving.cli",
    "timm",
    "torchvision",
    "grpc",
    "requests",
    "yaml",
    "model_archiver",
)


def loaded_after(code: str) -> set[str]:
    """Top-level and dotted module names in sys.modules after running ``code`` fresh."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def offenders(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_the_runtime_imports_no_training_client_or_launcher_code():
    modules = loaded_after("\n".join(f"import {m}" for m in RUNTIME))
    assert set(RUNTIME) <= modules
    assert offenders(modules, NOT_IN_RUNTIME) == []


def test_the_client_loads_neither_torch_nor_numpy_nor_training():
    modules = loaded_after(
        "import serving.client, serving.client.rest, serving.client.grpc_transport, "
        "serving.client.colorize"
    )
    forbidden = ("torch", "numpy", "PIL", "ts", "training", "serving.launcher", "timm")
    assert offenders(modules, forbidden) == []


@pytest.mark.parametrize(
    ("argv", "forbidden"),
    [
        (["archive", "--help"], ("training", "serving.client", "timm", "grpc")),
        (["colorize", "--help"], ("training", "serving.launcher", "torch", "numpy", "PIL")),
        (["--help"], ("training", "serving.launcher", "serving.client", "torch")),
    ],
)
def test_the_command_line_imports_only_the_command_that_runs(argv, forbidden):
    code = (
        "import contextlib, io\nfrom serving.cli import main\n"
        f"with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main({argv!r})"
    )
    assert offenders(loaded_after(code), forbidden) == []


def test_every_command_parses_its_help():
    for name in COMMANDS:
        parser = build_parser(name)
        with pytest.raises(SystemExit) as done:
            parser.parse_args([name, "--help"])
        assert done.value.code == 0, name
