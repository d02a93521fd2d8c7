"""The one way tests run a real TorchServe: archive a test model, `colorizer serve` it on
free loopback ports with its own state folder, and stop it (checking nothing is left)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psutil

from serving.cli import main as cli
from serving.launcher.archive import build_archive
from tests.support.models import export_test_model
from tests.support.net import free_ports


def serve_argv(store: Path, state_dir: Path) -> list[str]:
    """`colorizer serve` arguments for ``store`` on free loopback ports."""
    http, grpc_port, metrics, management, grpc_management = free_ports(5)
    return [
        "serve",
        "--model-store", str(store),
        "--http-port", str(http),
        "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics),
        "--management-port", str(management),
        "--grpc-management-port", str(grpc_management),
        "--state-dir", str(state_dir),
    ]  # fmt: skip


def _port(argv: list[str], flag: str) -> int:
    return int(argv[argv.index(flag) + 1])


@contextlib.contextmanager
def served(root: Path, preset: str = "compact", profile: str = "cpu") -> Iterator[SimpleNamespace]:
    """A running server for a test model: URLs, ports, state folder, launcher process.

    ``root`` holds the model, the archive and the server's state. On exit the server is
    stopped with `colorizer stop` and none of its processes may be left.
    """
    model = export_test_model(root / "colorizer.pt", preset)
    store = root / "store"
    build_archive(model, store, profile=profile)
    state_dir = root / "state"
    argv = serve_argv(store, state_dir)
    http, grpc_port = _port(argv, "--http-port"), _port(argv, "--grpc-port")
    metrics, management = _port(argv, "--metrics-port"), _port(argv, "--management-port")
    grpc_management = _port(argv, "--grpc-management-port")
    assert cli(argv) == 0
    launcher = psutil.Process(json.loads((state_dir / "server.json").read_text())["launcher_pid"])
    procs = [launcher, *launcher.children(recursive=True)]
    assert len(procs) >= 3, "expected the launcher, java and a worker"
    try:
        yield SimpleNamespace(
            url=f"http://127.0.0.1:{http}",
            grpc=f"127.0.0.1:{grpc_port}",
            management=f"http://127.0.0.1:{management}",
            grpc_management=f"127.0.0.1:{grpc_management}",
            metrics=f"http://127.0.0.1:{metrics}/metrics",
            metrics_target=f"127.0.0.1:{metrics}",
            state_dir=state_dir,
            root=root,
            launcher=launcher,
        )
    finally:
        assert cli(["stop", "--state-dir", str(state_dir)]) == 0
        left = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"processes left behind: {left}"
