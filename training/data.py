"""Training data: any folder tree of color photos -> (L@224, gray@299, ab@224) samples.

Samples are built with the same color math and resizing the service uses
(``serving.runtime.colorspace`` and ``serving.runtime.pipeline.model_inputs``), so training and
serving cannot drift apart.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import v2

from serving.runtime.colorspace import rgb_to_lab
from serving.runtime.constants import IMAGE_SUFFIXES
from serving.runtime.model_spec import ModelSpec
from serving.runtime.pipeline import model_inputs

log = logging.getLogger(__name__)

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
GRAY_CHROMA_THRESHOLD = 2.0  # mean |R-G| + |G-B| (uint8 units) below which a photo counts as gray


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation as in the paper: random flip, zoom (random resized crop) and shear."""

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    shear_degrees: float = 10.0
    flip: bool = True


def find_images(root: str | Path) -> list[Path]:
    """All files under ``root`` with an image suffix, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def in_val_split(path: Path, fraction: float) -> bool:
    """Deterministic split by file-name hash: True for about ``fraction`` of names."""
    digest = hashlib.sha1(path.name.encode()).hexdigest()
    return int(digest[:8], 16) / 2**32 < fraction


def scan(files: list[Path]) -> tuple[list[Path], Counter]:
    """Keep readable color images (header check only); count what was skipped and why."""
    kept, skipped = [], Counter()
    for path in files:
        try:
            with Image.open(path) as img:
                mode = img.mode
        except Exception:
            skipped["not an image or corrupt"] += 1
            continue
        if mode in GRAY_MODES:
            skipped["grayscale"] += 1
            continue
        kept.append(path)
    return kept, skipped


def is_grayscale(rgb: np.ndarray) -> bool:
    """(H, W, 3) uint8 -> True when the photo has (almost) no color."""
    small = rgb[:: max(1, rgb.shape[0] // 64), :: max(1, rgb.shape[1] // 64)].astype(np.int16)
    chroma = np.abs(small[..., 0] - small[..., 1]) + np.abs(small[..., 1] - small[..., 2])
    return float(chroma.mean()) < GRAY_CHROMA_THRESHOLD


def make_sample(
    rgb: torch.Tensor, spec: ModelSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB (3, H, W) float [0, 1] -> (l (1,S,S), gray (1,G,G), ab (2,S,S)), all in [-1, 1]."""
    lab = rgb_to_lab(rgb)
    l_in, gray_in = model_inputs(lab[:1], spec)
    ab = F.interpolate(lab[None, 1:], size=(spec.l_size,) * 2, mode="bilinear", antialias=True)
    return l_in, gray_in, (ab[0] / spec.ab_scale).clamp(-1, 1)


class PhotoDataset(Dataset):
    """Color photos -> training samples. Deterministic per (seed, epoch, index).

    A sample that fails to decode or turns out grayscale yields None; ``collate``
    drops it and counts it.
    """

    def __init__(
        self,
        files: list[Path],
        spec: ModelSpec = ModelSpec(),
        augment: AugmentConfig | None = AugmentConfig(),
        seed: int = 0,
    ) -> None:
        self.files = list(files)
        self.spec = spec
        self.seed = seed
        self.epoch = 0
        size = spec.gray_size  # work at the larger input size, then derive both inputs
        if augment is None:
            self.transform = v2.Resize((size, size), antialias=True)
        else:
            steps = [
                v2.RandomResizedCrop(
                    size, scale=augment.crop_scale, ratio=augment.crop_ratio, antialias=True
                )
            ]
            if augment.flip:
                steps.append(v2.RandomHorizontalFlip())
            if augment.shear_degrees:
                steps.append(v2.RandomAffine(degrees=0.0, shear=augment.shear_degrees))
            self.transform = v2.Compose(steps)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = self.files[index]
        try:
            with Image.open(path) as img:
                rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        except Exception:
            return ("corrupt", path)
        if is_grayscale(rgb):
            return ("grayscale", path)
        tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1)  # (3, H, W) uint8
        sample_seed = (self.seed * 1_000_003 + self.epoch * 100_003 + index) % 2**63
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            tensor = self.transform(tensor)
        return make_sample(tensor.float() / 255.0, self.spec)


def collate(samples: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Counter]:
    """Stack good samples -> (l (B,1,S,S), gray (B,1,G,G), ab (B,2,S,S), skipped counts)."""
    good = [s for s in samples if isinstance(s[0], torch.Tensor)]
    skipped = Counter(s[0] for s in samples if isinstance(s[0], str))
    if not good:
        empty = torch.empty(0)
        return empty, empty, empty, skipped
    l_in, gray, ab = (torch.stack(parts) for parts in zip(*good, strict=True))
    return l_in, gray, ab, skipped


def split_files(
    data: str | Path, val_data: str | Path | None, val_fraction: float
) -> tuple[list[Path], list[Path], Counter]:
    """Train/val file lists: a separate val folder, or a hash-chosen fraction of ``data``."""
    files, skipped = scan(find_images(data))
    if val_data is not None:
        val, val_skipped = scan(find_images(val_data))
        skipped.update({f"val {k}": v for k, v in val_skipped.items()})
        train = files
    else:
        train = [p for p in files if not in_val_split(p, val_fraction)]
        val = [p for p in files if in_val_split(p, val_fraction)]
    if not train:
        raise ValueError(f"no usable color photos under {data} (skipped: {dict(skipped)})")
    return train, val, skipped
