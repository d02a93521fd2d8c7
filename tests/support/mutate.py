"""A small seeded mutation fuzzer for photo bytes: what a broken upload looks like (flipped
bytes, cut files, stray markers, repeated chunks). Dependency-free, so it runs on the lent
GPU machine too (the coverage-guided fuzzer, tests/support/fuzz_decode.py, needs atheris)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

JPEG_MARKERS = (b"\xff\xd8", b"\xff\xd9", b"\xff\xc0", b"\xff\xc4", b"\xff\xda", b"\xff\xdb")


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to four random edits of ``data``."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(0, 5))
        at = int(rng.integers(0, max(len(out), 1)))
        if kind == 0:  # flip a few bytes
            for _ in range(int(rng.integers(1, 16))):
                out[int(rng.integers(0, len(out)))] = int(rng.integers(0, 256))
        elif kind == 1:  # cut the file
            del out[max(at, 2) :]
        elif kind == 2:  # insert a marker
            out[at:at] = JPEG_MARKERS[int(rng.integers(0, len(JPEG_MARKERS)))]
        elif kind == 3:  # repeat a chunk
            out[at:at] = out[at : at + int(rng.integers(1, 512))]
        else:  # zero a run
            end = min(len(out), at + int(rng.integers(1, 256)))
            out[at:end] = bytes(end - at)
    return bytes(out)


def mutations(data: bytes, count: int, seed: int = 0) -> Iterator[bytes]:
    """``count`` mutants of ``data``, the same ones for the same seed."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield mutate(data, rng)
