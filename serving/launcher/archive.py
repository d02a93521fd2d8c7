"""`colorizer archive --model FILE.pt --out DIR`: package the service as DIR/colorizer.mar.

The archive holds what a stock TorchServe (with torch and pillow) needs to serve the
model: the exported TorchScript file, the handler, the ``serving.runtime`` package (all of
it: it depends on torch, Pillow and numpy only), ``model-config.yaml`` (one profile of
``serving/launcher/model-config.yaml``) and the metrics declaration ``metrics.yaml``
(TorchServe reads the copy that config.properties names; the one in the archive documents
what the handler emits).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from serving.runtime.constants import MODEL_NAME, PRECISIONS
from serving.runtime.model_spec import SPEC_FILE

LAUNCHER_DIR = Path(__file__).resolve().parent
SERVING_DIR = LAUNCHER_DIR.parent
RUNTIME_DIR = SERVING_DIR / "runtime"
MODEL_CONFIG = LAUNCHER_DIR / "model-config.yaml"
METRICS_CONFIG = LAUNCHER_DIR / "metrics.yaml"
PROFILES = ("cpu", "gpu")
ARCHIVE_VERSION = "1.0"


def handler_path() -> Path:
    """The handler source file (``handlers/colorizer_handler.py``)."""
    spec = importlib.util.find_spec("handlers.colorizer_handler")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("handlers/colorizer_handler.py is not importable")
    return Path(spec.origin)


def runtime_files() -> list[Path]:
    """What the archive ships of ``serving``: its ``__init__`` and the whole runtime package."""
    return [SERVING_DIR / "__init__.py", *sorted(RUNTIME_DIR.glob("*.py"))]


def check_model_file(model: Path) -> None:
    """Refuse what is not a TorchScript file written by `colorizer export` (spec embedded)."""
    if not model.is_file():
        raise FileNotFoundError(f"model file {model} does not exist")
    try:
        with zipfile.ZipFile(model) as zf:
            has_spec = any(name.endswith(f"/extra/{SPEC_FILE}") for name in zf.namelist())
    except zipfile.BadZipFile:
        has_spec = False
    if not has_spec:
        raise ValueError(
            f"{model} is not a TorchScript file with an embedded {SPEC_FILE}; "
            "make one with `colorizer export CHECKPOINT --out FILE.pt`"
        )


def model_config(profile: str) -> dict:
    """One profile block of serving/launcher/model-config.yaml."""
    profiles = yaml.safe_load(MODEL_CONFIG.read_text())
    if profile not in profiles:
        raise ValueError(f"profile must be one of {', '.join(profiles)}, got {profile!r}")
    return profiles[profile]


def job_queue_size(deadline_s: float, photos_per_s: float) -> int:
    """TorchServe's ``jobQueueSize``: the requests the workers finish within ``deadline_s``
    at ``photos_per_s`` (at least 1). Raises ValueError for a non-positive input."""
    if not (deadline_s > 0 and photos_per_s > 0):
        raise ValueError(
            f"the queue's deadline_s and photos_per_s must be > 0, got {deadline_s} and "
            f"{photos_per_s}"
        )
    return max(1, math.floor(deadline_s * photos_per_s))


def with_queue(config: dict, deadline_s: float | None = None) -> dict:
    """``config`` (a profile block) with ``jobQueueSize`` derived from its ``queue`` block
    (``deadline_s``, ``photos_per_s``); ``deadline_s`` overrides the block's deadline."""
    queue = dict(config.get("queue") or {})
    if "photos_per_s" not in queue or "deadline_s" not in queue:
        raise ValueError("the profile's queue block needs deadline_s and photos_per_s")
    if deadline_s is not None:
        queue["deadline_s"] = deadline_s
    size = job_queue_size(float(queue["deadline_s"]), float(queue["photos_per_s"]))
    return {**config, "queue": queue, "jobQueueSize": size}


