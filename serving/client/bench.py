"""`colorizer bench`: latency and throughput of a running service, REST against gRPC.

One run sends the same photo through both protocols: first one request at a time
(latency), then ``--concurrency`` requests in flight (throughput), and prints the
gRPC / REST ratios. Start a server first (`colorizer serve`).
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

from serving.client.base import DEFAULT_URL
from serving.client.sdk import ColorizerClient
from serving.runtime.constants import GRPC_PORT, OUTPUT_FORMATS

DEFAULT_GRPC = f"127.0.0.1:{GRPC_PORT}"
WARMUP = 3


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    image = bench_image(args.size, args.image)
    rest = bench_protocol("rest", args.url, image, args.requests, args.concurrency, args.format)
    grpc = bench_protocol("grpc", args.grpc, image, args.requests, args.concurrency, args.format)
    print(report(rest, grpc, args.size, args.requests))
    if args.json:
        results = {"size": args.size, "requests": args.requests, "results": [rest, grpc]}
        args.json.write_text(json.dumps(results, default=asdict, indent=1))
    return 0
