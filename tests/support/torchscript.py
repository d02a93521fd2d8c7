"""What a TorchScript file's serialized code calls: the operators another torch must have."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from tests.support.paths import DATA

MISSING_IN_TORCH_2_11 = DATA / "torch-2.11-missing-ops.txt"

# In serialized TorchScript an aten operator is written ``torch.NAME(`` and any other
# namespace's ``ops.NAMESPACE.NAME(``.
_ATEN = re.compile(r"(?<![\w.])torch\.([A-Za-z_]\w*)\(")
_OTHER = re.compile(r"(?<![\w.])ops\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)\(")


def operators_named(path: Path) -> set[str]:
    """Every operator the file's code calls, as ``namespace::name`` (no overload)."""
    names: set[str] = set()
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if "/code/" not in member or not member.endswith(".py"):
                continue
            code = archive.read(member).decode("utf-8")
            names.update(f"aten::{name}" for name in _ATEN.findall(code))
            names.update(f"{ns}::{name}" for ns, name in _OTHER.findall(code))
    return names


def missing_in_torch_2_11() -> set[str]:
    """Operators that torch 2.11 lacks (tests/data/torch-2.11-missing-ops.txt)."""
    lines = MISSING_IN_TORCH_2_11.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}
