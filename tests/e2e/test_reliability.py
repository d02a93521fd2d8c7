"""Reliability against a real TorchServe on loopback: load, overload, kill -9, SIGTERM, memory.

One server for the module (tests/support/torchserve.py), serving the tiny test network
(the checks are about serving, not color, and a cheap network keeps the suite within a
few minutes on 2 cores). The
tests run in file order and share it; the last one ends it with SIGTERM. Each asserts a
guarantee and prints its figures (`pytest -s` shows them); timings are never asserted,
except the worker restart bound the issue sets (30 s).

What TorchServe 0.12 answers, read here: a full queue is REST 503 JSON and gRPC INTERNAL;
a killed worker fails the batch it was running with REST 507 "Worker died." and gRPC
RESOURCE_EXHAUSTED (500 / INTERNAL when the frontend has not seen the exit code yet);
ColorizerClient retries all of these (serving/client/retry.py).
SIGTERM lets gRPC calls in flight finish but closes REST connections, in flight or not.
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
import pytest
import requests

import protos
from serving.client import NO_RETRY, ColorizerClient, ServiceError
from serving.launcher.server import ServerState, ready_workers
from serving.runtime.constants import MODEL_NAME
from tests.support.photos import encode, synthetic_photo
from tests.support.torchserve import served

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IN_FLIGHT = 16
LOAD_REQUESTS = 1000
BURST = 400  # > TorchServe's job queue (100) + what the workers hold
RESTART_BOUND_S = 30.0
MEMORY_GROWTH_BOUND = 0.10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """This module's own server (its last test ends it), of the tiny network."""
    with served(tmp_path_factory.mktemp("reliability"), "tiny") as running:
        yield running


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(synthetic_photo(96, 64), "JPEG", quality=90)


def workers(server) -> list[psutil.Process]:
    """The model's live Python worker processes (children of TorchServe's java frontend)."""
    found = []
    for p in frontend(server).children(recursive=True):
        try:
            if any("model_service_worker" in part for part in p.cmdline()):
                found.append(p)
        except psutil.Error:  # a killed worker not reaped yet
            pass
    return found


def frontend(server) -> psutil.Process:
    """TorchServe's java frontend: the process SIGTERM goes to."""
    found = []
    for p in server.launcher.children(recursive=True):
        try:
            if any("org.pytorch.serve.ModelServer" in part for part in p.cmdline()):
                found.append(p)
        except psutil.Error:  # a killed worker not reaped yet (a zombie)
            pass
    (java,) = found
    return java


def rss_mib(procs: list[psutil.Process]) -> float:
    return sum(p.memory_info().rss for p in procs) / 2**20


def post(server, image: bytes, timeout: float = 120) -> requests.Response:
    """One raw REST call, no client and no retries."""
    return requests.post(
        f"{server.url}/predictions/{MODEL_NAME}",
        data=image,
        headers={"Content-Type": "image/jpeg"},
        timeout=timeout,
    )


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def run_load(clients: list[ColorizerClient], image: bytes, count: int) -> list[float]:
    """``count`` calls, ``IN_FLIGHT`` at a time, alternating the clients; -> latencies (s)."""

    def one(i: int) -> float:
        start = time.perf_counter()
        clients[i % len(clients)].colorize(image)
        return time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        return list(pool.map(one, range(count)))


def test_load_is_all_answered_and_worker_memory_stays_flat(server, photo):
    rest = ColorizerClient(server.url, pool_size=IN_FLIGHT, retry=NO_RETRY)
    grpc_client = ColorizerClient(grpc_target=server.grpc, retry=NO_RETRY)
    with rest, grpc_client:
        run_load([rest, grpc_client], photo, 100)  # warm-up: every batch size, both protocols
        procs = workers(server)
        warm = rss_mib(procs)
        start = time.perf_counter()
        latencies = run_load([rest, grpc_client], photo, LOAD_REQUESTS)  # raises on any failure
        elapsed = time.perf_counter() - start
        after = rss_mib(procs)
    print(
        f"\nload: {LOAD_REQUESTS} requests (REST and gRPC alternating, no retries) at "
        f"{IN_FLIGHT} in flight, all 200 in {elapsed:.1f} s ({LOAD_REQUESTS / elapsed:.1f} "
        f"req/s); latency p50 {percentile(latencies, 50) * 1e3:.0f} ms, p99 "
        f"{percentile(latencies, 99) * 1e3:.0f} ms; worker RSS {warm:.0f} MiB after warm-up, "
        f"{after:.0f} MiB after the load ({(after - warm) / warm:+.1%}, {len(procs)} workers)"
    )
    assert len(latencies) == LOAD_REQUESTS
    assert all(p.is_running() for p in procs), "a worker restarted during the load"
    assert after <= warm * (1 + MEMORY_GROWTH_BOUND)


