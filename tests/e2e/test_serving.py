"""End to end: a real TorchServe serving a .mar built here, real photos over REST and gRPC.

One server for the session (the ``server`` fixture of tests/conftest.py: compact preset,
untrained -- the checks are about serving, not color quality), on free ports with its own
state folder so a running dev server does not collide.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests
import yaml
from google.protobuf import empty_pb2
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import protos
from serving.cli import main as cli
from serving.client import ColorizerClient, ServiceError
from serving.launcher.server import LAUNCHER_DIR
from serving.runtime.constants import MODEL_NAME, REQUEST_RATE_PROMQL
from serving.runtime.errors import GRPC_CODE_FOR_HTTP
from tests.support.photos import encode, mean_abs_l_diff, open_image, photo_paths, synthetic_photo
from tests.support.prometheus import instant_query, log_tail, running_prometheus

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROTOCOLS = ("rest", "grpc")
STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")
ERROR_KEYS = {"error", "message", "request_id"}  # every refusal's JSON body


@pytest.fixture(scope="module")
def clients(server):
    rest = ColorizerClient(server.url)
    grpc_client = ColorizerClient(grpc_target=server.grpc)
    yield {"rest": rest, "grpc": grpc_client}
    rest.close()
    grpc_client.close()


@pytest.fixture(scope="module")
def stubs():
    return protos.load()


def test_grpc_ping_predictions_and_describe_model(server, stubs, photo):
    with grpc.insecure_channel(server.grpc) as channel:
        inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        health = json.loads(inference.Ping(empty_pb2.Empty()).health)
        assert health["status"] == "Healthy"
        request = stubs.inference_pb2.PredictionsRequest(
            model_name=MODEL_NAME, input={"data": photo, "format": b"png"}
        )
        prediction = inference.Predictions(request).prediction
        assert open_image(prediction).format == "PNG"
    with grpc.insecure_channel(server.grpc_management) as channel:
        management = stubs.management_pb2_grpc.ManagementAPIsServiceStub(channel)
        reply = management.DescribeModel(
            stubs.management_pb2.DescribeModelRequest(model_name=MODEL_NAME)
        )
    (described,) = json.loads(reply.msg)
    cpu_profile = yaml.safe_load((LAUNCHER_DIR / "model-config.yaml").read_text())["cpu"]
    assert described["modelName"] == MODEL_NAME
    assert described["batchSize"] == cpu_profile["batchSize"]
    assert [w["status"] for w in described["workers"]] == ["READY"] * described["minWorkers"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_real_photos_keep_size_luminance_and_format(clients, protocol):
    for path in photo_paths():
        data = path.read_bytes()
        result = clients[protocol].colorize(data)
        assert result.content_type == "image/jpeg", path.name
        assert open_image(result.data).size == open_image(data).size, path.name
        assert mean_abs_l_diff(data, result.data) < 1.0, path.name


def test_rest_content_type_header_and_options(server, photo):
    endpoint = f"{server.url}/predictions/{MODEL_NAME}"
    raw = requests.post(endpoint, data=photo, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert raw.status_code == 200 and raw.headers["Content-Type"] == "image/jpeg"
    multipart = requests.post(endpoint, files={"data": photo}, data={"format": "png"}, timeout=60)
    assert multipart.headers["Content-Type"] == "image/png"
    assert open_image(multipart.content).format == "PNG"
    accept = requests.post(
        endpoint,
        data=photo,
        headers={"Content-Type": "application/octet-stream", "Accept": "image/webp"},
        timeout=60,
    )
    assert accept.headers["Content-Type"] == "image/webp"
    query = requests.post(
        f"{server.url}/models/{MODEL_NAME}/invoke?format=webp&quality=70",
        data=photo,
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert query.status_code == 200 and query.headers["Content-Type"] == "image/webp"


def test_grpc_format_and_quality_keys(clients, photo):
    low = clients["grpc"].colorize(photo, "webp", 10)
    high = clients["grpc"].colorize(photo, "webp", 95)
    assert low.content_type == high.content_type == "image/webp"
    assert len(low.data) < len(high.data)


@pytest.fixture(scope="module")
def photo_12mp() -> bytes:
    """A 4000x3000 (12 MP) JPEG: a real photo scaled up."""
    img = Image.open(photo_paths()[-1]).convert("RGB").resize((4000, 3000), Image.BICUBIC)
    return encode(img, "JPEG", quality=90)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_12_megapixel_photo_round_trips(clients, photo_12mp, protocol):
    result = clients[protocol].colorize(photo_12mp)
    assert result.content_type == "image/jpeg"
    assert open_image(result.data).size == (4000, 3000)
    assert mean_abs_l_diff(photo_12mp, result.data) < 1.0


def test_mixed_size_concurrent_burst(clients):
    sizes = [(64, 48), (320, 213), (800, 600), (33, 17), (1024, 768), (513, 511), (240, 320)]
    jobs = [(PROTOCOLS[i % 2], sizes[i % len(sizes)], i) for i in range(16)]

    def one(job):
        protocol, (w, h), seed = job
        result = clients[protocol].colorize(encode(synthetic_photo(w, h, seed), "PNG"))
        return open_image(result.data).size, result.content_type

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, jobs))
    assert results == [((w, h), "image/png") for _, (w, h), _ in jobs]


@pytest.fixture(scope="module")
def bad_inputs(photo) -> dict[str, tuple[bytes, dict, int, str]]:
    """name -> (body, options, expected status, expected error kind)."""
    huge = encode(Image.new("L", (8000, 6000), 128), "PNG")  # 48 MP > the 40 MP cap
    return {
        "empty": (b"", {}, 400, "empty_input"),
        "text": (b"colorize me, please", {}, 400, "not_an_image"),
        "truncated": (photo[: len(photo) // 3], {}, 400, "corrupt_image"),
        "unsupported": (encode(synthetic_photo(32, 32), "PPM"), {}, 400, "unsupported_format"),
        "too_many_pixels": (huge, {}, 413, "image_too_large"),
        "bad_format": (photo, {"fmt": "gif"}, 400, "invalid_option"),
        "bad_quality": (photo, {"quality": 101}, 400, "invalid_option"),
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_inputs_get_status_and_json_and_the_next_request_works(
    clients, bad_inputs, photo, protocol
):
    client = clients[protocol]
    for name, (body, options, status, kind) in bad_inputs.items():
        with pytest.raises(ServiceError) as refused:
            client.colorize(body, **options)
        assert (refused.value.status, refused.value.kind) == (status, kind), name
        assert refused.value.message, name
        assert client.colorize(photo).content_type == "image/jpeg", f"after {name}"


def test_bad_input_bodies_on_the_wire(server, stubs, bad_inputs):
    endpoint = f"{server.url}/predictions/{MODEL_NAME}"
    for name, (body, options, status, kind) in bad_inputs.items():
        fields = {"format": options.get("fmt"), "quality": options.get("quality")}
        fields = {k: str(v) for k, v in fields.items() if v is not None}
        resp = requests.post(endpoint, files={"data": body}, data=fields, timeout=60)
        assert resp.status_code == status, name
        assert resp.headers["Content-Type"] == "application/json", name
        assert set(resp.json()) == ERROR_KEYS and resp.json()["error"] == kind, name
        assert resp.json()["request_id"] == resp.headers["X-Request-Id"], name  # TorchServe's
    # A plain stub generated from TorchServe's proto: a request refused alone ends with a
    # real status; its message is the JSON body (TorchServe appends a line of its own).
    limits = [("grpc.max_send_message_length", 100 << 20)]
    with grpc.insecure_channel(server.grpc, options=limits) as channel:
        inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        for name, (body, options, status, kind) in bad_inputs.items():
            inputs = {"data": body, "format": options.get("fmt"), "quality": options.get("quality")}
            inputs = {
                k: v if k == "data" else str(v).encode() for k, v in inputs.items() if v is not None
            }
            request = stubs.inference_pb2.PredictionsRequest(model_name=MODEL_NAME, input=inputs)
            with pytest.raises(grpc.RpcError) as refused:
                inference.Predictions(request, timeout=60)
            assert refused.value.code().name == GRPC_CODE_FOR_HTTP[status], name
            message = json.loads(refused.value.details().split("\n")[0])
            assert set(message) == ERROR_KEYS and message["error"] == kind, name


def test_grpc_bad_requests_batched_with_good_ones(server, stubs, photo):
    """What a plain gRPC stub sees for a bad photo sent while good ones are in flight.

    TorchServe 0.12 gives gRPC a status only for a failure of the whole batch: a bad
    request batched with good ones ends OK, its prediction the JSON error body (an image
    never starts with "{"); batched alone (or with equally bad gRPC ones) it ends
    INVALID_ARGUMENT. The good ones always succeed.
    """
    good = encode(synthetic_photo(64, 48), "JPEG")
    jobs = [b"junk" if i % 4 == 0 else good for i in range(48)]
    with grpc.insecure_channel(server.grpc) as channel:
        inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)

        def one(data: bytes) -> tuple[str, bytes]:
            request = stubs.inference_pb2.PredictionsRequest(
                model_name=MODEL_NAME, input={"data": data}
            )
            try:
                return "OK", inference.Predictions(request, timeout=120).prediction
            except grpc.RpcError as exc:
                return exc.code().name, exc.details().encode()

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(one, jobs))
    bad = [answer for data, answer in zip(jobs, answers, strict=True) if data == b"junk"]
    good_answers = [answer for data, answer in zip(jobs, answers, strict=True) if data == good]
    assert all(code == "OK" and not body.startswith(b"{") for code, body in good_answers)
    for code, body in bad:
        assert code in ("OK", "INVALID_ARGUMENT"), (code, body)
        assert json.loads(body.split(b"\n")[0])["error"] == "not_an_image"
    print(f"\nbad gRPC requests among good ones: {Counter(code for code, _ in bad)}")


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """The metrics endpoint parsed: (sample name, labels without Hostname) -> value."""
    text = requests.get(url, timeout=10).text
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if k.lower() != "hostname")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and wanted <= lbl)


def test_metrics_endpoint_moves_with_requests(server, clients, photo):
    watched = [("colorizer_stage_seconds_count", {"Stage": s}) for s in STAGES] + [
        ("colorizer_batch_size_count", {}),
        ("colorizer_input_megapixels_sum", {}),
        ("colorizer_errors_total", {"Kind": "not_an_image"}),
        ("ts_inference_requests_total", {"model_name": MODEL_NAME}),
        ("ts_inference_latency_microseconds_total", {"model_name": MODEL_NAME}),
        ("Requests4XX_total", {}),
    ]
    before = scrape(server.metrics)
    clients["rest"].colorize(photo)
    for protocol in PROTOCOLS:  # Requests4XX counts REST calls only
        with pytest.raises(ServiceError):
            clients[protocol].colorize(b"not an image")
    deadline = time.monotonic() + 15  # the frontend reads worker metrics asynchronously
    while True:
        after = scrape(server.metrics)
        still = [
            (name, labels)
            for name, labels in watched
            if _value(after, name, **labels) <= _value(before, name, **labels)
        ]
        if not still or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not still, f"metrics that did not move: {still}"


def test_prometheus_computes_the_autoscaling_request_rate(server, clients, photo, tmp_path):
    config = yaml.safe_load((LAUNCHER_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [server.metrics_target]}]
    stop_traffic = threading.Event()

    def traffic():
        while not stop_traffic.is_set():
            clients["rest"].colorize(photo)
            stop_traffic.wait(0.3)

    sender = threading.Thread(target=traffic)
    sender.start()
    rate = 0.0
    try:
        with running_prometheus(config, tmp_path) as api:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and rate <= 0:
                time.sleep(1)
                result = instant_query(api, REQUEST_RATE_PROMQL)
                rate = float(result[0]["value"][1]) if result else 0.0
    finally:
        stop_traffic.set()
        sender.join()
    assert rate > 0, log_tail(tmp_path)


def test_colorize_cli_reports_failures_and_writes_the_rest(server, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in photo_paths()[:3]:
        shutil.copy(path, inputs / path.name)
    (inputs / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    assert cli(["colorize", str(inputs), "-o", str(out), "--url", server.url]) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in photo_paths()[:3])
    assert "FAILED" in capsys.readouterr().err
    out_grpc = tmp_path / "out-grpc"
    argv = ["colorize", *map(str, photo_paths()[:2]), "-o", str(out_grpc), "--grpc", server.grpc]
    assert cli([*argv, "--format", "png", "--concurrency", "2"]) == 0
    assert sorted(p.name for p in out_grpc.iterdir()) == sorted(
        p.with_suffix(".png").name for p in photo_paths()[:2]
    )


def test_bench_reports_both_protocols(server, capsys):
    argv = ["bench", "--url", server.url, "--grpc", server.grpc, "--size", "128"]
    assert cli([*argv, "--requests", "3", "--concurrency", "2"]) == 0
    assert "gRPC/REST" in capsys.readouterr().out


def test_handler_code_comes_from_the_archive(server):
    log = (server.state_dir / "logs" / "model_log.log").read_text()
    ready = [line for line in log.splitlines() if "colorizer handler ready" in line]
    assert ready, "the handler never logged that it was ready"
    served_from = Path(ready[-1].split("serving=")[1].strip())
    assert served_from.is_relative_to(server.state_dir / "tmp"), served_from
    assert "device=cpu" in ready[-1] or "device=cuda" in ready[-1]


def test_serve_refuses_a_second_server_on_the_same_state(server, capsys):
    assert cli(["serve", "--model-store", "x", "--state-dir", str(server.state_dir)]) == 1
    assert "already running" in capsys.readouterr().err
