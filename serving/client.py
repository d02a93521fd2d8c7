"""Calling the colorizer service: ``ColorizerClient`` (REST or gRPC) and `colorizer colorize`.

REST: ``POST /predictions/colorizer`` with the photo as the raw body, or, when options
are given, as multipart field ``data`` beside fields ``format`` / ``quality``
(TorchServe 0.12 drops query strings on ``/predictions/``). gRPC:
``InferenceAPIsService/Predictions`` with ``input = {"data", "format", "quality"}``.
TorchServe's gRPC frontend returns a refused request as a successful call whose
``prediction`` is the JSON error body; the client turns both kinds of refusal into
``ServiceError``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import requests

from serving.constants import CONTENT_TYPES, HTTP_PORT, MODEL_NAME, OUTPUT_FORMATS
from serving.errors import GRPC_CODE_FOR_HTTP, ColorizerError

DEFAULT_URL = f"http://127.0.0.1:{HTTP_PORT}"
DEFAULT_TIMEOUT_S = 120.0
MAX_MESSAGE_BYTES = 100 * 2**20  # = max_request_size in serving/config.properties
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
FORMAT_OF_SUFFIX = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}
SUFFIX_OF_FORMAT = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}
# Error kind -> HTTP status, from the server's own typed errors (gRPC carries only the kind).
STATUS_OF_KIND = {
    cls.kind: cls.http_status for cls in (ColorizerError, *ColorizerError.__subclasses__())
}
# Colorizing is idempotent, so calls that end UNAVAILABLE are retried. TorchServe closes
# gRPC connections at their max age (serving/config.properties), and its grpc-java
# sometimes resets calls in flight on such a connection (grpc/grpc-java#9566): measured
# here, 3 of 176 calls at 4 in flight; gRPC's own retry policy did not recover them.
GRPC_ATTEMPTS = 3
GRPC_RETRY_BACKOFF_S = 0.2
# gRPC status code name -> HTTP status, for calls the gRPC frontend itself fails.
HTTP_OF_GRPC_CODE = {
    **{code: status for status, code in GRPC_CODE_FOR_HTTP.items()},
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
}


class ServiceError(Exception):
    """The service refused or failed a request: HTTP status, error kind, message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(f"{status} {kind}: {message}")
        self.status = status
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Colorized:
    """A colorized photo: encoded bytes and their media type (image/jpeg|png|webp)."""

    data: bytes
    content_type: str

    @property
    def format(self) -> str:
        """jpeg, png or webp."""
        return next(f for f, ct in CONTENT_TYPES.items() if ct == self.content_type)


def sniff_content_type(data: bytes) -> str:
    """Media type of encoded jpeg/png/webp bytes (gRPC responses carry no Content-Type)."""
    if data.startswith(b"\xff\xd8"):
        return CONTENT_TYPES["jpeg"]
    if data.startswith(b"\x89PNG"):
        return CONTENT_TYPES["png"]
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return CONTENT_TYPES["webp"]
    raise ServiceError(502, "bad_response", f"the service answered {len(data)} unknown bytes")


