"""End to end, against the session's real TorchServe (tests/conftest.py ``server``):
request ids come back and reach the worker's log, and a request whose caller's deadline
passed never reaches the network, over REST and gRPC; an impatient burst accounts for
every caller."""

from __future__ import annotations

import json
import time

import grpc
import pytest
import requests

import protos
from serving.client import ColorizerClient, ServiceError
from serving.client.bench import burst, handler_counts
from serving.runtime.constants import EXPIRED_RETRY_AFTER_S, MODEL_NAME
from serving.runtime.request_meta import deadline_header_value
from tests.e2e.test_serving import _value, scrape

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OCTETS = {"Content-Type": "application/octet-stream"}


def post(server, photo: bytes, **headers: str) -> requests.Response:
    url = f"{server.url}/predictions/{MODEL_NAME}"
    return requests.post(url, data=photo, headers={**OCTETS, **headers}, timeout=60)


def worker_log_lines(server, needle: str, timeout: float = 10.0) -> list[str]:
    """Lines of the workers' log (model_log.log) that contain ``needle``; waits for one."""
    until = time.monotonic() + timeout
    while True:
        text = "".join(
            p.read_text(errors="replace") for p in (server.state_dir / "logs").glob("model_log*")
        )
        lines = [line for line in text.splitlines() if needle in line]
        if lines or time.monotonic() > until:
            return lines
        time.sleep(0.3)


def test_a_callers_id_comes_back_and_names_the_log_line(server, photo):
    resp = post(server, photo, **{"X-Request-Id": "e2e-photo-1", "traceparent": TRACEPARENT})
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/jpeg"
    assert resp.headers["X-Request-Id"] == "e2e-photo-1"  # the front restores it
    assert resp.headers["X-Client-Request-Id"] == "e2e-photo-1"
    assert resp.headers["traceparent"] == TRACEPARENT
    server_id = resp.headers["X-Server-Request-Id"]  # TorchServe's own
    assert server_id != "e2e-photo-1"
    (line,) = worker_log_lines(server, "request_id=e2e-photo-1 ")
    assert f"server_id={server_id} " in line and "trace_id=4bf92f3577b34da6" in line
    assert all(f"{stage}=" in line for stage in ("decode", "inference", "encode"))


def test_an_error_names_the_request_id(server):
    resp = post(server, b"junk", **{"X-Request-Id": "e2e-junk-1"})
    assert resp.status_code == 400 and resp.json()["request_id"] == "e2e-junk-1"
    assert resp.headers["X-Request-Id"] == "e2e-junk-1"
    anonymous = post(server, b"junk")
    assert anonymous.json()["request_id"] == anonymous.headers["X-Request-Id"]
    assert anonymous.headers["X-Request-Id"] == anonymous.headers["X-Server-Request-Id"]


def test_the_client_names_the_id_on_failure(server):
    with ColorizerClient(server.url) as client, pytest.raises(ServiceError) as failed:
        client.colorize(b"junk", request_id="e2e-client-1")
    assert "(request id e2e-client-1, server id " in str(failed.value)


def wait_for(server, name: str, labels: dict, at_least: float, timeout: float = 20.0) -> dict:
    """Scrapes until ``name{labels}`` reaches ``at_least`` (worker metrics arrive late)."""
    until = time.monotonic() + timeout
    while True:
        samples = scrape(server.metrics)
        if _value(samples, name, **labels) >= at_least or time.monotonic() > until:
            return samples


def test_an_expired_request_is_refused_and_never_reaches_the_network(server, photo):
    expired_kind = {"Kind": "deadline_exceeded"}
    inference = {"Stage": "inference"}
    before = scrape(server.metrics)
    past = deadline_header_value(time.time() - 0.5)
    for i in range(3):
        resp = post(server, photo, **{"X-Request-Id": f"late-{i}", "X-Request-Deadline": past})
        assert resp.status_code == 504, resp.text
        assert resp.headers["Retry-After"] == str(EXPIRED_RETRY_AFTER_S)
        body = resp.json()
        assert body["error"] == "deadline_exceeded" and body["request_id"] == f"late-{i}"
    stubs = protos.load()
    with grpc.insecure_channel(server.grpc) as channel:
        stub = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        inputs = {"data": photo, "x-request-id": b"late-grpc", "x-request-deadline": past.encode()}
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predictions(
                stubs.inference_pb2.PredictionsRequest(model_name=MODEL_NAME, input=inputs)
            )
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert json.loads(refused.value.details().split("\n")[0])["request_id"] == "late-grpc"
    wanted = _value(before, "colorizer_errors_total", **expired_kind) + 4
    after = wait_for(server, "colorizer_errors_total", expired_kind, wanted)
    assert _value(after, "colorizer_errors_total", **expired_kind) == wanted
    ran = "colorizer_stage_seconds_count"
    assert _value(after, ran, **inference) == _value(before, ran, **inference)


def test_a_burst_of_impatient_callers_is_fully_accounted_for(server, photo):
    """Every caller gets its photo, a refusal or its own timeout, and the photos the
    network ran for are exactly those the handler did not skip."""
    inference_before = _value(
        scrape(server.metrics), "colorizer_stage_seconds_count", Stage="inference"
    )
    handed_before, skipped_before = handler_counts(server.metrics)
    result = burst(server.url, server.metrics, photo, callers=40, deadline_s=1.0)
    assert result.other == 0
    assert result.in_time + result.refused + result.expired + result.gave_up == 40
    handed, skipped = handler_counts(server.metrics)
    assert skipped - skipped_before == result.expired  # skipped ones all told their caller
    ran = _value(scrape(server.metrics), "colorizer_stage_seconds_count", Stage="inference")
    assert ran - inference_before == result.colorized == (handed - handed_before) - result.expired
    assert result.colorized >= result.in_time
