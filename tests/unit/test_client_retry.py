"""The client's retries: which failures each transport retries, backoff, Retry-After, deadline.

Fast: a fake clock for the policy, and in-process HTTP / gRPC servers that answer the way
TorchServe 0.12 does (messages and codes read from a real server, see tests/e2e).
"""

from __future__ import annotations

import json
import random
import threading
from concurrent import futures
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

import protos
from serving.client import ColorizerClient, RetryPolicy, ServiceError
from serving.client.grpc_transport import error_from_rpc
from serving.client.rest import retry_after_s
from serving.client.retry import call_with_retries
from tests.support.photos import encode, synthetic_photo

GRPC_CLOCK_SLACK_S = 0.25

PNG = encode(synthetic_photo(8, 8), "PNG")
NOT_AN_IMAGE = json.dumps({"error": "not_an_image", "message": "the body is not an image"})
TOO_LARGE = json.dumps({"error": "image_too_large", "message": "48.0 MP; at most 40.0 MP"})
TS_SUFFIX = "\norg.pytorch.serve.http.InternalServerException"  # what TorchServe appends
QUEUE_FULL = 'Model "colorizer" has no worker to serve inference request. Please use scale'


class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def flaky(failures: list[ServiceError], result: str = "ok"):
    """A call that raises ``failures`` in turn, then returns ``result``; records its budgets."""
    budgets: list[float] = []

    def call(left: float) -> str:
        budgets.append(left)
        if len(budgets) <= len(failures):
            raise failures[len(budgets) - 1]
        return result

    return call, budgets


def busy(retry_after: float | None = None) -> ServiceError:
    return ServiceError(503, "queue_full", "busy", retryable=True, retry_after=retry_after)


def test_retries_transient_failures_with_growing_jittered_waits_within_the_deadline():
    fake = FakeTime()
    call, budgets = flaky([busy() for _ in range(4)])
    policy = RetryPolicy(attempts=10, backoff_s=0.1, max_backoff_s=0.4)
    result = call_with_retries(
        call, 30.0, policy, clock=fake.clock, sleep=fake.sleep, rng=random.Random(0)
    )
    assert result == "ok" and len(budgets) == 5
    for n, wait in enumerate(fake.sleeps, start=1):  # [0.5, 1] x min(cap, 0.1 * 2**(n-1))
        ceiling = min(0.4, 0.1 * 2 ** (n - 1))
        assert 0.5 * ceiling <= wait <= ceiling
    assert budgets[0] == 30.0 and budgets[-1] == pytest.approx(30.0 - sum(fake.sleeps))


def test_refusals_are_never_retried():
    for error in (ServiceError(400, "not_an_image", "x"), ServiceError(500, "internal", "x")):
        fake = FakeTime()
        call, budgets = flaky([error])
        with pytest.raises(ServiceError) as raised:
            call_with_retries(call, 30.0, RetryPolicy(), clock=fake.clock, sleep=fake.sleep)
        assert raised.value is error and len(budgets) == 1 and fake.sleeps == []


def test_without_an_attempt_bound_the_deadline_ends_the_retries():
    fake = FakeTime()
    call, budgets = flaky([busy() for _ in range(1000)])
    with pytest.raises(ServiceError) as raised:
        call_with_retries(call, 60.0, RetryPolicy(), clock=fake.clock, sleep=fake.sleep)
    assert raised.value.kind == "queue_full" and 15 < len(budgets) < 60
    assert fake.now < 60.0 and all(wait <= 4.0 for wait in fake.sleeps)


def test_retry_after_is_honoured_and_the_deadline_is_kept():
    fake = FakeTime()
    call, _ = flaky([busy(retry_after=2.0)])
    call_with_retries(call, 30.0, RetryPolicy(), clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == [2.0]
    fake = FakeTime()  # a wait that would end past the deadline: give up now, say why
    call, budgets = flaky([busy(retry_after=60.0)])
    with pytest.raises(ServiceError) as raised:
        call_with_retries(call, 30.0, RetryPolicy(), clock=fake.clock, sleep=fake.sleep)
    assert raised.value.kind == "queue_full" and len(budgets) == 1 and fake.sleeps == []


def test_attempts_bound_the_tries():
    fake = FakeTime()
    call, budgets = flaky([busy() for _ in range(10)])
    with pytest.raises(ServiceError):
        call_with_retries(call, 1e6, RetryPolicy(attempts=3), clock=fake.clock, sleep=fake.sleep)
    assert len(budgets) == 3


def test_retry_after_header_forms():
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("3") == 3.0
    import time

    assert 8 <= retry_after_s(formatdate(time.time() + 10, usegmt=True)) <= 10


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "status", "kind", "retryable"),
    [
        ("INVALID_ARGUMENT", NOT_AN_IMAGE + TS_SUFFIX, 400, "not_an_image", False),
        ("RESOURCE_EXHAUSTED", TOO_LARGE + TS_SUFFIX, 413, "image_too_large", False),
        ("RESOURCE_EXHAUSTED", "Worker died." + TS_SUFFIX, 507, "worker_died", True),  # kill -9
        ("INTERNAL", "Worker died." + TS_SUFFIX, 507, "worker_died", True),
        ("INTERNAL", QUEUE_FULL, 503, "queue_full", True),
        ("UNAVAILABLE", "GOAWAY received; max_age", 503, "grpc_unavailable", True),
        ("INTERNAL", "something else", 500, "grpc_internal", False),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", 504, "grpc_deadline_exceeded", False),
    ],
)
def test_grpc_statuses_of_torchserve(code, details, status, kind, retryable):
    error = error_from_rpc(FakeRpcError(getattr(grpc.StatusCode, code), details))
    assert (error.status, error.kind, error.retryable) == (status, kind, retryable)


