"""tests/gpu/stage_server.py: parts carried one device call at a time join into the set."""

from __future__ import annotations

import os

from tests.gpu.stage_server import reassemble, split


def test_parts_join_only_when_all_have_arrived_and_match(tmp_path):
    blob = os.urandom(25_000)
    folders = split(blob, tmp_path / "parts", 10_000)
    sizes = [(f / "part.bin").stat().st_size for f in folders]
    assert len(folders) == 3 and max(sizes) <= 10_000 and sum(sizes) == len(blob)
    server = tmp_path / "server"
    carried = tmp_path / "carried"  # what one call brings: a single part folder
    for i, folder in enumerate(folders):
        one = carried / folder.name
        one.mkdir(parents=True)
        for name in ("part.bin", "manifest.json"):
            (one / name).write_bytes((folder / name).read_bytes())
        got = reassemble(carried, server)
        if i < len(folders) - 1:
            assert got == f"have {i + 1} of 3 parts"
        (one / "part.bin").unlink()
        (one / "manifest.json").unlink()
        one.rmdir()
    assert got == blob
    (server / "chunks" / "01.bin").write_bytes(b"x" * sizes[1])  # a corrupted part
    assert "wrong sha256" in reassemble(carried, server)
