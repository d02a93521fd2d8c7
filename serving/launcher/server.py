"""`colorizer serve` and `colorizer stop`: run TorchServe behind its front, with the repo's
configuration.

``serve`` writes this run's config.properties (``serving/launcher/config.properties`` with the
ports and paths of the run) and nginx.conf (``serving/front/nginx.conf`` with the run's
ports and bind address), starts TorchServe on loopback and the front before it (nginx for
REST and metrics, ``serving.front.grpc_front`` for gRPC), each in a session of its own,
waits until ``/ping`` through the front is healthy and the model's workers are READY,
and prints the endpoints. Everything the run writes (config, logs, pid file, TorchServe's temp dir)
lives in the state folder (default ``.serve/`` in the current directory), which
``stop`` reads to end exactly the processes this run started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import requests

from serving.front import nginx
from serving.runtime.constants import (
    BACKEND_GRPC_PORT,
    BACKEND_HTTP_PORT,
    BACKEND_METRICS_PORT,
    CANNOT_START,
    FRONT_STATUS_PORT,
    GRPC_MANAGEMENT_PORT,
    GRPC_PORT,
    HTTP_PORT,
    MANAGEMENT_PORT,
    METRICS_PORT,
    MODEL_NAME,
)

LAUNCHER_DIR = Path(__file__).resolve().parent
CONFIG_TEMPLATE = LAUNCHER_DIR / "config.properties"
METRICS_CONFIG = LAUNCHER_DIR / "metrics.yaml"
DEFAULT_WEIGHTS = Path("model_store/default/colorizer.pt")  # shipped default, cwd-relative
DEFAULT_BUILD_STORE = Path("model_store")  # where serve builds colorizer.mar from them
DEFAULT_STATE_DIR = Path(".serve")
STATE_FILE = "server.json"
LOOPBACK = "127.0.0.1"
STOP_GRACE_S = 30.0  # TorchServe stops its workers on SIGTERM; then we kill what is left
FRONT_PORTS = ("http", "grpc", "metrics")  # the Ports fields callers reach, on the run's host


class ServeError(Exception):
    """The server could not be started or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class Ports:
    """The listeners of one run: the front's three (on the run's host), TorchServe's
    three behind it and its two management ports (on loopback)."""

    http: int = HTTP_PORT
    grpc: int = GRPC_PORT
    metrics: int = METRICS_PORT
    management: int = MANAGEMENT_PORT
    grpc_management: int = GRPC_MANAGEMENT_PORT
    backend_http: int = BACKEND_HTTP_PORT
    backend_grpc: int = BACKEND_GRPC_PORT
    backend_metrics: int = BACKEND_METRICS_PORT
    front_status: int = FRONT_STATUS_PORT

    def front_mapping(self) -> dict[int, int]:
        """nginx.conf's ports (the pod's) -> this run's."""
        pod = Ports()
        return {getattr(pod, name): getattr(self, name) for name in asdict(pod)}


@dataclass
class FrontProcess:
    """One process of the front (nginx or the gRPC front) that ``stop`` must end."""

    name: str
    pid: int
    started: float  # process create_time: guards against a reused pid


@dataclass
class ServerState:
    """What ``stop`` needs to find a run again (saved as JSON in the state folder)."""

    host: str
    ports: Ports
    model_store: str
    launcher_pid: int
    launcher_started: float  # process create_time: guards against a reused pid
    log: str
    front: list[FrontProcess] = field(default_factory=list)

    def save(self, state_dir: Path) -> None:
        (state_dir / STATE_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, state_dir: Path) -> ServerState | None:
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        front = [FrontProcess(**p) for p in data.get("front", [])]
        return cls(**{**data, "ports": Ports(**data["ports"]), "front": front})


def config_overrides(ports: Ports, model_store: Path) -> dict[str, str]:
    """The config.properties keys ``serve`` sets per run; TorchServe stays on loopback."""
    store = model_store.resolve()
    return {
        "inference_address": f"http://{LOOPBACK}:{ports.backend_http}",
        "management_address": f"http://{LOOPBACK}:{ports.management}",
        "metrics_address": f"http://{LOOPBACK}:{ports.backend_metrics}",
        "grpc_inference_address": LOOPBACK,
        "grpc_inference_port": str(ports.backend_grpc),
        "grpc_management_address": LOOPBACK,
        "grpc_management_port": str(ports.grpc_management),
        "model_store": str(store),
        "allowed_urls": f"file://{store}/.*",
        "metrics_config": str(METRICS_CONFIG),
    }


