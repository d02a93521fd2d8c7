"""The batched decode/encode of a request batch (``imageio.decode_images`` /
``encode_images``) and the batched per-pixel path of the pipeline (the GPU's), checked on
the CPU: nvJPEG's routing runs here with torchvision's CPU codec standing in for nvJPEG, so
CI covers every branch but the CUDA kernels themselves (tests/gpu covers those)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from serving.runtime import nvjpeg
from serving.runtime.errors import ColorizerError, CorruptImage, ImageTooLarge
from serving.runtime.imageio import DecodedImage, decode_image, decode_images, encode_images
from serving.runtime.model_spec import ModelSpec
from serving.runtime.pipeline import ColorizePipeline, pixel_groups, should_freeze
from tests.support.photos import encode, photo_paths, synthetic_photo

CPU = torch.device("cpu")


@pytest.fixture
def codec_on_cpu(monkeypatch):
    """Route photos as on a GPU, with torchvision's CPU codec in nvJPEG's place."""
    calls = {"decode": 0, "encode": 0}
    decode, encode_ = nvjpeg.decode, nvjpeg.encode

    def counted_decode(datas, channels, device):
        calls["decode"] += len(datas)
        return decode(datas, channels, device)

    def counted_encode(images, quality):
        calls["encode"] += len(images)
        return encode_(images, quality)

    monkeypatch.setattr(nvjpeg, "usable", lambda device: True)
    monkeypatch.setattr(nvjpeg, "decode", counted_decode)
    monkeypatch.setattr(nvjpeg, "encode", counted_encode)
    return calls


def gray_jpeg(width=120, height=80, seed=0) -> bytes:
    return encode(synthetic_photo(width, height, seed).convert("L"), "JPEG", quality=90)


def color_jpeg(width=120, height=80, seed=0) -> bytes:
    return encode(synthetic_photo(width, height, seed), "JPEG", quality=90)


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[nvjpeg.EXIF_ORIENTATION] = 6  # rotate 90 degrees on display
    return encode(synthetic_photo(120, 80, 3), "JPEG", quality=90, exif=exif.tobytes())


def as_array(image: DecodedImage) -> np.ndarray:
    return image.pixels_tensor().cpu().numpy()


def test_probe_sends_only_plain_jpegs_to_nvjpeg():
    assert nvjpeg.probe(gray_jpeg(), 10**6) == 1
    assert nvjpeg.probe(color_jpeg(), 10**6) == 3
    assert nvjpeg.probe(color_jpeg(), 100) is None  # over the pixel cap: Pillow refuses it
    assert nvjpeg.probe(rotated_jpeg(), 10**6) is None  # Pillow applies the rotation
    cmyk = encode(synthetic_photo(40, 30).convert("CMYK"), "JPEG")
    assert nvjpeg.probe(cmyk, 10**6) is None
    assert nvjpeg.probe(encode(synthetic_photo(40, 30), "PNG"), 10**6) is None
    assert nvjpeg.probe(b"\xff\xd8 not a jpeg", 10**6) is None


def test_batched_decode_matches_pillow_and_keeps_order(codec_on_cpu):
    datas = [gray_jpeg(seed=1), color_jpeg(seed=2), rotated_jpeg(), photo_paths()[0].read_bytes()]
    datas.append(encode(synthetic_photo(50, 40), "PNG"))
    batch = decode_images(datas, 10**7, CPU)
    assert codec_on_cpu["decode"] == 3  # the gray, the color and the photo JPEG
    for data, image in zip(datas, batch, strict=True):
        alone = decode_image(data, 10**7)
        assert (
            image.pixels.shape == alone.pixels.shape and image.source_format == alone.source_format
        )
        diff = np.abs(as_array(image).astype(int) - alone.pixels.astype(int))
        assert diff.max() <= 1  # libjpeg builds may round a level apart


def test_a_bad_photo_fails_only_itself(codec_on_cpu):
    good = gray_jpeg()
    truncated = good[: len(good) // 2]  # the header parses; the scan is cut
    datas = [good, truncated, b"", b"\xff\xd8 not a jpeg", color_jpeg(4000, 3000), good]
    batch = decode_images(datas, 10**6, CPU)
    assert isinstance(batch[0], DecodedImage) and isinstance(batch[5], DecodedImage)
    assert isinstance(batch[1], CorruptImage)  # refused by the stand-in, then by Pillow
    assert isinstance(batch[2], ColorizerError) and isinstance(batch[3], ColorizerError)
    assert isinstance(batch[4], ImageTooLarge)
    assert np.array_equal(as_array(batch[0]), as_array(batch[5]))


def test_fuzzed_jpegs_decode_or_are_typed_refusals(codec_on_cpu):
    """Seeded mutations of a real photo (byte flips, cuts, inserted markers) through the
    nvJPEG routing: every result is a photo or a typed 4xx refusal, never anything else."""
    from tests.support.mutate import mutations

    seed_photo = photo_paths()[0].read_bytes()
    datas = list(mutations(seed_photo, count=200, seed=0))
    results = decode_images(datas, 10**7, CPU)
    assert codec_on_cpu["decode"] > 20  # many mutants still look like plain JPEGs
    for index, result in enumerate(results):
        if isinstance(result, Exception):
            assert isinstance(result, ColorizerError), (index, repr(result))
            assert 400 <= result.http_status < 500, (index, repr(result))
        else:
            assert result.pixels.shape[0] * result.pixels.shape[1] > 0


def test_batched_encode_routes_jpegs_and_keeps_the_rest_on_pillow(codec_on_cpu):
    rgb = torch.from_numpy(np.asarray(synthetic_photo(64, 48, 5))).permute(2, 0, 1).contiguous()
    alpha = np.full((48, 64), 200, np.uint8)
    out = encode_images(
        [rgb, rgb, rgb], [None, alpha, alpha], ["jpeg", "png", "webp"], [90, 90, 80]
    )
    assert codec_on_cpu["encode"] == 1
    jpeg, png, webp = (Image.open(io.BytesIO(b)) for b in out)
    assert (jpeg.format, jpeg.mode, jpeg.size) == ("JPEG", "RGB", (64, 48))
    assert (png.format, png.mode) == ("PNG", "RGBA") and np.array_equal(
        np.asarray(png)[..., 3], alpha
    )
    assert webp.format == "WEBP"
    source = rgb.permute(1, 2, 0).numpy().astype(int)
    pillow = Image.open(
        io.BytesIO(encode(Image.fromarray(source.astype(np.uint8)), "JPEG", quality=90))
    )
    error = np.abs(np.asarray(jpeg).astype(int) - source).mean()
    assert error < 1.5 * np.abs(np.asarray(pillow).astype(int) - source).mean()  # same quality


def test_an_unknown_format_fails_only_its_own_encode():
    rgb = torch.zeros(3, 8, 8, dtype=torch.uint8) + 100
    out = encode_images([rgb, rgb], [None, None], ["bmp", "png"], [90, 90])
    assert isinstance(out[0], ColorizerError) and out[1][:4] == b"\x89PNG"


def test_pixel_groups_stay_under_the_limit_and_cover_every_photo():
    assert pixel_groups([4, 4, 4, 10, 1, 1], 8) == [[0, 1], [2], [3], [4, 5]]
    assert pixel_groups([], 8) == []


@pytest.mark.parametrize("strip_pixels", [1 << 24, 150_000], ids=["one-group", "many-groups"])
def test_batched_pixels_match_the_row_strips(tiny_model, strip_pixels):
    """The GPU's per-pixel path (whole batch, photos end to end), run on the CPU, gives the
    row-strip path's output to within one 8-bit level: gray, color, high-bit and tiny
    photos mixed in one batch, in one group or split over several."""
    datas = [p.read_bytes() for p in photo_paths()[:3]] + [gray_jpeg(97, 61), color_jpeg(300, 200)]
    images = [decode_image(d) for d in datas]
    levels = np.asarray(synthetic_photo(90, 70).convert("L")).astype(np.uint16) * 257
    images.append(decode_image(encode(Image.fromarray(levels), "PNG")))
    assert images[-1].pixels.dtype == np.float32  # high-bit gray
    strips = ColorizePipeline.load(tiny_model, CPU, "fp32")
    batched = ColorizePipeline.load(tiny_model, CPU, "fp32")
    batched.batched_pixels, batched.strip_pixels = True, strip_pixels
    a, b = strips.prepare(images), batched.prepare(images)
    assert torch.allclose(a.l_in, b.l_in, atol=1e-5) and torch.allclose(
        a.gray_in, b.gray_in, atol=1e-5
    )
    ab = strips.infer(a)
    for x, y in zip(strips.finish_images(a, ab), batched.finish_images(b, ab), strict=True):
        assert x.shape == y.shape and y.is_contiguous() and y.dtype == torch.uint8
        assert int((x.int() - y.int()).abs().max()) <= 1


def test_only_a_scripted_network_is_frozen_by_default(tiny_model):
    """`colorizer tune-decoding` hands the pipeline the eager network of a checkpoint;
    torch.jit.freeze refuses that ("Freezing expects a ScriptModule"), which stopped every
    tuning run of the H100 sweep (2026-11-27)."""
    scripted = torch.jit.load(str(tiny_model))
    eager = torch.nn.Conv2d(1, 2, 1)
    assert should_freeze(scripted)
    assert not should_freeze(eager)
    assert ColorizePipeline(scripted, ModelSpec(), CPU).frozen
    assert not ColorizePipeline(eager, ModelSpec(), CPU).frozen


def test_a_frozen_network_gives_the_exported_ones_colors(tiny_model):
    """The pipeline freezes a scripted network for inference (``freeze``): it must give
    the module's own output, to float rounding."""
    images = [decode_image(p.read_bytes()) for p in photo_paths()[:2]]
    exported = ColorizePipeline.load(tiny_model, CPU, "fp32", freeze=False)
    frozen = ColorizePipeline.load(tiny_model, CPU, "fp32")
    assert frozen.frozen and not exported.frozen
    batch = exported.prepare(images)
    assert torch.allclose(exported.infer(batch), frozen.infer(batch), atol=1e-4)
