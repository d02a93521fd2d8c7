"""Shared helpers of the serving tests: test models, photos, image checks, free ports."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from serving.client.bench import synthetic_photo  # noqa: F401  (re-exported for the tests)
from serving.runtime.colorspace import rgb_to_lab

PHOTOS = Path(__file__).parent / "data" / "photos"


def photo_paths() -> list[Path]:
    """The real photos copied into tests/data/photos (see its README)."""
    return sorted(PHOTOS.glob("*.jpg"))


def export_test_model(path: Path, preset_name: str = "compact") -> Path:
    """An untrained but valid exported model: ``compact`` preset, or ``tiny`` for unit tests.

    Exported once per path: later calls reuse the file.
    """
    if path.is_file():
        return path
    from tests.model_support import TINY
    from training.export import export
    from training.model import Colorizer, preset

    torch.manual_seed(0)
    config = TINY if preset_name == "tiny" else preset(preset_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    export(Colorizer(config), path)
    return path


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


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on loopback right now."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()