def render_config(template: str, overrides: dict[str, str]) -> str:
    """``template`` (config.properties text) with ``overrides`` replacing or adding keys."""
    lines, seen = [], set()
    for line in template.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in overrides:
            line = f"{key}={overrides[key]}"
            seen.add(key)
        lines.append(line)
    lines += [f"{key}={value}" for key, value in overrides.items() if key not in seen]
    return "\n".join(lines) + "\n"


def check_ports_free(host: str, ports: Ports) -> None:
    """Raise ServeError naming the first port something already listens on."""
    for name, port in asdict(ports).items():
        bind_host = host if name in FRONT_PORTS else LOOPBACK
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((bind_host, port))
            except OSError as exc:
                raise ServeError(
                    f"{name} port {port} on {bind_host} is in use ({exc.strerror}); "
                    f"pick another with --{name.replace('_', '-')}-port"
                ) from None


def default_model_store() -> Path:
    """Build ``model_store/colorizer.mar`` from the shipped default weights; return the store."""
    if not DEFAULT_WEIGHTS.is_file():
        raise ServeError(
            f"no --model-store given and the default weights {DEFAULT_WEIGHTS} are missing "
            f"(looked in {Path.cwd()}); export a model (`colorizer export CHECKPOINT --out "
            "FILE.pt`), package it (`colorizer archive --model FILE.pt --out DIR`) and run "
            "`colorizer serve --model-store DIR`"
        )
    from serving.launcher.archive import build_archive

    build_archive(DEFAULT_WEIGHTS, DEFAULT_BUILD_STORE)
    return DEFAULT_BUILD_STORE


def _connect_host(host: str) -> str:
    return LOOPBACK if host in ("0.0.0.0", "") else host


def _log_tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def worker_cannot_start(log_dir: Path) -> str | None:
    """The first line a worker logged with ``CANNOT_START`` under ``log_dir``, from the
    marker on; None when there is none (or no log yet)."""
    for path in sorted(log_dir.glob("*.log")):
        with open(path, errors="replace") as f:
            for line in f:
                if CANNOT_START in line:
                    return line[line.index(CANNOT_START) :].strip()
    return None


def ready_workers(state: ServerState) -> int:
    """READY workers of the model if /ping through the front is healthy, the gRPC front
    takes connections and at least minWorkers are READY; else 0.

    Never raises on I/O.
    """
    host = _connect_host(state.host)
    try:
        ping = requests.get(f"http://{host}:{state.ports.http}/ping", timeout=2)
        if ping.status_code != 200 or ping.json().get("status") != "Healthy":
            return 0
        socket.create_connection((host, state.ports.grpc), timeout=2).close()
        described = requests.get(
            f"http://{LOOPBACK}:{state.ports.management}/models/{MODEL_NAME}", timeout=2
        )
        if described.status_code != 200:
            return 0
        model = described.json()[0]
        ready = sum(worker.get("status") == "READY" for worker in model.get("workers", []))
    except (requests.RequestException, OSError, ValueError, LookupError, AttributeError):
        return 0
    return ready if ready >= max(1, int(model.get("minWorkers", 1))) else 0


def _started_process(pid: int, started: float) -> psutil.Process | None:
    """Process ``pid`` if it is still the one created at ``started`` (not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started) < 1.0:
            return proc
    except psutil.Error:
        pass
    return None


def _launcher(state: ServerState) -> psutil.Process | None:
    """The run's torchserve launcher process, if it is still the one we started."""
    return _started_process(state.launcher_pid, state.launcher_started)


