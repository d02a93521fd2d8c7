"""`python -m protos.build`: gRPC stubs from the .proto files inside the installed TorchServe.

TorchServe ships its gRPC interface (``inference.proto``, ``management.proto`` and the
``google/rpc/status.proto`` they import) inside its frontend jar. This step extracts
them into ``protos/generated/`` (git-ignored), runs grpcio-tools' protoc, and rewrites
the generated imports so the stubs form one package, ``protos.generated``. Re-running
is a no-op while the jar and grpcio-tools are unchanged.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

GENERATED = Path(__file__).resolve().parent / "generated"
STAMP = "build-stamp.json"
# Proto files the stubs need, as named inside the jar (import paths kept for protoc).
JAR_PROTOS = {
    "proto/inference.proto": "inference.proto",
    "proto/management.proto": "management.proto",
    "google/rpc/status.proto": "google/rpc/status.proto",
}
# Absolute imports protoc writes, rewritten to package-relative ones.
_IMPORT_REWRITES = (
    (re.compile(r"^import (inference_pb2|management_pb2) as ", re.M), r"from . import \1 as "),
    (re.compile(r"^from google\.rpc import ", re.M), "from .google.rpc import "),
)


def torchserve_jar() -> Path:
    """Path of the installed TorchServe frontend jar (found without importing ``ts``)."""
    spec = importlib.util.find_spec("ts")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("torchserve is not installed in this environment")
    jar = Path(next(iter(spec.submodule_search_locations))) / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise FileNotFoundError(f"TorchServe frontend jar not found at {jar}")
    return jar


def _stamp(jar: Path) -> dict:
    from grpc_tools import __file__ as grpc_tools_file

    stat = jar.stat()
    return {
        "jar": str(jar),
        "jar_size": stat.st_size,
        "jar_mtime": int(stat.st_mtime),
        "grpc_tools": str(Path(grpc_tools_file).parent),
        "protos": sorted(JAR_PROTOS),
    }


def extract_protos(jar: Path, dest: Path) -> list[str]:
    """Copy the needed .proto files out of the jar into ``dest``; return their import paths."""
    with zipfile.ZipFile(jar) as zf:
        names = set(zf.namelist())
        for member, target in JAR_PROTOS.items():
            if member not in names:
                raise FileNotFoundError(f"{member} is not inside {jar}")
            out = dest / target
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(zf.read(member))
    return list(JAR_PROTOS.values())


def run_protoc(proto_dir: Path, out_dir: Path, protos: list[str]) -> None:
    """Generate ``*_pb2.py`` and ``*_pb2_grpc.py`` for ``protos`` into ``out_dir``."""
    from grpc_tools import protoc

    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos} (see its messages above)")


def make_package(out_dir: Path) -> None:
    """Add ``__init__.py`` files and make the generated imports package-relative."""
    packages = {out_dir}
    for path in out_dir.rglob("*_pb2*.py"):
        text = path.read_text()
        for pattern, repl in _IMPORT_REWRITES:
            text = pattern.sub(repl, text)
        path.write_text(text)
        packages.update(p for p in path.parents if p.is_relative_to(out_dir))
    for folder in packages:
        (folder / "__init__.py").touch()


def build(out_dir: Path = GENERATED, force: bool = False) -> bool:
    """Generate the stubs into ``out_dir`` unless up to date. Returns True if it (re)built."""
    jar = torchserve_jar()
    stamp = _stamp(jar)
    stamp_file = out_dir / STAMP
    if not force and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return False
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and swap in, so a reader never sees half a package.
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".protos-") as tmp:
        work = Path(tmp)
        staged = work / "generated"
        staged.mkdir()
        protos = extract_protos(jar, staged / "proto")
        run_protoc(staged / "proto", staged, protos)
        make_package(staged)
        (staged / STAMP).write_text(json.dumps(stamp, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staged.rename(out_dir)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protos.build", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    built = build(force=args.force)
    print(f"gRPC stubs {'generated' if built else 'up to date'} in {GENERATED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
