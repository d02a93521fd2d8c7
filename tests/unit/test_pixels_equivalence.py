"""The fast full-resolution path (8-bit tables, row strips) gives today's photos.

The reference below is the pipeline as it was before row strips (decode to float RGB,
full-resolution Lab, whole-image upsample and Lab -> RGB), frozen here so later changes
to the runtime cannot move it. Criterion (issue #9): on real photos, new and reference
differ by at most one 8-bit level on 99.9% of pixels.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from serving.runtime.colorspace import lab_to_rgb_keep_lightness, lightness_to_gray, rgb_to_lab
from serving.runtime.imageio import decode_image, encode_image
from serving.runtime.pipeline import ColorizePipeline

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "model_store" / "default" / "colorizer.pt"
TEST_PHOTOS = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))
VAL_PHOTOS = sorted((ROOT / "training" / "datasets" / "photos" / "val").glob("*.jpg"))
MAX_FAR_FRACTION = 0.001  # pixels allowed to differ by more than one level


# --- The reference: the pipeline before issue #9, whole-image float math ---------------


def reference_rgb(data: bytes) -> torch.Tensor:
    """Old decode: every photo to (3, H, W) float RGB in [0, 1] (EXIF applied)."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return torch.from_numpy(np.clip(arr / top, 0, 1)).expand(3, -1, -1).contiguous()
    rgb = np.asarray(img.convert("RGB")).copy()
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0


