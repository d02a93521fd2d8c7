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
