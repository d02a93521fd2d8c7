"""The handler and the pipeline on CUDA (issue #11): run by tests/gpu/run_device_checks.sh on
a lent H100/H200; skipped on machines without a CUDA device (CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serving.runtime.imageio import decode_image
from serving.runtime.pipeline import ColorizePipeline
from tests.support.handler import Harness, param, request
from tests.support.models import export_test_model
from tests.support.photos import encode, open_image, photo_paths, synthetic_photo

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-model")
    export_test_model(folder / "model.pt", "compact")
    return folder


@pytest.fixture(scope="module")
def gpu_harness(model_dir):
    harness = Harness(model_dir)
    harness.service.context.system_properties["gpu_id"] = 0
    harness.handler.initialize(harness.service.context)
    return harness


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    return encode(synthetic_photo(width, height, seed).convert("L"), "JPEG", quality=90)


def test_handler_runs_on_the_gpu_torchserve_assigns(gpu_harness):
    assert gpu_harness.handler.pipeline.device == torch.device("cuda", 0)
    (resp,) = gpu_harness.run(request(param("body", photo_paths()[0].read_bytes(), "image/jpeg")))
    assert resp.status == 200 and resp.content_type == "image/jpeg"


def test_a_batch_of_mixed_sizes_keeps_each_size(gpu_harness):
    sizes = [(640, 480), (300, 800), (1024, 1024), (97, 61)]
    bodies = [jpeg(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    responses = gpu_harness.run(*(request(param("body", b, "image/jpeg")) for b in bodies))
    assert [r.status for r in responses] == [200] * len(sizes)
    assert [open_image(r.body).size for r in responses] == sizes


def test_a_12_megapixel_photo(gpu_harness):
    (resp,) = gpu_harness.run(request(param("body", jpeg(4000, 3000), "image/jpeg")))
    assert resp.status == 200 and open_image(resp.body).size == (4000, 3000)


def test_a_bad_photo_fails_only_itself_in_a_gpu_batch(gpu_harness):
    good = jpeg(320, 240)
    responses = gpu_harness.run(
        request(param("body", good, "image/jpeg")),
        request(param("body", b"\xff\xd8 not a jpeg", "image/jpeg")),
        request(param("body", good, "image/jpeg")),
    )
    assert [r.status for r in responses] == [200, 400, 200]
    assert responses[1].json()["error"] in {"corrupt_image", "not_an_image"}


def test_cuda_and_cpu_pipelines_agree(model_dir):
    """The served path (decoded photos -> prepare -> infer -> finish_uint8), same network in
    fp32 on both devices: the 8-bit outputs differ by more than 2 levels on at most 0.1% of
    pixels (cuDNN and the CPU sum in different orders)."""
    images = [decode_image(p.read_bytes()) for p in photo_paths()[:3]]
    outputs = []
    for device in ("cpu", "cuda"):
        pipeline = ColorizePipeline.load(model_dir / "model.pt", device=device, precision="fp32")
        batch = pipeline.prepare(images)
        outputs.append(pipeline.finish_uint8(batch, pipeline.infer(batch)))
    for cpu, cuda in zip(*outputs, strict=True):
        assert cpu.shape == cuda.shape and cuda.dtype == np.uint8
        diff = np.abs(cpu.astype(np.int16) - cuda.astype(np.int16))
        assert float((diff > 2).mean()) <= 1e-3, int(diff.max())


def test_nvjpeg_decodes_like_pillow_onto_the_gpu():
    from serving.runtime.imageio import decode_images

    datas = [
        jpeg(640, 480, seed=1),
        photo_paths()[0].read_bytes(),
        encode(synthetic_photo(64, 48), "PNG"),
    ]
    images = decode_images(datas, 10**8, torch.device("cuda", 0))
    assert [image.pixels_tensor().is_cuda for image in images] == [True, True, False]
    for data, image in zip(datas, images, strict=True):
        alone = decode_image(data)
        assert tuple(image.pixels.shape) == alone.pixels.shape
        diff = np.abs(image.pixels_tensor().cpu().numpy().astype(int) - alone.pixels.astype(int))
        assert diff.mean() < 1.0 and diff.max() <= 16, (diff.mean(), diff.max())  # IDCTs differ


def test_nvjpeg_encodes_what_pillow_reads_back():
    from serving.runtime.imageio import encode_images

    rgb = torch.from_numpy(np.asarray(synthetic_photo(4000, 3000, 2))).permute(2, 0, 1)
    rgb = rgb.contiguous().cuda()
    for _ in range(3):  # torchvision #8587: repeated large encodes once returned noise
        (data,) = encode_images([rgb], [None], ["jpeg"], [90])
        back = np.asarray(open_image(data)).astype(int)
        assert np.abs(back - rgb.permute(1, 2, 0).cpu().numpy().astype(int)).mean() < 4


def test_fuzzed_jpegs_through_nvjpeg_are_typed_and_leave_the_gpu_usable(model_dir):
    """Seeded mutations of a real photo go to nvJPEG in batches: each comes back a photo or
    a typed 4xx refusal, and the same process colorizes a good photo afterwards (a CUDA
    error would have poisoned the context)."""
    from serving.benchmark import colorize_batch
    from serving.runtime.errors import ColorizerError
    from serving.runtime.imageio import decode_images
    from tests.support.mutate import mutations

    seed_photo = photo_paths()[0].read_bytes()
    datas = list(mutations(seed_photo, count=400, seed=1))
    device = torch.device("cuda", 0)
    for start in range(0, len(datas), 32):
        for result in decode_images(datas[start : start + 32], 10**7, device):
            if isinstance(result, Exception):
                assert isinstance(result, ColorizerError) and result.http_status < 500, repr(result)
    pipeline = ColorizePipeline.load(model_dir / "model.pt", device=device)
    (out,) = colorize_batch(pipeline, [jpeg(320, 240)])
    assert open_image(out).size == (320, 240)
    torch.cuda.synchronize()


def test_batched_gpu_pixels_match_the_cpu_strips(model_dir):
    """The GPU's batched per-pixel path against the CPU's row strips, same fp32 network,
    on a batch that mixes gray, color and odd sizes."""
    datas = [p.read_bytes() for p in photo_paths()[:3]] + [jpeg(97, 61), jpeg(1200, 900, seed=3)]
    images = [decode_image(d) for d in datas]
    outputs = []
    for device in ("cpu", "cuda"):
        pipeline = ColorizePipeline.load(model_dir / "model.pt", device=device, precision="fp32")
        assert pipeline.batched_pixels == (device == "cuda")
        batch = pipeline.prepare(images)
        outputs.append([t.cpu() for t in pipeline.finish_images(batch, pipeline.infer(batch))])
    for cpu, cuda in zip(*outputs, strict=True):
        diff = (cpu.int() - cuda.int()).abs()
        assert cpu.shape == cuda.shape and float((diff > 2).float().mean()) <= 1e-3
