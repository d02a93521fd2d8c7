"""Request ids, trace context and deadlines: parsing what a caller sends
(serving.runtime.request_meta), and the handler's use of them, in-process inside
TorchServe's own Service and Context (tests/support/handler.py)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from serving.runtime.constants import EXPIRED_RETRY_AFTER_S, STAGES
from serving.runtime.errors import InvalidOption
from serving.runtime.request_meta import (
    RequestMeta,
    deadline_header_value,
    new_request_id,
    parse_deadline,
    parse_request_id,
    parse_traceparent,
)
from tests.support.handler import Harness, grpc_request, param, request
from tests.support.models import export_test_model
from tests.support.photos import photo_paths

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("value", ["abc", "req-42/retry:1", "x" * 128, "~!#"])
def test_request_ids_that_are_one_printable_word_come_through_unchanged(value):
    assert parse_request_id(value) == value


@pytest.mark.parametrize("value", ["has space", "x" * 129, "tab\there", "ümlaut", "a\nb"])
def test_request_ids_that_cannot_be_echoed_or_logged_as_one_word_are_refused(value):
    with pytest.raises(InvalidOption, match="X-Request-Id must be 1-128 printable ASCII"):
        parse_request_id(value)


def test_no_request_id_is_none_and_a_new_one_is_32_hex_digits():
    assert parse_request_id(None) is None and parse_request_id("") is None
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_valid_traceparent_is_kept_and_its_trace_id_read():
    assert parse_traceparent(f" {TRACEPARENT} ") == TRACEPARENT
    assert RequestMeta("r", TRACEPARENT).trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert RequestMeta("r").trace_id is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        TRACEPARENT.upper(),  # the spec's hex is lower case
        "ff" + TRACEPARENT[2:],  # version ff is forbidden
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # all-zero parent id
        TRACEPARENT + "-extra",
    ],
)
def test_a_malformed_traceparent_is_ignored_not_an_error(value):
    assert parse_traceparent(value) is None


def test_deadlines_are_unix_milliseconds_and_round_trip():
    now = time.time()
    assert parse_deadline(deadline_header_value(now)) == pytest.approx(now, abs=0.001)
    assert parse_deadline(None) is None and parse_deadline(" ") is None


@pytest.mark.parametrize("value", ["soon", "1.5e12", "-1", "1767225600", "99999999999999"])
def test_a_deadline_that_is_not_unix_milliseconds_is_refused(value):
    with pytest.raises(InvalidOption, match="X-Request-Deadline must be Unix time"):
        parse_deadline(value)


# ---- the handler ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Harness:
    folder: Path = tmp_path_factory.mktemp("meta-model")
    export_test_model(folder / "model.pt", "tiny")
    return Harness(folder)


@pytest.fixture(scope="module")
def photo() -> bytes:
    return photo_paths()[0].read_bytes()


def ms_from_now(seconds: float) -> str:
    return deadline_header_value(time.time() + seconds)


def test_a_callers_request_id_and_traceparent_come_back_unchanged(harness, photo):
    headers = {"X-Request-Id": "caller-7", "traceparent": TRACEPARENT}
    ok, bad = harness.run(
        request(param("data", photo), headers=headers),
        request(param("data", b"junk"), headers={"X-Request-Id": "caller-8"}),
    )
    assert ok.status == 200 and ok.headers["X-Client-Request-Id"] == "caller-7"
    assert ok.headers["traceparent"] == TRACEPARENT
    assert bad.status == 400 and bad.headers["X-Client-Request-Id"] == "caller-8"
    assert bad.json()["request_id"] == "caller-8" and "traceparent" not in bad.headers


def test_without_an_id_a_request_goes_by_torchserves_own(harness):
    (resp,) = harness.run(request(param("data", b"junk")))
    assert resp.json()["request_id"] == "r0"  # the requestId TorchServe gave the request
    assert "X-Client-Request-Id" not in resp.headers  # TorchServe sets X-Request-Id itself


def test_an_unusable_id_or_deadline_fails_the_request_under_torchserves_id(harness, photo):
    spaced = request(param("data", photo), headers={"X-Request-Id": "two words"})
    vague = request(param("data", photo), headers={"X-Request-Deadline": "soon"})
    for resp in harness.run(spaced, vague):
        assert resp.status == 400 and resp.json()["error"] == "invalid_option"
    assert [r.json()["request_id"] for r in harness.run(spaced, vague)] == ["r0", "r1"]


def test_an_expired_request_gets_504_and_never_reaches_the_network(harness, photo, monkeypatch):
    calls = []
    real_infer = harness.handler.pipeline.infer
    monkeypatch.setattr(
        harness.handler.pipeline,
        "infer",
        lambda batch: calls.append(len(batch.lightness)) or real_infer(batch),
    )
    late = {"X-Request-Id": "late", "X-Request-Deadline": ms_from_now(-0.5)}
    fresh = {"X-Request-Id": "fresh", "X-Request-Deadline": ms_from_now(60)}
    expired, served = harness.run(
        request(param("data", photo), headers=late), request(param("data", photo), headers=fresh)
    )
    assert expired.status == 504 and expired.headers["Retry-After"] == str(EXPIRED_RETRY_AFTER_S)
    body = expired.json()
    assert body["error"] == "deadline_exceeded" and body["request_id"] == "late"
    assert "before its turn" in body["message"]
    assert served.status == 200 and "Retry-After" not in served.headers
    assert calls == [1], "only the live photo ran the network"


def test_a_deadline_nearer_than_a_batch_takes_is_skipped_too(harness, photo, monkeypatch):
    monkeypatch.setattr(harness.handler, "batch_seconds", 5.0)
    headers = {"X-Request-Deadline": ms_from_now(2.0)}
    (resp,) = harness.run(request(param("data", photo), headers=headers))
    assert resp.status == 504 and "a batch takes about 5.000 s" in resp.json()["message"]


def test_the_running_batch_time_follows_the_batches_that_ran(harness, photo, monkeypatch):
    monkeypatch.setattr(harness.handler, "batch_seconds", 100.0)
    harness.run(request(param("data", photo)))
    assert 0 < harness.handler.batch_seconds < 100.0  # moved toward what a batch took
    before = harness.handler.batch_seconds
    harness.run(request(param("data", photo), headers={"X-Request-Deadline": ms_from_now(-1)}))
    assert harness.handler.batch_seconds == before  # no network ran: nothing learned


def test_grpc_callers_send_metadata_as_input_keys(harness, photo):
    meta = (
        param("x-request-id", b"grpc-1"),
        param("x-request-deadline", ms_from_now(-1).encode()),
    )
    code, message = harness.predict(grpc_request(param("data", photo), *meta))
    body = json.loads(message)  # a lone failed gRPC request fails its batch: a gRPC status
    assert code == 504 and body["error"] == "deadline_exceeded"
    assert body["request_id"] == "grpc-1"


def test_a_grpc_batch_failing_alike_names_every_callers_id(harness):
    junk = [
        grpc_request(param("data", b"junk"), param("x-request-id", f"g{i}".encode()))
        for i in range(2)
    ]
    code, message = harness.predict(*junk)
    body = json.loads(message)
    assert code == 400 and body["request_ids"] == ["g0", "g1"] and "request_id" not in body


def test_each_request_logs_its_id_with_every_stage(harness, photo, caplog):
    with caplog.at_level(logging.INFO, logger="serving.runtime.service"):
        harness.run(
            request(
                param("data", photo),
                headers={"X-Request-Id": "logged-1", "traceparent": TRACEPARENT},
            )
        )
    lines = [r.getMessage() for r in caplog.records if "request_id=logged-1" in r.getMessage()]
    assert len(lines) == 1
    assert "server_id=r0" in lines[0] and "status=200" in lines[0]
    assert "trace_id=4bf92f3577b34da6a3ce929d0e0e4736" in lines[0]
    assert all(f"{stage}=" in lines[0] for stage in STAGES)
