"""Image bytes <-> tensors: decode, validate, orient, keep alpha aside, encode.

Pillow's decompression-bomb guard stays on; our own, lower pixel cap is checked
from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from serving.runtime import nvjpeg
from serving.runtime.constants import (
    CONTENT_TYPES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_QUALITY,
    FALLBACK_OUTPUT_FORMAT,
    INPUT_FORMATS,
    INPUT_FORMATS_HUMAN,
    OUTPUT_FORMATS,
    PNG_COMPRESS_LEVEL,
)
from serving.runtime.errors import (
    CorruptImage,
    EmptyInput,
    ImageTooLarge,
    InvalidOption,
    NotAnImage,
    UnsupportedFormat,
)

log = logging.getLogger(__name__)

_PILLOW_TO_OUTPUT = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp"}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass
class DecodedImage:
    """A decoded photo, kept as small as its source: what the pipeline needs, nothing more.

    - ``pixels``: EXIF orientation applied; (H, W) uint8 for 8-bit gray photos (a gray JPEG
      never becomes RGB), (H, W, 3) uint8 RGB for color and palette photos, or (H, W)
      float32 in [0, 1] for 16-bit / 32-bit / float gray. A numpy array from Pillow, or a
      tensor already on the GPU when nvJPEG decoded it (``decode_images``; then (H, W, 3)
      is a view of (3, H, W) planes)
    - ``alpha``: (H, W) uint8, or None when the input had no alpha
    - ``source_format``: Pillow's format name of the input (e.g. "JPEG")
    """

    pixels: np.ndarray | torch.Tensor
    alpha: np.ndarray | None
    source_format: str

    @property
    def megapixels(self) -> float:
        return self.pixels.shape[0] * self.pixels.shape[1] / 1e6

    def pixels_tensor(self) -> torch.Tensor:
        """``pixels`` as a CPU tensor sharing its memory: read it, never write to it.

        Pillow's arrays are read-only; torch warns when it wraps one, since writes would
        reach the array. Nothing here writes, so the warning is silenced, not the risk.
        """
        if isinstance(self.pixels, torch.Tensor):
            return self.pixels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(self.pixels)

    @property
    def rgb(self) -> torch.Tensor:
        """(3, H, W) float32 in [0, 1]: the photo as float RGB (built on each call)."""
        pixels = self.pixels_tensor()
        if pixels.dim() == 2:
            pixels = pixels[..., None].expand(-1, -1, 3)
        rgb = pixels.permute(2, 0, 1).float()
        return rgb / 255.0 if pixels.dtype == torch.uint8 else rgb.contiguous()


# What Pillow raises on bytes it cannot make sense of. Its plugins raise OSError ("cannot
# identify", "Truncated File Read", "Unsupported BMP header type", "broken data stream"),
# SyntaxError ("not a TIFF file"), ValueError, EOFError, struct.error, IndexError, KeyError,
# TypeError and ZeroDivisionError from fields of broken headers (found by the decode fuzz
# test, tests/unit/test_decode_fuzz.py). All of them describe the photo, not the server.
_BAD_BYTES = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    NotImplementedError,
)


def _is_server_fault(exc: BaseException) -> bool:
    """A codec missing from this Pillow build ("decoder jpeg not available") is ours, not the
    caller's: let it surface as a 500."""
    return isinstance(exc, OSError) and "not available" in str(exc)


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image is too large to decode safely ({exc})") from exc
    except UnidentifiedImageError:
        pass
    except _BAD_BYTES as exc:  # an accepted format whose header is broken
        if _is_server_fault(exc):
            raise
        raise CorruptImage(
            f"the image header is corrupt ({type(exc).__name__}: {exc}); "
            f"send a valid {INPUT_FORMATS_HUMAN} file"
        ) from exc
    try:
        other = Image.open(io.BytesIO(data))
    except Exception as exc:
        raise NotAnImage(
            "the request body is not an image Pillow can read; "
            f"accepted formats: {INPUT_FORMATS_HUMAN}"
        ) from exc
    raise UnsupportedFormat(
        f"image format {other.format} is not supported; accepted formats: {INPUT_FORMATS_HUMAN}"
    )


