"""JPEG decode and encode on a CUDA GPU (nvJPEG, through ``torchvision.io``), batched.

Only for a pipeline on CUDA where torchvision is installed (the gpu image); everything else
goes through Pillow (``imageio``). ``imageio.decode_images`` / ``encode_images`` decide, per
photo, which way it goes; this module only talks to nvJPEG:

- ``probe``: from the header alone (Pillow reads no pixels), whether nvJPEG can take a photo
  as it is: an 8-bit gray or YCbCr JPEG (not CMYK, not MPO), within the pixel cap, with no
  EXIF rotation to apply. Anything else, Pillow decodes as before.
- ``decode``: one batched call per mode; the pixels land on the GPU, never in host memory.
- ``encode``: one batched call per quality, for (3, H, W) uint8 CUDA tensors.

torchvision is imported on first use, never at import time: the CPU image has none.
"""

from __future__ import annotations

import functools
import io
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image

EXIF_ORIENTATION = 0x0112
# Pillow modes of a JPEG that nvJPEG decodes to the same pixels: -> channels it returns.
_MODES = {"L": 1, "RGB": 3}


@functools.cache
def _tvio() -> Any | None:
    """torchvision.io, or None where torchvision is not installed."""
    try:
        import torchvision.io as tvio
    except ImportError:
        return None
    return tvio


def usable(device: torch.device) -> bool:
    """True when photos for ``device`` can be decoded and encoded with nvJPEG there."""
    return device.type == "cuda" and _tvio() is not None


def probe(data: bytes, max_pixels: int) -> int | None:
    """Channels (1 gray, 3 color) nvJPEG would return for this photo, or None when it should
    go through Pillow (not a plain JPEG, too large, EXIF-rotated, or a header Pillow cannot
    read: Pillow then says what is wrong)."""
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
            width, height = img.size
            if img.format != "JPEG" or img.mode not in _MODES:
                return None
            if not 0 < width * height <= max_pixels:
                return None
            if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
                return None
            return _MODES[img.mode]
    except Exception:  # any header Pillow rejects: its own decode gives the typed error
        return None


def _as_tensor(data: bytes) -> torch.Tensor:
    """Bytes -> (N,) uint8 CPU tensor sharing their memory (read only, never written)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns on read-only buffers
        return torch.from_numpy(np.frombuffer(data, dtype=np.uint8))


def decode(datas: list[bytes], channels: int, device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes (all ``channels`` 1 or 3, as ``probe`` said) -> (channels, H_i, W_i) uint8
    on ``device``. Raises RuntimeError when nvJPEG rejects any of them. (On a CPU device
    torchvision decodes with libjpeg: the CPU tests use that.)"""
    tvio = _tvio()
    tensors = [_as_tensor(d) for d in datas]
    if channels == 3:
        return tvio.decode_jpeg(tensors, mode=tvio.ImageReadMode.RGB, device=device)
    # A one-component JPEG as it is; keep a single plane should a decoder widen it to 3.
    planes = tvio.decode_jpeg(tensors, mode=tvio.ImageReadMode.UNCHANGED, device=device)
    return [chw[:1] for chw in planes]


def encode(images: list[torch.Tensor], quality: int) -> list[bytes]:
    """(3, H_i, W_i) uint8 tensors -> JPEG bytes at ``quality`` (1-100); nvJPEG for CUDA
    tensors (torchvision encodes CPU tensors with libjpeg: the CPU tests use that)."""
    if not images:
        return []
    if images[0].is_cuda:  # the encoder reads on its own stream: let the writers finish
        torch.cuda.synchronize(images[0].device)
    encoded = _tvio().encode_jpeg(images, quality=quality)
    # One copy to the host for the whole batch, not one (and one sync) per photo.
    host = torch.cat(encoded).cpu().numpy()
    ends = np.cumsum([len(t) for t in encoded]).tolist()
    return [host[a:b].tobytes() for a, b in zip([0, *ends[:-1]], ends, strict=True)]