def burst(server, photo: bytes) -> Counter:
    """BURST raw REST calls at once -> Counter of (status, error type)."""

    def one(_: int) -> tuple[int, str]:
        resp = post(server, photo)
        if resp.status_code == 200:
            return 200, ""
        assert resp.headers["Content-Type"].startswith("application/json"), resp.text[:200]
        body = resp.json()
        assert body["message"], body
        return resp.status_code, body.get("type") or body.get("error")

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        return Counter(pool.map(one, range(BURST)))


def test_overload_burst_gets_clear_503s_then_normal_service(server, photo):
    answers = burst(server, photo)
    after = post(server, photo)
    print(f"\noverload, raw REST: {BURST} at once -> {dict(answers)}; then {after.status_code}")
    assert set(answers) <= {(200, ""), (503, "ServiceUnavailableException")}, answers
    assert answers[503, "ServiceUnavailableException"] > 0, "the burst did not fill the queue"
    assert after.status_code == 200


def test_overload_burst_through_the_client_loses_nothing(server, photo):
    rest = ColorizerClient(server.url, pool_size=BURST)
    grpc_client = ColorizerClient(grpc_target=server.grpc)
    clients = [rest, grpc_client]
    start = time.perf_counter()
    with rest, grpc_client, ThreadPoolExecutor(max_workers=BURST) as pool:
        results = list(pool.map(lambda i: clients[i % 2].colorize(photo), range(BURST)))
    elapsed = time.perf_counter() - start
    print(
        f"\noverload, ColorizerClient: {BURST} at once (REST and gRPC) -> {len(results)} "
        f"colorized in {elapsed:.1f} s after {rest.retries} REST and {grpc_client.retries} gRPC "
        "retries"
    )
    assert len(results) == BURST and rest.retries + grpc_client.retries > 0


class Traffic:
    """Background callers until stopped: ColorizerClient ones (REST, gRPC), and raw ones
    without retries (REST with ``requests``, gRPC with the plain generated stub)."""

    def __init__(self, server, image: bytes, per_kind: int) -> None:
        self.server, self.image = server, image
        self.rest = ColorizerClient(server.url, pool_size=per_kind)
        self.grpc = ColorizerClient(grpc_target=server.grpc)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.client_ok = 0
        self.client_lost: list[ServiceError] = []
        self.raw: Counter = Counter()
        self.raw_failures: list[tuple[int, dict]] = []
        self.stubs = protos.load()
        self.channel = grpc.insecure_channel(server.grpc)
        self.stub = self.stubs.inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.stub_codes: Counter = Counter()
        self.stub_failures: list[tuple[str, str]] = []
        self.threads = [
            threading.Thread(target=self.client_loop, args=(self.rest,)) for _ in range(per_kind)
        ]
        self.threads += [
            threading.Thread(target=self.client_loop, args=(self.grpc,)) for _ in range(per_kind)
        ]
        self.threads += [threading.Thread(target=self.raw_loop) for _ in range(per_kind)]
        self.threads += [threading.Thread(target=self.stub_loop) for _ in range(per_kind)]

    def client_loop(self, client: ColorizerClient) -> None:
        while not self.stop.is_set():
            try:
                client.colorize(self.image)
            except ServiceError as exc:
                with self.lock:
                    self.client_lost.append(exc)
            else:
                with self.lock:
                    self.client_ok += 1

    def raw_loop(self) -> None:
        while not self.stop.is_set():
            resp = post(self.server, self.image)
            with self.lock:
                self.raw[resp.status_code] += 1
                if resp.status_code != 200:
                    try:
                        body = resp.json()
                    except ValueError:
                        body = {"not_json": resp.text[:200]}
                    self.raw_failures.append((resp.status_code, body))

    def stub_loop(self) -> None:
        request = self.stubs.inference_pb2.PredictionsRequest(
            model_name=MODEL_NAME, input={"data": self.image}
        )
        while not self.stop.is_set():
            try:
                self.stub.Predictions(request, timeout=120)
                code, details = "OK", ""
            except grpc.RpcError as exc:
                code, details = exc.code().name, exc.details()
            with self.lock:
                self.stub_codes[code] += 1
                if code != "OK":
                    self.stub_failures.append((code, details))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        self.rest.close()
        self.grpc.close()
        self.channel.close()


