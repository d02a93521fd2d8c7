"""Write the decode fuzzer's seed corpus: one small file per accepted format and variant.

    python -m tests.support.fuzz_seeds tests/data/fuzz_seeds

Small on purpose (a few hundred bytes to a few KB each) so mutations stay fast.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(width: int = 24, height: int = 16) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 4 % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def seeds() -> dict[str, bytes]:
    """file name -> encoded bytes."""
    rgb = _photo()
    gray = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    out: dict[str, bytes] = {}

    def save(name: str, img: Image.Image, fmt: str, **params) -> None:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **params)
        out[name] = buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    save("rgb.jpg", rgb, "JPEG", quality=80)
    save("gray.jpg", gray, "JPEG", quality=80)
    save("progressive-exif.jpg", rgb, "JPEG", quality=80, progressive=True, exif=exif)
    save("rgb.png", rgb, "PNG")
    save("rgba.png", rgba, "PNG")
    save("gray16.png", Image.fromarray(np.asarray(gray).astype(np.uint16) * 257), "PNG")
    save("palette-transparent.png", rgb.convert("P"), "PNG", transparency=0)
    save("lossy.webp", rgb, "WEBP", quality=60)
    save("lossless-alpha.webp", rgba, "WEBP", lossless=True)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    save("animated.gif", frames[0], "GIF", save_all=True, append_images=frames[1:])
    save("raw.tif", rgb, "TIFF")
    save("lzw.tif", rgb, "TIFF", compression="tiff_lzw")
    save("gray16.tif", Image.fromarray(np.asarray(gray).astype(np.uint16) * 257), "TIFF")
    save("rgb.bmp", rgb, "BMP")
    save("palette.bmp", rgb.convert("P"), "BMP")
    return out


def main(argv: list[str]) -> int:
    folder = Path(argv[1] if len(argv) > 1 else "tests/data/fuzz_seeds")
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (folder / name).write_bytes(data)
    print(f"wrote {len(seeds())} seeds to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
