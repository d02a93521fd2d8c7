"""`colorizer colorize`: colorize files and folders through a running service.

Files or folders in; colorized files out under the same names (the suffix changes only
when the output format does); the failures are listed at the end.
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from serving.client.base import DEFAULT_TIMEOUT_S, DEFAULT_URL
from serving.client.retry import RetryPolicy
from serving.client.sdk import ColorizerClient
from serving.runtime.constants import IMAGE_SUFFIXES, OUTPUT_FORMATS

FORMAT_OF_SUFFIX = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}
SUFFIX_OF_FORMAT = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}


def collect_inputs(paths: list[Path]) -> list[tuple[Path, Path]]:
    """Files and folders -> (source file, output name relative to OUT_DIR), in order.

    A folder contributes its image files (by suffix), recursively, under their relative paths.
    """
    pairs = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            pairs += [(p, p.relative_to(path)) for p in files if p.is_file()]
        else:
            pairs.append((path, Path(path.name)))
    return pairs


def output_name(name: Path, fmt: str) -> Path:
    """Same name; the suffix changes only when it does not already denote ``fmt``."""
    if FORMAT_OF_SUFFIX.get(name.suffix.lower()) == fmt:
        return name
    return name.with_suffix(SUFFIX_OF_FORMAT[fmt])


def colorize_files(
    client: ColorizerClient,
    pairs: list[tuple[Path, Path]],
    out_dir: Path,
    fmt: str | None = None,
    quality: int | None = None,
    concurrency: int = 4,
    progress: bool = True,
) -> list[tuple[Path, str]]:
    """Colorize each (source, name) into ``out_dir``; return the failures as (source, reason)."""
    from tqdm import tqdm

    written: set[Path] = set()
    lock = threading.Lock()

    def one(src: Path, name: Path) -> None:
        result = client.colorize(src.read_bytes(), fmt, quality)
        target = out_dir / output_name(name, result.format)
        with lock:
            if target in written:
                raise FileExistsError(f"another input was already written to {target}")
            written.add(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(result.data)

    failures = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(one, src, name): src for src, name in pairs}
        bar = tqdm(total=len(futures), unit="img", disable=not progress, desc="colorize")
        for future in as_completed(futures):
            exc = future.exception()
            if exc is not None:
                failures.append((futures[future], str(exc)))
            bar.update()
        bar.close()
    return sorted(failures)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "colorize",
        description="Send each photo (files, or the images in folders) to the service and write "
        "the colorized photos into OUT_DIR under the same names (the suffix follows the output "
        "format). Failures are listed at the end; the exit code is 1 if any file failed.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="photo files or folders")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUT_DIR")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"REST base URL (default {DEFAULT_URL})")
    where.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at HOST:PORT instead")
    p.add_argument("--format", choices=OUTPUT_FORMATS, help="output format (default: the input's)")
    p.add_argument("--quality", type=int, help="1-100, for jpeg and webp (default 90)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds per photo, retries included (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--attempts",
        type=int,
        help="at most this many tries per photo when the service is busy or restarting "
        "(queue full, worker died, unreachable); default: retry until --timeout; 1: never",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pairs = collect_inputs(args.inputs)
    missing = [(src, "no such file") for src, _ in pairs if not src.is_file()]
    pairs = [(src, name) for src, name in pairs if src.is_file()]
    url = None if args.grpc else (args.url or DEFAULT_URL)
    with ColorizerClient(
        url,
        args.grpc,
        timeout=args.timeout,
        pool_size=max(1, args.concurrency),
        retry=RetryPolicy(attempts=None if args.attempts is None else max(1, args.attempts)),
    ) as client:
        failures = missing + colorize_files(
            client, pairs, args.out, args.format, args.quality, args.concurrency
        )
    done = len(pairs) + len(missing) - len(failures)
    print(f"colorized {done} of {len(pairs) + len(missing)} files into {args.out}")
    for src, reason in failures:
        print(f"FAILED {src}: {reason}", file=sys.stderr)
    return 1 if failures else 0