class Script:
    """Answers to serve in turn, then a PNG; counts calls. Shared by both fake servers."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            self.calls += 1
            return self.answers.pop(0) if self.answers else None


@pytest.fixture
def rest_server():
    """``(url, script)``: an HTTP server that answers POSTs from ``script.answers``."""
    script = Script([])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            answer = script.next() or (200, {"Content-Type": "image/png"}, PNG)
            status, headers, body = answer
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


def ts_error(status: int, kind: str, message: str) -> bytes:
    return json.dumps({"code": status, "type": kind, "message": message}).encode()


def test_rest_retries_503_and_507_honouring_retry_after(rest_server):
    url, script = rest_server
    json_type = {"Content-Type": "application/json"}
    script.answers = [
        (503, {**json_type, "Retry-After": "0"}, ts_error(503, "ServiceUnavailableException", "")),
        (507, json_type, ts_error(507, "InternalServerException", "Worker died.")),
    ]
    with ColorizerClient(url, timeout=10) as client:
        assert client.colorize(b"\xff\xd8").content_type == "image/png"
    assert script.calls == 3 and client.retries == 2


def test_rest_500_is_retried_only_when_torchserve_says_the_worker_died(rest_server):
    url, script = rest_server
    json_type = {"Content-Type": "application/json"}
    internal = json.dumps({"error": "internal", "message": "see server logs"}).encode()
    script.answers = [
        (500, json_type, ts_error(500, "InternalServerException", "Worker died.")),
        (500, json_type, internal),
    ]
    with ColorizerClient(url, timeout=10) as client, pytest.raises(ServiceError) as failed:
        client.colorize(b"\xff\xd8")
    assert (failed.value.status, failed.value.kind, script.calls) == (500, "internal", 2)


def test_rest_4xx_is_never_retried(rest_server):
    url, script = rest_server
    script.answers = [(400, {"Content-Type": "application/json"}, NOT_AN_IMAGE.encode())] * 3
    with ColorizerClient(url, timeout=10) as client, pytest.raises(ServiceError) as refused:
        client.colorize(b"hello")
    assert (refused.value.status, refused.value.kind, script.calls) == (400, "not_an_image", 1)


@pytest.fixture
def grpc_server():
    """``(target, script, deadlines)``: an in-process gRPC server answering from ``script``."""
    stubs = protos.load()
    script = Script([])
    deadlines: list[float] = []

    class Inference(stubs.inference_pb2_grpc.InferenceAPIsServiceServicer):
        def Predictions(self, request, context):
            deadlines.append(context.time_remaining())
            answer = script.next()
            if answer is not None:
                context.abort(*answer)
            return stubs.inference_pb2.PredictionResponse(prediction=PNG)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    stubs.inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(Inference(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", script, deadlines
    server.stop(None)


def test_grpc_retries_worker_death_and_full_queue_within_the_deadline(grpc_server):
    target, script, deadlines = grpc_server
    script.answers = [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Worker died." + TS_SUFFIX),
        (grpc.StatusCode.INTERNAL, QUEUE_FULL),
        (grpc.StatusCode.UNAVAILABLE, "connection aged out"),
    ]
    with ColorizerClient(grpc_target=target, timeout=10) as client:
        assert client.colorize(b"\xff\xd8" + bytes(100_000)).content_type == "image/png"
    assert script.calls == 4 and client.retries == 3
    # each try's gRPC deadline is what is left of the call's: the waits (>= 0.35 s) came off.
    # The server rebuilds the deadline from the grpc-timeout header on its own clock: on a
    # 2-core VM it once read 10.098 s of a 10 s call, so allow a clock's slack above 10.
    assert all(0 < d <= 10 + GRPC_CLOCK_SLACK_S for d in deadlines)
    assert deadlines[-1] < deadlines[0] - 0.3


def test_grpc_refusals_are_typed_and_not_retried(grpc_server):
    target, script, _ = grpc_server
    script.answers = [(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_LARGE + TS_SUFFIX)] * 3
    with ColorizerClient(grpc_target=target, timeout=10) as client:
        with pytest.raises(ServiceError) as refused:
            client.colorize(b"\xff\xd8")
    assert (refused.value.status, refused.value.kind, script.calls) == (413, "image_too_large", 1)
