"""`colorizer bench`: latency and throughput of a running service, REST against gRPC; or,
with ``--burst N``, who an overload burst of impatient callers serves.

One run sends the same photo through both protocols: first one request at a time
(latency), then ``--concurrency`` requests in flight (throughput), and prints the
gRPC / REST ratios. ``--burst N --deadlines 3,10`` instead sends N concurrent REST requests
per deadline, each caller giving up after it, and prints where the work went: the photos
colorized (the handler's own metrics) and the share of them that reached a caller in time.
Start a server first (`colorizer serve`).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from serving.client.base import DEFAULT_URL, ServiceError
from serving.client.retry import NO_RETRY
from serving.client.sdk import ColorizerClient, call_meta
from serving.runtime.constants import (
    GRPC_PORT,
    METRICS_PORT,
    OUTPUT_FORMATS,
)

DEFAULT_GRPC = f"127.0.0.1:{GRPC_PORT}"
DEFAULT_METRICS = f"http://127.0.0.1:{METRICS_PORT}/metrics"
WARMUP = 3
DRAIN_QUIET_S = 3.0  # after a burst, the handler's counters must stand still this long
DRAIN_LIMIT_S = 300.0


def synthetic_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB image that compresses like a photo: color gradients plus grain."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx, yy = xx / max(width, 1), yy / max(height, 1)
    rgb = np.stack([xx, yy, 0.5 + 0.5 * np.sin(8 * xx * yy + seed)], axis=-1)
    grain = np.random.default_rng(seed).normal(0, 0.02, rgb.shape).astype(np.float32)
    return Image.fromarray((np.clip(rgb + grain, 0, 1) * 255).astype(np.uint8))


def bench_image(size: int, path: Path | None = None) -> bytes:
    """A ``size`` x ``size`` JPEG (quality 90): ``path`` center-cropped, else a synthetic photo."""
    if path is not None:
        img = ImageOps.fit(Image.open(path).convert("RGB"), (size, size))
    else:
        img = synthetic_photo(size, size)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@dataclass
class ProtocolResult:
    """Timings of one protocol: per-request latency (ms) and throughput (images/s)."""

    protocol: str
    latency_ms_min: float
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_mean: float
    throughput_img_s: float
    concurrency: int


def measure(
    client: ColorizerClient, image: bytes, requests: int, concurrency: int, fmt: str | None
) -> tuple[list[float], float]:
    """-> (sequential latencies in ms, images/s with ``concurrency`` in flight)."""
    for _ in range(WARMUP):
        client.colorize(image, fmt)
    latencies = []
    for _ in range(requests):
        start = time.perf_counter()
        client.colorize(image, fmt)
        latencies.append((time.perf_counter() - start) * 1e3)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda _: client.colorize(image, fmt), range(requests)))
    return latencies, requests / (time.perf_counter() - start)


def bench_protocol(
    protocol: str, target: str, image: bytes, requests: int, concurrency: int, fmt: str | None
) -> ProtocolResult:
    """Measure one protocol (``rest`` with a URL, ``grpc`` with HOST:PORT)."""
    url, grpc_target = (target, None) if protocol == "rest" else (None, target)
    with ColorizerClient(url, grpc_target, pool_size=concurrency) as client:
        latencies, throughput = measure(client, image, requests, concurrency, fmt)
    return ProtocolResult(
        protocol=protocol,
        latency_ms_min=min(latencies),
        latency_ms_p50=statistics.median(latencies),
        latency_ms_p90=statistics.quantiles(latencies, n=10)[-1],
        latency_ms_mean=statistics.fmean(latencies),
        throughput_img_s=throughput,
        concurrency=concurrency,
    )


def report(rest: ProtocolResult, grpc: ProtocolResult, size: int, requests: int) -> str:
    """A small table of both protocols and their gRPC / REST ratios."""
    rows = [
        f"{size}x{size} JPEG, {requests} requests per measurement",
        f"{'':9} {'min ms':>8} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8} {'img/s':>8} (in flight)",
    ]
    for r in (rest, grpc):
        rows.append(
            f"{r.protocol:9} {r.latency_ms_min:8.1f} {r.latency_ms_p50:8.1f} "
            f"{r.latency_ms_p90:8.1f} {r.latency_ms_mean:8.1f} {r.throughput_img_s:8.2f} "
            f"({r.concurrency})"
        )
    fields = ("latency_ms_min", "latency_ms_p50", "latency_ms_p90", "latency_ms_mean")
    ratios = [getattr(grpc, f) / getattr(rest, f) for f in (*fields, "throughput_img_s")]
    rows.append(f"{'gRPC/REST':9} " + " ".join(f"{r:8.2f}" for r in ratios))
    return "\n".join(rows)


@dataclass
class BurstResult:
    """One burst: ``callers`` concurrent requests, each caller gone after ``deadline_s``.

    Outcomes per caller: a photo in time, a refusal at once (``refused``: 503, the queue
    was full), skipped by the server (``expired``: 504, its deadline passed in the queue),
    no answer before the caller gave up (``gave_up``), anything else (``other``).
    ``colorized``: photos the network ran for, from the handler's metrics.
    """

    deadline_s: float
    callers: int
    sent_deadline: bool
    in_time: int
    refused: int
    expired: int
    gave_up: int
    other: int
    colorized: int

    @property
    def in_time_share(self) -> float:
        """Of the photos colorized, the share that reached a caller still waiting."""
        return self.in_time / self.colorized if self.colorized else 1.0


def handler_counts(metrics_url: str) -> tuple[float, float]:
    """(photos handed to the handler, photos it skipped as expired) so far, summed over
    the workers: ``colorizer_batch_size_sum`` and ``colorizer_errors_total`` of kind
    ``deadline_exceeded``."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(metrics_url, timeout=10).text
    handed = skipped = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "colorizer_batch_size_sum":
                handed += sample.value
            elif sample.name == "colorizer_errors_total":
                skipped += sample.value if sample.labels.get("Kind") == "deadline_exceeded" else 0
    return handed, skipped


