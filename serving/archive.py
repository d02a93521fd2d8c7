"""`colorizer archive --model FILE.pt --out DIR`: package the service as DIR/colorizer.mar.

The archive holds what a stock TorchServe (with torch and pillow) needs to serve the
model: the exported TorchScript file, the handler, the ``serving/`` modules the handler
imports, ``model-config.yaml`` (one profile of ``serving/model-config.yaml``) and the
metrics declaration ``metrics.yaml`` (TorchServe reads the copy that config.properties
names; the one in the archive documents what the handler emits).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from serving.constants import MODEL_NAME
from serving.model_spec import SPEC_FILE

SERVING_DIR = Path(__file__).resolve().parent
MODEL_CONFIG = SERVING_DIR / "model-config.yaml"
METRICS_CONFIG = SERVING_DIR / "metrics.yaml"
PROFILES = ("cpu", "gpu")
ARCHIVE_VERSION = "1.0"


def handler_path() -> Path:
    """The handler source file (``handlers/colorizer_handler.py``)."""
    spec = importlib.util.find_spec("handlers.colorizer_handler")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("handlers/colorizer_handler.py is not importable")
    return Path(spec.origin)


def _serving_imports(source: Path) -> set[str]:
    """Names of the ``serving`` modules that ``source`` imports (``serving.x`` -> ``x``)."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "serving" or alias.name.startswith("serving."):
                    names.add(alias.name.removeprefix("serving").lstrip(".") or "__init__")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "serving":
                names.add("__init__")
                names.update(a.name for a in node.names if (SERVING_DIR / f"{a.name}.py").is_file())
            elif node.module.startswith("serving."):
                names.add(node.module.removeprefix("serving."))
    return names


def serving_modules(handler: Path) -> list[Path]:
    """The ``serving/*.py`` files the handler needs: its imports, followed transitively."""
    needed, todo = {"__init__"}, [handler]
    while todo:
        for name in _serving_imports(todo.pop()) - needed:
            path = SERVING_DIR / f"{name}.py"
            if not path.is_file():
                raise FileNotFoundError(f"the handler needs serving/{name}.py, which is missing")
            needed.add(name)
            todo.append(path)
    return sorted(SERVING_DIR / f"{name}.py" for name in needed)


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
    """One profile block of serving/model-config.yaml."""
    profiles = yaml.safe_load(MODEL_CONFIG.read_text())
    if profile not in profiles:
        raise ValueError(f"profile must be one of {', '.join(profiles)}, got {profile!r}")
    return profiles[profile]


def build_archive(model: str | Path, out_dir: str | Path, profile: str = "cpu") -> Path:
    """Write ``out_dir/colorizer.mar`` with torch-model-archiver; return its path."""
    model, out_dir = Path(model), Path(out_dir)
    check_model_file(model)
    config = model_config(profile)
    handler = handler_path()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="colorizer-archive-") as tmp:
        tmp = Path(tmp)
        extra = tmp / "extra"  # its contents land at the archive's top level
        (extra / "serving").mkdir(parents=True)
        for path in serving_modules(handler):
            shutil.copy2(path, extra / "serving" / path.name)
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
        help="package an exported model as a TorchServe archive (.mar)",
        description="Build DIR/colorizer.mar from FILE.pt (written by `colorizer export`): the "
        "model, the handler, the serving/ code it imports, model-config.yaml and metrics.yaml.",
    )
    p.add_argument("--model", type=Path, required=True, help="TorchScript file (FILE.pt)")
    p.add_argument("--out", type=Path, required=True, help="folder to write colorizer.mar into")
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default="cpu",
        help="worker and batching settings from serving/model-config.yaml (default: cpu)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = build_archive(args.model, args.out, args.profile)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, profile {args.profile})")
    return 0