def with_settings(config: dict, settings: list[str]) -> dict:
    """``config`` (a profile block) with ``KEY=VALUE`` settings applied: KEY a key the
    profile has (``handler.threads`` for a nested one), VALUE read as YAML (``2``, ``true``).

    Raises ValueError naming the accepted keys for a key the profile lacks or a setting
    without ``=``; the profile's own blocks (``handler``, ``queue``) are not replaced whole.
    """
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    accepted = [
        f"{k}.{sub}" if isinstance(v, dict) else k
        for k, v in config.items()
        for sub in (v if isinstance(v, dict) else [None])
    ]
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or key not in accepted:
            raise ValueError(
                f"--set {setting!r}: expected KEY=VALUE with KEY one of the profile's keys: "
                + ", ".join(accepted)
            )
        block, _, sub = key.partition(".")
        value = yaml.safe_load(text)
        if sub:
            config[block][sub] = value
        else:
            config[block] = value
    return config


def build_archive(
    model: str | Path,
    out_dir: str | Path,
    profile: str = "cpu",
    precision: str | None = None,
    queue_deadline_s: float | None = None,
    settings: list[str] | None = None,
) -> Path:
    """Write ``out_dir/colorizer.mar`` with torch-model-archiver; return its path.

    ``precision``: the handler's precision instead of the profile's (auto, fp32, bf16);
    ``queue_deadline_s``: the queue's deadline instead of the profile's (``with_queue``);
    ``settings``: ``KEY=VALUE`` overrides of the profile (``with_settings``), applied first.
    """
    model, out_dir = Path(model), Path(out_dir)
    check_model_file(model)
    config = with_queue(with_settings(model_config(profile), settings or []), queue_deadline_s)
    if precision is not None:
        config["handler"] = {**config.get("handler", {}), "precision": precision}
    handler = handler_path()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="colorizer-archive-") as tmp:
        tmp = Path(tmp)
        extra = tmp / "extra"  # its contents land at the archive's top level
        (extra / "serving" / "runtime").mkdir(parents=True)
        for path in runtime_files():
            shutil.copy2(path, extra / path.relative_to(SERVING_DIR.parent))
        shutil.copy2(METRICS_CONFIG, extra / "metrics.yaml")
        config_file = tmp / "model-config.yaml"
        config_file.write_text(f"# profile: {profile}\n" + yaml.safe_dump(config, sort_keys=False))
        work = tmp / "work"  # the archiver stages files in $TMPDIR/<model name>: keep it private
        work.mkdir()
        cmd = [
            sys.executable,
            "-m",
            "model_archiver.model_packaging",
            "--model-name", MODEL_NAME,
            "--version", ARCHIVE_VERSION,
            "--serialized-file", str(model),
            "--handler", str(handler),
            "--extra-files", str(extra),
            "--config-file", str(config_file),
            "--export-path", str(out_dir),
            "--force",
        ]  # fmt: skip
        env = {**os.environ, "TMPDIR": str(work)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed:\n{done.stderr or done.stdout}")
    return out_dir / f"{MODEL_NAME}.mar"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "archive",
        description="Build DIR/colorizer.mar from FILE.pt (written by `colorizer export`): the "
        "model, the handler, the serving.runtime package, model-config.yaml and metrics.yaml.",
    )
    p.add_argument("--model", type=Path, required=True, help="TorchScript file (FILE.pt)")
    p.add_argument("--out", type=Path, required=True, help="folder to write colorizer.mar into")
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default="cpu",
        help="worker and batching settings from serving/launcher/model-config.yaml (default: cpu)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="the handler's precision instead of the profile's (auto: measured fastest at "
        "load among those that give fp32's colors; a precision the model cannot run is "
        "refused when the worker starts)",
    )
    p.add_argument(
        "--queue-deadline-s",
        type=float,
        metavar="SECONDS",
        help="size TorchServe's job queue to what the workers finish in SECONDS at the "
        "profile's measured photos/s, instead of the profile's deadline",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a profile setting instead of the profile's, e.g. minWorkers=1, batchSize=2, "
        "handler.threads=2 (repeatable; how `colorizer pipeline-bench --served` compares "
        "profiles)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = build_archive(
        args.model, args.out, args.profile, args.precision, args.queue_deadline_s, args.set
    )
    queue = with_queue(with_settings(model_config(args.profile), args.set), args.queue_deadline_s)
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, profile {args.profile}, "
        f"jobQueueSize {queue['jobQueueSize']}: {queue['queue']['deadline_s']:g} s at "
        f"{queue['queue']['photos_per_s']:g} photos/s)"
    )
    return 0