def drained_counts(metrics_url: str) -> tuple[float, float]:
    """``handler_counts`` once they have stood still for ``DRAIN_QUIET_S``: the server has
    finished the work a burst left in its queue."""
    counts, since = handler_counts(metrics_url), time.monotonic()
    limit = time.monotonic() + DRAIN_LIMIT_S
    while time.monotonic() - since < DRAIN_QUIET_S and time.monotonic() < limit:
        time.sleep(0.5)
        now = handler_counts(metrics_url)
        if now != counts:
            counts, since = now, time.monotonic()
    return counts


def one_impatient_call(
    client: ColorizerClient, image: bytes, deadline_s: float, send_deadline: bool
) -> str:
    """One REST call that gives up after ``deadline_s``: -> its outcome (``BurstResult``)."""
    meta = call_meta(None, time.time() + deadline_s if send_deadline else None)
    start = time.monotonic()
    try:
        client.transport.colorize(image, {}, deadline_s, meta)
    except ServiceError as exc:
        if exc.status == 503:
            return "refused"
        if exc.kind == "deadline_exceeded":  # the server's 504: skipped, not colorized
            return "expired"
        return "gave_up" if exc.kind == "timeout" else "other"
    return "in_time" if time.monotonic() - start <= deadline_s else "gave_up"


