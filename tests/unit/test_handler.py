"""The TorchServe handler in-process (no Java): inside TorchServe's own ``Service`` and
``Context``, fed batches shaped like the frontend's, with the real metrics cache reading
serving/launcher/metrics.yaml."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serving.runtime.constants import MODEL_NAME, STAGES
from serving.runtime.device import worker_device
from tests.support.handler import Harness, grpc_request, param, request
from tests.support.models import export_test_model
from tests.support.photos import encode, mean_abs_l_diff, open_image, photo_paths, synthetic_photo


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("handler-model")
    export_test_model(folder / "model.pt", "tiny")
    return folder


@pytest.fixture(scope="module")
def harness(model_dir) -> Harness:
    return Harness(model_dir)


@pytest.fixture(scope="module")
def photo() -> bytes:
    return photo_paths()[0].read_bytes()


def test_initialize_picks_cpu_and_logs_dtype(model_dir, caplog):
    with caplog.at_level(logging.INFO):
        handler = Harness(model_dir).handler
    assert handler.initialized and handler.pipeline.device.type == "cpu"
    ready = [r.getMessage() for r in caplog.records if "handler ready" in r.getMessage()]
    assert ready and "device=cpu" in ready[0] and "dtype=" in ready[0]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_a_profile_that_needs_a_gpu_refuses_to_start_without_one(model_dir, caplog):
    """The gpu archive on a CPU node: one clear CANNOT_START line, not a CPU run at batch 64."""
    from serving.runtime.constants import CANNOT_START

    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        Harness(model_dir, {"device": "cuda"})
    (line,) = [r.getMessage() for r in caplog.records if CANNOT_START in r.getMessage()]
    assert "colorizer-cpu.mar" in line


def test_threads_setting_from_model_config(model_dir, caplog):
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO):
            Harness(model_dir, {"threads": 1})
        assert torch.get_num_threads() == 1
        assert any("threads=1" in r.getMessage() for r in caplog.records)
    finally:
        torch.set_num_threads(before)


def test_the_worker_device_follows_torchserve_gpu_id():
    assert worker_device(None) == torch.device("cpu")
    expected = torch.device("cuda", 1) if torch.cuda.device_count() > 1 else None
    if torch.cuda.is_available():
        assert worker_device(0) == torch.device("cuda", 0)
        if expected is not None:
            assert worker_device("1") == expected
    else:  # given a GPU torch cannot use: the CPU, with a warning
        assert worker_device(0) == torch.device("cpu")


def test_photo_keeps_size_format_and_luminance(harness, photo):
    (resp,) = harness.run(request(param("body", photo, "image/jpeg")))
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    assert open_image(resp.body).size == open_image(photo).size
    (lossless,) = harness.run(request(param("data", photo), param("format", b"png")))
    assert lossless.content_type == "image/png"
    assert mean_abs_l_diff(photo, lossless.body) < 1.0


def test_a_bad_request_fails_only_itself(harness, photo):
    png = encode(synthetic_photo(90, 60), "PNG")
    resps = harness.run(
        request(param("body", photo, "image/jpeg")),
        request(param("body", b"not an image at all", "application/octet-stream")),
        request(param("body", b"", "image/jpeg")),
        request(param("body", photo[: len(photo) // 2], "image/jpeg")),
        request(param("data", png)),
    )
    assert [r.status for r in resps] == [200, 400, 400, 400, 200]
    kinds = [r.json()["error"] for r in resps[1:4]]
    assert kinds == ["not_an_image", "empty_input", "corrupt_image"]
    assert all(r.json()["message"] for r in resps[1:4])
    assert open_image(resps[4].body).size == (90, 60) and resps[4].content_type == "image/png"
    (again,) = harness.run(request(param("body", photo, "image/jpeg")))
    assert again.status == 200


@pytest.mark.parametrize(
    ("params", "headers", "expected"),
    [
        ([param("format", b"webp")], {}, "image/webp"),  # query parameter / gRPC key (bytes)
        ([param("format", "PNG", "text/plain")], {}, "image/png"),  # multipart text field
        ([], {"Accept": "image/webp"}, "image/webp"),
        ([], {"accept": "text/html, image/png;q=0.9"}, "image/png"),
        ([param("format", b"jpeg")], {"Accept": "image/png"}, "image/jpeg"),  # option wins
        ([], {}, "image/jpeg"),  # the input's own format
    ],
)
def test_output_format_option_then_accept_then_input(harness, photo, params, headers, expected):
    (resp,) = harness.run(request(param("data", photo), *params, headers=headers))
    assert resp.status == 200 and resp.content_type == expected
    assert open_image(resp.body).format == expected.split("/")[1].upper()


def test_input_formats_without_an_output_twin_fall_back_to_png(harness):
    img = synthetic_photo(40, 30)
    for fmt in ("BMP", "TIFF", "GIF"):
        (resp,) = harness.run(request(param("data", encode(img, fmt))))
        assert (resp.status, resp.content_type) == (200, "image/png"), fmt


def test_quality_changes_lossy_size(harness, photo):
    low, high = harness.run(
        request(param("data", photo), param("quality", b"10")),
        request(param("data", photo), param("quality", b"95")),
    )
    assert low.status == high.status == 200 and len(low.body) < len(high.body)


@pytest.mark.parametrize(
    ("params", "kind"),
    [
        ([param("format", b"gif")], "invalid_option"),
        ([param("quality", b"0")], "invalid_option"),
        ([param("quality", b"high")], "invalid_option"),
    ],
)
def test_bad_options_are_400(harness, photo, params, kind):
    (resp,) = harness.run(request(param("data", photo), *params))
    assert resp.status == 400 and resp.json()["error"] == kind


def test_text_and_json_bodies_are_not_images(harness):
    resps = harness.run(
        request(param("body", "hello", "text/plain")),  # TorchServe decodes text/* to str
        request(param("body", {"image": "x"}, "application/json")),  # and parses JSON
        request(param("file", b"\xff\xd8")),  # no 'data' or 'body' at all
    )
    assert [r.status for r in resps] == [400, 400, 400]
    assert [r.json()["error"] for r in resps] == ["not_an_image", "not_an_image", "empty_input"]


def test_unsupported_format_is_400(harness):
    (resp,) = harness.run(request(param("data", encode(synthetic_photo(16, 16), "PPM"))))
    assert resp.status == 400 and resp.json()["error"] == "unsupported_format"


def test_pixel_cap_from_model_config_is_413(model_dir, photo):
    harness = Harness(model_dir, {"max_pixels": 10_000})
    small = encode(synthetic_photo(100, 100), "PNG")
    big, ok = harness.run(request(param("data", photo)), request(param("data", small)))
    assert big.status == 413 and big.json()["error"] == "image_too_large"
    assert ok.status == 200


def test_alpha_is_kept(harness):
    rgba = synthetic_photo(64, 48).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    rgba.putalpha(Image.fromarray(alpha))
    (resp,) = harness.run(request(param("data", encode(rgba, "PNG"))))
    out = open_image(resp.body)
    assert resp.content_type == "image/png" and out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], alpha)


def test_inference_failure_fails_its_batch_not_the_worker(model_dir, photo, monkeypatch):
    harness = Harness(model_dir)

    def broken(batch):
        raise RuntimeError("simulated out of memory")

    monkeypatch.setattr(harness.handler.pipeline, "infer", broken)
    resps = harness.run(request(param("data", photo)), request(param("data", b"junk")))
    assert [r.status for r in resps] == [500, 400]
    assert resps[0].json() == {
        "error": "internal",
        "message": "internal error while colorizing; see server logs",
        "request_id": "r0",
    }
    monkeypatch.undo()
    (resp,) = harness.run(request(param("data", photo)))
    assert resp.status == 200


@pytest.mark.parametrize(
    ("image", "status", "kind"),
    [(b"junk", 400, "not_an_image"), (b"", 400, "empty_input"), ("big", 413, "image_too_large")],
)
def test_a_lone_failed_grpc_request_fails_its_batch_with_its_status(
    model_dir, photo, image, status, kind
):
    """TorchServe turns a batch failure's code into the gRPC status (400 INVALID_ARGUMENT,
    413 RESOURCE_EXHAUSTED); the message is the JSON body REST callers get."""
    harness = Harness(model_dir, {"max_pixels": 10_000})
    image = photo if image == "big" else image
    code, message = harness.predict(grpc_request(param("data", image)))
    assert code == status and json.loads(message)["error"] == kind
    assert json.loads(message)["message"]


def test_grpc_inference_failure_is_a_500_batch_failure(model_dir, photo, monkeypatch):
    harness = Harness(model_dir)
    monkeypatch.setattr(harness.handler.pipeline, "infer", lambda batch: 1 / 0)
    code, message = harness.predict(grpc_request(param("data", photo)))
    assert (code, json.loads(message)["error"]) == (500, "internal")


def test_grpc_batches_fail_whole_only_when_every_request_failed_alike(harness, photo):
    junk = grpc_request(param("data", b"junk"))
    code, message = harness.predict(junk, junk)  # the same answer for each caller
    assert code == 400 and json.loads(message)["error"] == "not_an_image"
    # A different error each, a success, or a REST caller in the batch: per request
    # (a bad gRPC request then completes OK with the JSON body as its prediction).
    for batch in (
        [junk, grpc_request(param("data", b""))],
        [junk, grpc_request(param("data", photo))],
        [junk, request(param("body", b"junk", "application/octet-stream"))],
    ):
        responses = harness.run(*batch)
        assert responses[0].status == 400 and responses[0].json()["error"] == "not_an_image"
        assert [r.status for r in responses[1:]] in ([400], [200])


def test_a_lone_bad_rest_request_never_fails_the_batch(harness):
    (resp,) = harness.run(request(param("body", b"junk", "application/octet-stream")))
    assert resp.status == 400 and resp.json()["error"] == "not_an_image"


def _metric_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]")]


def test_metrics_match_their_declaration(harness, photo, caplog):
    with caplog.at_level(logging.INFO, logger="ts.metrics"):
        harness.run(request(param("data", photo)), request(param("data", b"junk")))
    lines = _metric_lines(caplog)
    assert not [line for line in lines if "Failed" in line], lines
    for stage in STAGES:
        assert any(
            line.startswith("[METRICS]colorizer_stage_seconds.")
            and f"|#Stage:{stage},ModelName:{MODEL_NAME},Level:Model|" in line
            for line in lines
        ), stage
    batch = [line for line in lines if line.startswith("[METRICS]colorizer_batch_size.")]
    assert batch and batch[0].split(":", 1)[1].startswith("2|")
    megapixels = [line for line in lines if line.startswith("[METRICS]colorizer_input_megapixels")]
    assert len(megapixels) == 1
    errors = [line for line in lines if line.startswith("[METRICS]colorizer_errors_total.")]
    assert len(errors) == 1 and "|#Kind:not_an_image,ModelName:" in errors[0]