def error_from_body(status: int, body: bytes) -> ServiceError:
    """ServiceError from a JSON error body: ours {error, message} or TorchServe's {code, type}."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ServiceError(status, "http_error", body[:200].decode("utf-8", "replace"))
    if not isinstance(data, dict):
        return ServiceError(status, "http_error", str(data)[:200])
    kind = str(data.get("error") or data.get("type") or "http_error")
    return ServiceError(status, kind, str(data.get("message", "")))


class ColorizerClient:
    """Colorize photos through a running service, over REST (``url``) or gRPC (``grpc_target``).

    Thread-safe: one client can serve many concurrent calls.
    """

    def __init__(
        self,
        url: str | None = None,
        grpc_target: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        model_name: str = MODEL_NAME,
        pool_size: int = 8,
    ) -> None:
        if (url is None) == (grpc_target is None):
            raise ValueError("give exactly one of url (REST) or grpc_target (gRPC)")
        self.timeout = timeout
        self.model_name = model_name
        self.url = url.rstrip("/") if url else None
        self.grpc_target = grpc_target
        if self.url:
            self._session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=pool_size)
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)
        else:
            import grpc

            import protos

            self._grpc = grpc
            self._stubs = protos.load()
            self._channel = grpc.insecure_channel(
                grpc_target,
                options=[
                    # Spread calls over every address the target resolves to (e.g. the pods
                    # behind k8s's headless colorizer-grpc Service, as dns:///host:7070).
                    ("grpc.lb_policy_name", "round_robin"),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ],
            )
            self._stub = self._stubs.inference_pb2_grpc.InferenceAPIsServiceStub(self._channel)

    def colorize(
        self, image: bytes, fmt: str | None = None, quality: int | None = None
    ) -> Colorized:
        """Colorize one encoded photo; ``fmt`` jpeg|png|webp, ``quality`` 1-100 (lossy only).

        Raises ServiceError when the service refuses it or cannot be reached.
        """
        options = {k: str(v) for k, v in (("format", fmt), ("quality", quality)) if v is not None}
        if self.url:
            return self._colorize_rest(image, options)
        return self._colorize_grpc(image, options)

    def _colorize_rest(self, image: bytes, options: dict[str, str]) -> Colorized:
        endpoint = f"{self.url}/predictions/{self.model_name}"
        try:
            if options:
                files = {"data": ("image", image, "application/octet-stream")}
                resp = self._session.post(endpoint, files=files, data=options, timeout=self.timeout)
            else:
                headers = {"Content-Type": "application/octet-stream"}
                resp = self._session.post(
                    endpoint, data=image, headers=headers, timeout=self.timeout
                )
        except requests.RequestException as exc:
            raise ServiceError(503, "unavailable", f"{endpoint}: {exc}") from exc
        if resp.status_code != 200:
            raise error_from_body(resp.status_code, resp.content)
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return Colorized(resp.content, content_type or sniff_content_type(resp.content))

    def _colorize_grpc(self, image: bytes, options: dict[str, str]) -> Colorized:
        inputs = {"data": image, **{k: v.encode() for k, v in options.items()}}
        request = self._stubs.inference_pb2.PredictionsRequest(
            model_name=self.model_name, input=inputs
        )
        for attempt in range(1, GRPC_ATTEMPTS + 1):
            try:
                prediction = self._stub.Predictions(request, timeout=self.timeout).prediction
                break
            except self._grpc.RpcError as exc:
                code = exc.code().name
                if code == "UNAVAILABLE" and attempt < GRPC_ATTEMPTS:
                    time.sleep(GRPC_RETRY_BACKOFF_S * attempt)
                    continue
                status = HTTP_OF_GRPC_CODE.get(code, 500)
                raise ServiceError(status, f"grpc_{code.lower()}", exc.details() or "") from exc
        if prediction.startswith(b"{"):  # a refused request: the JSON error body
            error = error_from_body(500, prediction)
            raise ServiceError(STATUS_OF_KIND.get(error.kind, 500), error.kind, error.message)
        return Colorized(prediction, sniff_content_type(prediction))

    def ping(self) -> bool:
        """True when the service reports itself healthy."""
        if self.url:
            try:
                resp = self._session.get(f"{self.url}/ping", timeout=self.timeout)
                return resp.status_code == 200 and resp.json().get("status") == "Healthy"
            except (requests.RequestException, ValueError):
                return False
        from google.protobuf import empty_pb2

        try:
            health = self._stub.Ping(empty_pb2.Empty(), timeout=self.timeout).health
        except self._grpc.RpcError:
            return False
        return json.loads(health).get("status") == "Healthy"

    def close(self) -> None:
        if self.url:
            self._session.close()
        else:
            self._channel.close()

    def __enter__(self) -> ColorizerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        help="colorize photos through a running service",
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
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pairs = collect_inputs(args.inputs)
    missing = [(src, "no such file") for src, _ in pairs if not src.is_file()]
    pairs = [(src, name) for src, name in pairs if src.is_file()]
    url = None if args.grpc else (args.url or DEFAULT_URL)
    with ColorizerClient(
        url, args.grpc, timeout=args.timeout, pool_size=max(1, args.concurrency)
    ) as client:
        failures = missing + colorize_files(
            client, pairs, args.out, args.format, args.quality, args.concurrency
        )
    done = len(pairs) + len(missing) - len(failures)
    print(f"colorized {done} of {len(pairs) + len(missing)} files into {args.out}")
    for src, reason in failures:
        print(f"FAILED {src}: {reason}", file=sys.stderr)
    return 1 if failures else 0
