"""Photos for tests: the real ones in tests/data/photos, synthetic ones, and image checks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from serving.client.bench import synthetic_photo  # noqa: F401  (one generator, re-exported)
from serving.runtime.colorspace import rgb_to_lab
from tests.support.paths import PHOTOS


def photo_paths() -> list[Path]:
    """The real photos copied into tests/data/photos (see its README)."""
    return sorted(PHOTOS.glob("*.jpg"))


def encode(img: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    """Encode a Pillow image to bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def open_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def lightness(img: Image.Image) -> torch.Tensor:
    """CIELAB L (H, W) in [0, 100] of an image (alpha ignored)."""
    rgb = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    return rgb_to_lab(rgb)[0]


def mean_abs_l_diff(a: bytes, b: bytes) -> float:
    """Mean |L_a - L_b| in Lab units of two encoded images of the same size."""
    return float((lightness(open_image(a)) - lightness(open_image(b))).abs().mean())