def test_kill_9_of_a_worker_under_load(server, photo):
    per_kind = 4
    with Traffic(server, photo, per_kind) as traffic:
        time.sleep(3)
        victim, *others = workers(server)
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        state = ServerState.load(server.state_dir)
        deadline = killed + 60
        while time.monotonic() < deadline:
            alive = workers(server)
            if len(alive) == 1 + len(others) and victim.pid not in {p.pid for p in alive}:
                if ready_workers(state) >= len(alive):
                    break
            time.sleep(0.2)
        back_s = time.monotonic() - killed
        time.sleep(3)  # and the service goes on normally
    print(
        f"\nkill -9 of worker {victim.pid} under load ({4 * per_kind} in flight): back (READY) "
        f"in {back_s:.1f} s; ColorizerClient (REST+gRPC, {2 * per_kind} callers): "
        f"{traffic.client_ok} colorized, {len(traffic.client_lost)} lost, "
        f"{traffic.rest.retries + traffic.grpc.retries} retries; raw REST ({per_kind} callers): "
        f"{dict(traffic.raw)}, failures {traffic.raw_failures}; plain gRPC stub ({per_kind} "
        f"callers): {dict(traffic.stub_codes)}, failures {traffic.stub_failures}"
    )
    assert not traffic.client_lost, traffic.client_lost
    assert back_s < RESTART_BOUND_S
    # raw callers: only what the dead worker was running fails, each with a clear error
    assert len(traffic.raw_failures) <= per_kind and len(traffic.stub_failures) <= per_kind
    for status, body in traffic.raw_failures:
        assert status in (500, 507) and body.get("message") == "Worker died.", (status, body)
    for code, details in traffic.stub_failures:  # exit 137 is reported as 413, else 500
        assert code in ("RESOURCE_EXHAUSTED", "INTERNAL"), (code, details)
        assert details.startswith("Worker died."), details


def test_sigterm_lets_grpc_calls_in_flight_finish(server, stubs):
    """Last: ends the server. What TorchServe 0.12 does with the calls in flight.

    Its shutdown hook first shuts the gRPC server down and waits for the calls in flight
    (they finish OK; new calls are refused), then closes every REST connection, in flight
    or not: a REST call still running then gets the front's 503 "unavailable", which
    ColorizerClient retries (on Kubernetes, the preStop drain sends no new traffic first).
    """
    state = ServerState.load(server.state_dir)
    deadline = time.monotonic() + 60
    while ready_workers(state) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    # 12 MP photos: 8 of them keep both workers busy for seconds even on an idle machine
    slow = encode(synthetic_photo(4000, 3000), "JPEG")
    request = stubs.inference_pb2.PredictionsRequest(model_name=MODEL_NAME, input={"data": slow})
    java = frontend(server)
    procs = [java, *java.children(recursive=True)]
    with (
        grpc.insecure_channel(server.grpc) as channel,
        ThreadPoolExecutor(max_workers=4) as pool,
    ):
        # Connect first: a lazily connecting channel can still be handshaking when
        # SIGTERM lands, and the server then rightly refuses calls it never received.
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        grpc_calls = [stub.Predictions.future(request, timeout=120) for _ in range(4)]
        rest_calls = [pool.submit(post, server, slow) for _ in range(4)]
        time.sleep(0.5)  # they reach the server
        grpc_in_flight = sum(not f.done() for f in grpc_calls)
        in_flight = grpc_in_flight + sum(not f.done() for f in rest_calls)
        java.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            stub.Predictions(request, timeout=10)
            refused = "OK"
        except grpc.RpcError as exc:
            refused = exc.code().name
        grpc_codes = [outcome(f.exception) for f in grpc_calls]
        rest_outcomes = [outcome(f.exception, f.result) for f in rest_calls]
    gone, alive = psutil.wait_procs(procs, timeout=90)
    print(
        f"\nSIGTERM with {in_flight} calls in flight: gRPC {grpc_codes}, REST {rest_outcomes}; "
        f"a new gRPC call after it: {refused}; {len(gone)} of {len(procs)} processes exited"
    )
    assert grpc_in_flight >= 2, "the calls finished before SIGTERM: use larger photos"
    assert grpc_codes == ["OK"] * 4
    # TorchServe resets the REST calls it has not answered; the front answers those
    # callers 503 "unavailable" (retryable) instead of a reset.
    assert all(o in (200, 503) for o in rest_outcomes), rest_outcomes
    assert refused != "OK"
    assert not alive


def outcome(exception, result=None):
    """OK / a gRPC code name; or a REST status / the exception's class name."""
    exc = exception()
    if isinstance(exc, grpc.RpcError):
        return exc.code().name
    if exc is not None:
        return type(exc).__name__
    return "OK" if result is None else result().status_code


@pytest.fixture(scope="module")
def stubs():
    return protos.load()
