"""The one way tests run a real TorchServe: archive a test model, `colorizer serve` it (behind
its front: nginx and the gRPC front) on free loopback ports with its own state folder, and
stop it (checking nothing is left)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import psutil

from serving.cli import main as cli
from serving.launcher.archive import build_archive
from tests.support.models import export_test_model
from tests.support.net import free_ports


def serve_argv(store: Path, state_dir: Path) -> list[str]:
    """`colorizer serve` arguments for ``store`` on free loopback ports."""
    from serving.launcher.server import Ports

    names = list(asdict(Ports()))
    argv = ["serve", "--model-store", str(store), "--state-dir", str(state_dir)]
    for name, port in zip(names, free_ports(len(names)), strict=True):
        argv += [f"--{name.replace('_', '-')}-port", str(port)]
    return argv


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
    recorded = json.loads((state_dir / "server.json").read_text())
    launcher = psutil.Process(recorded["launcher_pid"])
    front = {f["name"]: psutil.Process(f["pid"]) for f in recorded["front"]}
    assert set(front) == {"front-http", "front-grpc"}, recorded["front"]
    procs = [launcher, *launcher.children(recursive=True)]
    assert len(procs) >= 3, "expected the launcher, java and a worker"
    procs += [p for f in front.values() for p in (f, *f.children(recursive=True))]
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
            jvm_pid=int((state_dir / "tmp" / ".model_server.pid").read_text()),
            front=front,  # {"front-http": nginx master, "front-grpc": the gRPC front}
            backend_url=f"http://127.0.0.1:{_port(argv, '--backend-http-port')}",
            backend_grpc=f"127.0.0.1:{_port(argv, '--backend-grpc-port')}",
        )
    finally:
        assert cli(["stop", "--state-dir", str(state_dir)]) == 0
        left = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"processes left behind: {left}"