def reference_colorize(pipeline: ColorizePipeline, rgb: torch.Tensor) -> np.ndarray:
    """Old prepare -> network -> finish -> 8-bit: (H, W, 3) uint8."""
    spec = pipeline.spec
    lum = rgb_to_lab(rgb)[:1]
    full = lum[None]
    l_small = F.interpolate(full, size=(spec.l_size,) * 2, mode="bilinear", antialias=True)
    l_in = ((l_small[0] - spec.l_center) / spec.l_scale).clamp(-1, 1)
    gray = F.interpolate(
        lightness_to_gray(full), size=(spec.gray_size,) * 2, mode="bilinear", antialias=True
    )
    gray_in = (gray[0] * 2.0 - 1.0).clamp(-1, 1)
    to_net = dict(dtype=pipeline.dtype, memory_format=torch.channels_last)
    with torch.inference_mode():
        ab = pipeline.module(l_in[None].to(**to_net), gray_in[None].to(**to_net)).float()[0]
    height, width = lum.shape[-2:]
    ab = F.interpolate(ab[None], size=(height, width), mode="bilinear")[0]
    out = lab_to_rgb_keep_lightness(torch.cat((lum, ab * spec.ab_scale), dim=0))
    return (out.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


# --- The new path, as the handler runs it -----------------------------------------------


def new_colorize(pipeline: ColorizePipeline, data: bytes) -> np.ndarray:
    batch = pipeline.prepare([decode_image(data, max_pixels=10**9)])
    (planes,) = pipeline.finish_uint8(batch, pipeline.infer(batch))
    return planes.transpose(1, 2, 0)


def far_fraction(new: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of pixels where some channel differs by more than one level."""
    assert new.shape == ref.shape
    diff = np.abs(new.astype(np.int16) - ref.astype(np.int16)).max(axis=-1)
    return float((diff > 1).mean())


@pytest.fixture(scope="module")
def pipeline() -> ColorizePipeline:
    torch.set_num_threads(1)
    return ColorizePipeline.load(MODEL, "cpu", "fp32")


def _encoded(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


@pytest.mark.parametrize("path", TEST_PHOTOS, ids=lambda p: p.name)
def test_color_photos_match_the_reference(pipeline, path):
    data = path.read_bytes()
    assert (
        far_fraction(
            new_colorize(pipeline, data), reference_colorize(pipeline, reference_rgb(data))
        )
        <= MAX_FAR_FRACTION
    )


@pytest.mark.parametrize("path", TEST_PHOTOS[:3], ids=lambda p: p.name)
def test_gray_jpegs_match_the_reference(pipeline, path):
    """A gray JPEG decodes to one 8-bit channel; L comes from a table."""
    data = _encoded(Image.open(path).convert("L"), "JPEG", quality=90)
    assert decode_image(data).pixels.ndim == 2
    new = new_colorize(pipeline, data)
    assert far_fraction(new, reference_colorize(pipeline, reference_rgb(data))) <= MAX_FAR_FRACTION


def test_16_bit_and_alpha_photos_match_the_reference(pipeline):
    photo = Image.open(TEST_PHOTOS[0])
    sixteen = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    rgba = photo.convert("RGBA")
    for data in (_encoded(sixteen, "PNG"), _encoded(rgba, "PNG")):
        new = new_colorize(pipeline, data)
        assert (
            far_fraction(new, reference_colorize(pipeline, reference_rgb(data))) <= MAX_FAR_FRACTION
        )


def test_strip_size_does_not_change_the_result(pipeline):
    data = TEST_PHOTOS[0].read_bytes()
    small = ColorizePipeline(pipeline.module, pipeline.spec, pipeline.device, strip_pixels=999)
    assert np.array_equal(new_colorize(small, data), new_colorize(pipeline, data))


def test_encode_keeps_alpha_and_planes():
    planes = np.random.default_rng(0).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    alpha = np.arange(35, dtype=np.uint8).reshape(5, 7)
    out = Image.open(io.BytesIO(encode_image(planes, alpha, "png")))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., :3], planes.transpose(1, 2, 0))
    assert np.array_equal(np.asarray(out)[..., 3], alpha)


@pytest.mark.slow
@pytest.mark.parametrize("path", VAL_PHOTOS, ids=lambda p: p.name)
def test_val_photos_match_the_reference(pipeline, path):
    data = path.read_bytes()
    new = new_colorize(pipeline, data)
    assert far_fraction(new, reference_colorize(pipeline, reference_rgb(data))) <= MAX_FAR_FRACTION


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_cpu(tiny_model):
    """A network exported by this machine's torch (the lent GPU machine's torch may be older
    than the one that exported the shipped file, and TorchScript does not load backwards)."""
    cpu = ColorizePipeline.load(tiny_model, "cpu", "fp32")
    cuda = ColorizePipeline.load(tiny_model, "cuda", "fp32")
    data = TEST_PHOTOS[0].read_bytes()
    assert far_fraction(new_colorize(cuda, data), new_colorize(cpu, data)) <= MAX_FAR_FRACTION


def test_8_bit_lab_to_rgb_matches_the_float_function():
    """Random Lab, most of it outside the sRGB gamut: the strip function and
    ``lab_to_rgb_keep_lightness`` differ by at most one level anywhere."""
    from serving.runtime.colorspace import lab_to_srgb8_keep_lightness, linear_to_srgb8_table

    gen = torch.Generator().manual_seed(0)
    lab = torch.stack(
        (
            torch.rand(300, 400, generator=gen) * 100,
            torch.randn(300, 400, generator=gen) * 60,
            torch.randn(300, 400, generator=gen) * 60,
        )
    )
    ref = (lab_to_rgb_keep_lightness(lab).clamp(0, 1) * 255).round().to(torch.uint8)
    out = torch.empty(3, 300, 400, dtype=torch.uint8)
    lab_to_srgb8_keep_lightness(lab[0].clone(), lab[1:].clone(), out, linear_to_srgb8_table())
    diff = (out.int() - ref.int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01


def test_8_bit_lab_to_rgb_at_black_white_and_one_sided_chroma():
    """Black, white, and just inside them, over a grid of a*b* out to +-120 (where one side
    of the gamut test is unconstrained): the strip function matches the float function."""
    from serving.runtime.colorspace import lab_to_srgb8_keep_lightness, linear_to_srgb8_table

    grid = torch.linspace(-120, 120, 49)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    rows = []
    for lightness in (0.0, 1e-4, 50.0, 100.0 - 1e-4, 100.0):
        rows.append(torch.stack((torch.full_like(a, lightness), a, b)))
    lab = torch.cat(rows, dim=1)  # (3, 5 * 49, 49)
    ref = (lab_to_rgb_keep_lightness(lab).clamp(0, 1) * 255).round().to(torch.uint8)
    out = torch.empty(3, *lab.shape[1:], dtype=torch.uint8)
    lab_to_srgb8_keep_lightness(lab[0].clone(), lab[1:].clone(), out, linear_to_srgb8_table())
    assert int((out.int() - ref.int()).abs().max()) <= 1


def test_reading_pillow_pixels_prints_no_torch_warning():
    """Pillow's arrays are read-only: wrapping one made torch print a UserWarning about
    undefined behaviour into every `colorizer evaluate` / `tune-decoding` run. A fresh
    process, since torch prints it once per process."""
    code = (
        "import sys; from pathlib import Path\n"
        "from serving.runtime.imageio import decode_image\n"
        "image = decode_image(Path(sys.argv[1]).read_bytes())\n"
        "assert image.pixels.flags.writeable is False  # the case this test is about\n"
        "rgb = image.rgb\n"
        "assert rgb.shape[0] == 3 and 0.0 <= float(rgb.min()) <= float(rgb.max()) <= 1.0\n"
        "assert tuple(image.pixels_tensor().shape) == image.pixels.shape\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(VAL_PHOTOS[0])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "not writable" not in done.stderr, done.stderr