def _java_from_pid_file(state_dir: Path) -> psutil.Process | None:
    """TorchServe's java frontend, from the pid file its launcher writes into our TMPDIR."""
    try:
        proc = psutil.Process(int((state_dir / "tmp" / ".model_server.pid").read_text()))
        if any("org.pytorch.serve.ModelServer" in part for part in proc.cmdline()):
            return proc
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def start(
    model_store: str | Path | None = None,
    ports: Ports = Ports(),
    host: str = LOOPBACK,
    state_dir: str | Path = DEFAULT_STATE_DIR,
    timeout: float = 180.0,
) -> ServerState:
    """Start TorchServe serving ``model_store/colorizer.mar``; return once its workers are READY.

    ``model_store`` None builds the archive from the shipped default weights.
    """
    state_dir = Path(state_dir).resolve()
    existing = ServerState.load(state_dir)
    if existing is not None and _launcher(existing) is not None:
        raise ServeError(
            f"a colorizer server from {state_dir} is already running (pid "
            f"{existing.launcher_pid}, REST port {existing.ports.http}); run `colorizer stop`"
        )
    if existing is not None:  # a run whose launcher died: end whatever it left behind
        stop(state_dir)
    store = default_model_store() if model_store is None else Path(model_store)
    if not (store / f"{MODEL_NAME}.mar").is_file():
        raise ServeError(
            f"{store} has no {MODEL_NAME}.mar; build one with "
            f"`colorizer archive --model FILE.pt --out {store}`"
        )
    nginx_bin = nginx.find_nginx()
    if nginx_bin is None:
        raise ServeError(f"nginx, the REST front, is not installed: {nginx.INSTALL_HINT}")
    check_ports_free(host, ports)

    _clear_run_files(state_dir)
    (state_dir / "tmp").mkdir(parents=True)
    config = state_dir / "config.properties"
    overrides = config_overrides(ports, store)
    config.write_text(render_config(CONFIG_TEMPLATE.read_text(), overrides))
    log = state_dir / "torchserve.log"
    launcher = shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"
    cmd = [
        launcher,
        "--start",
        "--foreground",  # the launcher stays the parent of java: one tree to stop
        "--ncs",
        "--ts-config", str(config),
        "--model-store", str(store.resolve()),
        "--models", f"{MODEL_NAME}={MODEL_NAME}.mar",
    ]  # fmt: skip
    env = {
        **os.environ,
        "TMPDIR": str(state_dir / "tmp"),  # the launcher's pid file: one per state folder
        "TEMP": str(state_dir / "tmp"),  # java.io.tmpdir: where archives are unpacked
        "LOG_LOCATION": str(state_dir / "logs"),
        "METRICS_LOCATION": str(state_dir / "logs"),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=state_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state = ServerState(
        host=host,
        ports=ports,
        model_store=str(store.resolve()),
        launcher_pid=proc.pid,
        launcher_started=psutil.Process(proc.pid).create_time(),
        log=str(log),
    )
    state.front = start_front(nginx_bin, state_dir, config, host, ports)
    state.save(state_dir)
    deadline = time.monotonic() + timeout
    while ready_workers(state) == 0:
        fatal = worker_cannot_start(state_dir / "logs")
        if fatal is not None:  # a worker would fail the same way on every restart
            stop(state_dir)
            raise ServeError(f"{fatal}\n(worker logs: {state_dir / 'logs'})")
        if proc.poll() is not None or time.monotonic() > deadline:
            why = "exited" if proc.poll() is not None else f"was not ready after {timeout:.0f} s"
            stop(state_dir)
            raise ServeError(f"TorchServe {why}; the end of {log}:\n{_log_tail(log)}")
        dead = [p for p in state.front if _front_process(p) is None]
        if dead:
            stop(state_dir)
            front_log = state_dir / f"{dead[0].name}.log"
            raise ServeError(
                f"the front's {dead[0].name} exited; the end of {front_log}:\n"
                f"{_log_tail(front_log)}"
            )
        time.sleep(0.5)
    return state


def start_front(
    nginx_bin: str, state_dir: Path, ts_config: Path, host: str, ports: Ports
) -> list[FrontProcess]:
    """Start nginx and the gRPC front before TorchServe, with the run's ports; logs in
    ``state_dir``. The same files and limits as the pod's front containers."""
    prefix = state_dir / "front"
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx.render(nginx.NGINX_CONF.read_text(), host, ports.front_mapping()))
    commands = {
        "front-http": nginx.command(nginx_bin, prefix, conf),
        "front-grpc": [
            sys.executable, "-m", "serving.front.grpc_front",
            "--ts-config", str(ts_config),
            "--listen", f"{host}:{ports.grpc}",
        ],
    }  # fmt: skip
    started = []
    for name, cmd in commands.items():
        with open(state_dir / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=state_dir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started.append(FrontProcess(name, proc.pid, psutil.Process(proc.pid).create_time()))
    return started


def _front_process(front: FrontProcess) -> psutil.Process | None:
    """The running front process, if it is still the one we started (and not a zombie)."""
    proc = _started_process(front.pid, front.started)
    try:
        return proc if proc is not None and proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


# How each front process stops without dropping a request in flight.
FRONT_STOP_SIGNALS = {"front-http": signal.SIGQUIT, "front-grpc": signal.SIGTERM}


def stop(state_dir: str | Path = DEFAULT_STATE_DIR) -> bool:
    """Stop the run recorded in ``state_dir`` and every process it started. False if none."""
    state_dir = Path(state_dir).resolve()
    state = ServerState.load(state_dir)
    if state is None:
        return False
    java = _java_from_pid_file(state_dir)
    roots = [p for p in (_launcher(state), java) if p is not None]
    procs = {p.pid: p for root in roots for p in (root, *_children(root))}
    fronts = {f.name: p for f in state.front if (p := _front_process(f)) is not None}
    # The front first, gracefully: it stops taking requests and finishes those in flight.
    for name, proc in fronts.items():
        _signal(proc, FRONT_STOP_SIGNALS[name])
        procs.update({c.pid: c for c in (proc, *_children(proc))})
    # SIGTERM to java: TorchServe then shuts its workers down and the launcher exits.
    for proc in [java] if java is not None else procs.values():
        _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(list(procs.values()), timeout=STOP_GRACE_S)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(state_dir / "tmp", ignore_errors=True)
    return True


def _clear_run_files(state_dir: Path) -> None:
    """Remove what an earlier run wrote into ``state_dir``, and nothing else there."""
    for name in ("tmp", "logs"):
        shutil.rmtree(state_dir / name, ignore_errors=True)
    shutil.rmtree(state_dir / "front", ignore_errors=True)
    for name in (
        "config.properties",
        "torchserve.log",
        "front-http.log",
        "front-grpc.log",
        STATE_FILE,
    ):
        (state_dir / name).unlink(missing_ok=True)


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def endpoints(state: ServerState) -> str:
    """Human summary of where the running service listens."""
    host, p = _connect_host(state.host), state.ports
    return "\n".join(
        [
            f"  REST        http://{host}:{p.http}/predictions/{MODEL_NAME}",
            f"  gRPC        {host}:{p.grpc}  (InferenceAPIsService/Predictions)",
            f"  metrics     http://{host}:{p.metrics}/metrics",
            f"  management  http://{LOOPBACK}:{p.management}, gRPC {LOOPBACK}:{p.grpc_management}"
            " (loopback only)",
            f"  TorchServe  REST {LOOPBACK}:{p.backend_http}, gRPC {LOOPBACK}:{p.backend_grpc},"
            f" metrics {LOOPBACK}:{p.backend_metrics} (loopback only, behind the front)",
            f"  logs        {Path(state.log).parent / 'logs'}",
            "try it:",
            f"  colorizer colorize training/datasets/photos/val -o colorized/"
            f" --url http://{host}:{p.http}",
        ]
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        description="Start TorchServe with serving/launcher/config.properties and return once the "
        "model's workers are ready (or stay attached with --foreground).",
    )
    p.add_argument(
        "--model-store",
        type=Path,
        help=f"folder holding {MODEL_NAME}.mar (default: build it from {DEFAULT_WEIGHTS})",
    )
    defaults = Ports()
    for name in asdict(defaults):
        flag = f"--{name.replace('_', '-')}-port"
        p.add_argument(flag, type=int, default=getattr(defaults, name), metavar="PORT")
    p.add_argument(
        "--host",
        default=LOOPBACK,
        help="address for REST, gRPC and metrics (default 127.0.0.1; 0.0.0.0 for all: "
        "there is no token auth, see serving/API.md 'Authorization')",
    )
    p.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    _state_dir_option(p)
    p.set_defaults(func=run_serve)

    s = subparsers.add_parser(
        "stop",
        description="Stop TorchServe and every process it started (found via the state folder).",
    )
    _state_dir_option(s)
    s.set_defaults(func=run_stop)


def _state_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"folder of the run's config, logs and pid (default: {DEFAULT_STATE_DIR}/)",
    )


def run_serve(args: argparse.Namespace) -> int:
    ports = Ports(**{name: getattr(args, f"{name}_port") for name in asdict(Ports())})
    try:
        state = start(args.model_store, ports, args.host, args.state_dir, args.timeout)
    except ServeError as exc:
        print(f"colorizer serve: error: {exc}", file=sys.stderr)
        return 1
    print(f"colorizer is serving model '{MODEL_NAME}':\n{endpoints(state)}")
    if not args.foreground:
        print("stop it with: colorizer stop" + _state_dir_flag(args.state_dir))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    try:
        psutil.Process(state.launcher_pid).wait()
    except (KeyboardInterrupt, SystemExit, psutil.Error):
        pass
    finally:
        stop(args.state_dir)
    return 0


def run_stop(args: argparse.Namespace) -> int:
    if stop(args.state_dir):
        print("colorizer server stopped")
    else:
        print(f"no colorizer server recorded in {Path(args.state_dir).resolve()}; nothing to stop")
    return 0


def _state_dir_flag(state_dir: Path) -> str:
    return "" if Path(state_dir) == DEFAULT_STATE_DIR else f" --state-dir {state_dir}"