def burst(
    url: str,
    metrics_url: str,
    image: bytes,
    callers: int,
    deadline_s: float,
    send_deadline: bool = True,
) -> BurstResult:
    """``callers`` REST requests at once, no retries, each caller gone after ``deadline_s``
    (its deadline sent as a header unless ``send_deadline`` is False); waits for the
    server to drain before counting the work."""
    import threading

    handed0, skipped0 = drained_counts(metrics_url)
    start = threading.Barrier(callers)
    with ColorizerClient(url, timeout=deadline_s, retry=NO_RETRY, pool_size=callers) as client:

        def call(_: int) -> str:
            start.wait()
            return one_impatient_call(client, image, deadline_s, send_deadline)

        with ThreadPoolExecutor(max_workers=callers) as pool:
            outcomes = list(pool.map(call, range(callers)))
    handed, skipped = drained_counts(metrics_url)
    counts = {k: outcomes.count(k) for k in ("in_time", "refused", "expired", "gave_up", "other")}
    colorized = round((handed - handed0) - (skipped - skipped0))
    return BurstResult(deadline_s, callers, send_deadline, colorized=colorized, **counts)


def burst_report(results: list[BurstResult], size: int) -> str:
    """The bursts as a table, with the share of colorized photos that reached a caller in
    time and the share of the work spent on callers already gone."""
    rows = [
        f"{size}x{size} JPEG bursts over REST, no retries",
        "| callers give up after | deadline sent | refused at once (503) | skipped as expired "
        "(504) | gave up waiting | photos colorized | reached a caller in time | work for "
        "callers already gone |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        gone = 1 - r.in_time_share
        rows.append(
            f"| {r.deadline_s:g} s | {'yes' if r.sent_deadline else 'no'} | {r.refused} | "
            f"{r.expired} | {r.gave_up} | {r.colorized} | {r.in_time} "
            f"({r.in_time_share:.0%}) | {gone:.0%} |"
        )
    if any(r.other for r in results):
        rows.append(
            "other outcomes: " + ", ".join(f"{r.deadline_s:g} s: {r.other}" for r in results)
        )
    return "\n".join(rows)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"REST base URL (default {DEFAULT_URL})")
    p.add_argument("--grpc", default=DEFAULT_GRPC, help=f"gRPC HOST:PORT (default {DEFAULT_GRPC})")
    p.add_argument("--size", type=int, default=512, help="square photo side in pixels (512)")
    p.add_argument("--image", type=Path, help="photo to crop to --size (default: synthetic)")
    p.add_argument("--requests", type=int, default=30, help="requests per measurement (30)")
    p.add_argument("--concurrency", type=int, default=4, help="in flight for throughput (4)")
    p.add_argument("--format", choices=OUTPUT_FORMATS, help="output format (default: jpeg)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument(
        "--burst", type=int, metavar="N", help="instead: bursts of N concurrent REST callers"
    )
    p.add_argument(
        "--deadlines",
        default="3,10",
        help="with --burst: comma-separated seconds after which the callers give up (3,10)",
    )
    p.add_argument(
        "--metrics", default=DEFAULT_METRICS, help=f"with --burst (default {DEFAULT_METRICS})"
    )
    p.add_argument(
        "--without-deadline",
        action="store_true",
        help="with --burst: callers do not send their deadline (as a caller other than "
        "ColorizerClient may not)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    image = bench_image(args.size, args.image)
    if args.burst:
        deadlines = [float(d) for d in args.deadlines.split(",")]
        send = not args.without_deadline
        results = [burst(args.url, args.metrics, image, args.burst, d, send) for d in deadlines]
        print(burst_report(results, args.size))
        if args.json:
            payload = [{**asdict(r), "in_time_share": r.in_time_share} for r in results]
            args.json.write_text(json.dumps(payload, indent=1))
        return 0
    rest = bench_protocol("rest", args.url, image, args.requests, args.concurrency, args.format)
    grpc = bench_protocol("grpc", args.grpc, image, args.requests, args.concurrency, args.format)
    print(report(rest, grpc, args.size, args.requests))
    if args.json:
        results = {"size": args.size, "requests": args.requests, "results": [rest, grpc]}
        args.json.write_text(json.dumps(results, default=asdict, indent=1))
    return 0