def _high_bit_gray(img: Image.Image) -> np.ndarray:
    """16-bit / 32-bit / float single-channel image -> (H, W) float32 in [0, 1]."""
    arr = np.asarray(img, dtype=np.float32)
    if img.mode == "F":
        top = 1.0 if arr.size and float(arr.max()) <= 1.0 else 255.0
    elif img.mode.startswith("I;16"):
        top = 65535.0
    else:  # "I": 16-bit PNGs decode to this mode
        top = 255.0 if arr.size and float(arr.max()) <= 255.0 else 65535.0
    return np.clip(arr / top, 0.0, 1.0)


def _to_arrays(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (pixels, alpha) as ``DecodedImage`` holds them."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _high_bit_gray(img), None
    if img.mode == "LA":
        gray, alpha = img.split()
        return np.asarray(gray), np.asarray(alpha)
    has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    if img.mode in ("L", "1"):
        return np.asarray(img.convert("L")), None
    return np.asarray(img.convert("RGB")), None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode image bytes (first frame), apply EXIF orientation, keep alpha aside.

    Raises EmptyInput, NotAnImage, UnsupportedFormat, CorruptImage (400) or ImageTooLarge (413).
    """
    if not data:
        raise EmptyInput(
            f"the request carried no image; send the bytes of one {INPUT_FORMATS_HUMAN} file"
        )
    img = _open(data)
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP; "
            f"at most {max_pixels / 1e6:.1f} MP is accepted"
        )
    source_format = img.format or "UNKNOWN"
    try:
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        pixels, alpha = _to_arrays(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image is too large to decode safely ({exc})") from exc
    except _BAD_BYTES as exc:
        if _is_server_fault(exc):
            raise
        raise CorruptImage(
            f"the {source_format} image is truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc
    return DecodedImage(pixels=pixels, alpha=alpha, source_format=source_format)


def decode_images(
    datas: list[bytes], max_pixels: int = DEFAULT_MAX_PIXELS, device: torch.device | None = None
) -> list[DecodedImage | Exception]:
    """Decode a batch of photos: per photo a ``DecodedImage`` or the exception that
    ``decode_image`` raises for it (a bad photo never fails the others).

    On a CUDA ``device`` with nvJPEG (``nvjpeg.usable``), the JPEGs it takes as they are
    (``nvjpeg.probe``) are decoded there, batched, straight into GPU memory; every other
    photo, and any group nvJPEG refuses, goes through Pillow (``decode_image``).
    """
    results: list[DecodedImage | Exception | None] = [None] * len(datas)
    if device is not None and nvjpeg.usable(device):
        groups: dict[int, list[int]] = {}
        for idx, data in enumerate(datas):
            channels = nvjpeg.probe(data, max_pixels)
            if channels is not None:
                groups.setdefault(channels, []).append(idx)
        for channels, members in groups.items():
            try:
                planes = nvjpeg.decode([datas[i] for i in members], channels, device)
            except RuntimeError as exc:  # e.g. a corrupt scan: Pillow says which and why
                log.info("nvJPEG refused a group of %d; decoding it with Pillow: %s",
                         len(members), exc)  # fmt: skip
                continue
            for idx, chw in zip(members, planes, strict=True):
                pixels = chw[0] if channels == 1 else chw.permute(1, 2, 0)
                results[idx] = DecodedImage(pixels=pixels, alpha=None, source_format="JPEG")
    for idx, data in enumerate(datas):
        if results[idx] is None:
            try:
                results[idx] = decode_image(data, max_pixels)
            except Exception as exc:  # typed errors, and server faults the caller logs
                results[idx] = exc
    return results


def encode_images(
    images: list[torch.Tensor],
    alphas: list[np.ndarray | None],
    formats: list[str],
    qualities: list[int],
) -> list[bytes | Exception]:
    """Encode a batch: (3, H_i, W_i) uint8 RGB planes on any device (+ alpha, dropped for
    JPEG) -> per photo the bytes in its format, or the exception that encoding raised.

    JPEGs of CUDA tensors go through nvJPEG, one batched call per quality; the rest (and a
    batch nvJPEG refuses) through Pillow on the CPU (``encode_image``).
    """
    results: list[bytes | Exception | None] = [None] * len(images)
    by_quality: dict[int, list[int]] = {}
    for idx, (rgb, fmt) in enumerate(zip(images, formats, strict=True)):
        if fmt == "jpeg" and nvjpeg.usable(rgb.device):
            by_quality.setdefault(qualities[idx], []).append(idx)
    for quality, members in by_quality.items():
        try:
            encoded = nvjpeg.encode([images[i] for i in members], quality)
        except RuntimeError as exc:
            log.warning("nvJPEG could not encode a group of %d; using Pillow: %s",
                        len(members), exc)  # fmt: skip
            continue
        for idx, data in zip(members, encoded, strict=True):
            results[idx] = data
    for idx, rgb in enumerate(images):
        if results[idx] is None:
            try:
                planes = rgb.cpu().numpy()
                results[idx] = encode_image(planes, alphas[idx], formats[idx], qualities[idx])
            except Exception as exc:
                results[idx] = exc
    return results


def parse_quality(value: str | int | None) -> int:
    """Validate an output quality option (1-100); None -> the default."""
    if value is None or value == "":
        return DEFAULT_QUALITY
    try:
        quality = int(value)
    except (TypeError, ValueError):
        raise InvalidOption(f"quality must be an integer from 1 to 100, got {value!r}") from None
    if not 1 <= quality <= 100:
        raise InvalidOption(f"quality must be an integer from 1 to 100, got {quality}")
    return quality


def choose_output_format(
    requested: str | None, accept: str | None, source_format: str | None
) -> str:
    """Output format: explicit option, else the Accept header, else the input's, else PNG."""
    if requested:
        fmt = requested.strip().lower()
        fmt = "jpeg" if fmt == "jpg" else fmt
        if fmt not in OUTPUT_FORMATS:
            raise InvalidOption(
                f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {requested!r}"
            )
        return fmt
    if accept:
        for part in accept.split(","):
            media = part.split(";")[0].strip().lower()
            for fmt, content_type in CONTENT_TYPES.items():
                if media == content_type:
                    return fmt
    return _PILLOW_TO_OUTPUT.get((source_format or "").upper(), FALLBACK_OUTPUT_FORMAT)


def to_uint8_hwc(rgb: torch.Tensor, alpha: torch.Tensor | None = None) -> np.ndarray:
    """(3, H, W) float [0, 1] (+ optional (H, W) alpha) -> (H, W, 3|4) uint8 array."""
    planes = rgb if alpha is None else torch.cat((rgb, alpha[None]), dim=0)
    return (planes.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _plane(pixels: np.ndarray) -> Image.Image:
    """(H, W) uint8 -> a Pillow "L" image sharing its memory when it is contiguous."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape
    return Image.frombuffer("L", (width, height), pixels, "raw", "L", 0, 1)


def encode_image(
    rgb: torch.Tensor | np.ndarray,
    alpha: torch.Tensor | np.ndarray | None,
    fmt: str,
    quality: int = DEFAULT_QUALITY,
) -> bytes:
    """Encode RGB (+ alpha, dropped for JPEG) as jpeg, png or webp bytes.

    ``rgb``: (3, H, W) uint8 planes (the serving path; Pillow interleaves them faster than
    numpy or torch) or (3, H, W) float in [0, 1]; ``alpha``: (H, W) uint8 or float in
    [0, 1], or None.
    """
    if fmt not in OUTPUT_FORMATS:
        raise InvalidOption(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    if fmt == "jpeg":
        alpha = None
    if isinstance(rgb, torch.Tensor):
        rgb = (rgb.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    planes = [_plane(channel) for channel in rgb]
    if alpha is not None:
        if isinstance(alpha, torch.Tensor):
            alpha = (alpha.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
        planes.append(_plane(alpha))
    img = Image.merge("RGBA" if alpha is not None else "RGB", planes)
    del planes
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()
