"""The request path, written once: photos and their options in, per request a status, a
body and a content type out, for a batch.

expired? -> decode (``imageio.decode_images``) -> prepare -> network -> finish
(``pipeline.ColorizePipeline``) -> encode (``imageio.encode_images``).

The TorchServe handler, `colorizer pipeline-bench` and the GPU checks all call
``colorize_requests``. A bad photo or option fails only its own request, with the status
and JSON body of ``errors.error_response`` plus its ``request_id``; a failure of the
network or the pixel work fails the photos that reached it. A photo whose caller's
deadline has passed, or would pass before its batch could finish, is answered 504 at
once and never decoded. Each answer echoes the caller's request id and trace context as
headers, and one log line per request names its ids with each stage's seconds. Nothing
here knows about TorchServe.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace

from serving.runtime.constants import (
    CONTENT_TYPES,
    ECHOED_REQUEST_ID_HEADER,
    STAGES,
    TRACEPARENT_HEADER,
)
from serving.runtime.device import sync
from serving.runtime.errors import ColorizerError, DeadlineExceeded, error_response
from serving.runtime.imageio import (
    DecodedImage,
    choose_output_format,
    decode_images,
    encode_images,
    parse_quality,
)
from serving.runtime.pipeline import ColorizePipeline
from serving.runtime.request_meta import RequestMeta, new_request_id

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class PhotoRequest:
    """One photo to colorize: its bytes (or why there are none) and its options as sent.

    ``photo``: the encoded image, or the ``ColorizerError`` met while extracting it from
    the request; ``format``, ``quality``: the option texts or None; ``accept``: the
    request's Accept header or None; ``meta``: its id, trace context and deadline (None:
    a fresh id, no deadline).
    """

    photo: bytes | Exception
    format: str | None = None
    quality: str | None = None
    accept: str | None = None
    meta: RequestMeta | None = None


@dataclass(frozen=True)
class Answer:
    """What one request gets: HTTP status, body, Content-Type, the error kind (None for a
    photo) and response headers (its id, trace context, Retry-After)."""

    status: int
    body: bytes
    content_type: str
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class BatchReport:
    """A batch's answers, in request order, and what it cost: seconds per stage (each
    stage's device work finished, ``device.sync``) and the megapixels of each photo
    that decoded."""

    answers: list[Answer]
    seconds: dict[str, float] = field(default_factory=dict)  # keys: constants.STAGES
    megapixels: list[float] = field(default_factory=list)


def failure(exc: BaseException, meta: RequestMeta) -> Answer:
    """The answer for a failed request (``error_response`` plus its ``request_id``);
    unexpected errors are logged."""
    status, body = error_response(exc)
    body["request_id"] = meta.request_id
    retry_after = exc.retry_after_s if isinstance(exc, ColorizerError) else None
    if not isinstance(exc, ColorizerError):
        log.error("request %s failed unexpectedly", meta.request_id, exc_info=exc)
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return Answer(
        status, json.dumps(body).encode("utf-8"), JSON_CONTENT_TYPE, body["error"], headers
    )


def expired(meta: RequestMeta, now: float, expected_s: float) -> DeadlineExceeded | None:
    """Why the request must be skipped, or None: its deadline (Unix seconds) is less than
    ``expected_s`` (what its batch should take) after ``now`` (Unix seconds)."""
    if meta.deadline is None:
        return None
    left = meta.deadline - now
    if left <= 0:
        return DeadlineExceeded(
            f"the request's deadline passed {-left:.3f} s before its turn (it waited in the "
            "server's queue); it was not colorized. Send a later deadline, or retry when the "
            "service is less busy"
        )
    if left < expected_s:
        return DeadlineExceeded(
            f"the request's deadline was {left:.3f} s away at its turn and a batch takes about "
            f"{expected_s:.3f} s here; it was not colorized. Send a later deadline, or retry "
            "when the service is less busy"
        )
    return None


def colorize_requests(
    pipeline: ColorizePipeline,
    requests: list[PhotoRequest],
    max_pixels: int,
    *,
    expected_s: float = 0.0,
    log_requests: bool = False,
) -> BatchReport:
    """Colorize a batch of requests (see the module docstring): -> one ``Answer`` each.

    ``expected_s``: the seconds this batch is expected to take; a photo whose deadline
    is nearer than that is skipped (504) as if it had already passed. ``log_requests``:
    write each request's log line (the served path; not warm-ups and benchmarks).
    """
    answers: list[Answer | None] = [None] * len(requests)
    metas = [r.meta or RequestMeta(new_request_id()) for r in requests]
    seconds: dict[str, float] = {}
    now = time.time()
    start = time.perf_counter()
    received: list[tuple[int, bytes, int]] = []  # (index, photo bytes, quality)
    for idx, request in enumerate(requests):
        try:
            if isinstance(request.photo, Exception):
                raise request.photo
            late = expired(metas[idx], now, expected_s)
            if late is not None:
                raise late
            received.append((idx, request.photo, parse_quality(request.quality)))
        except Exception as exc:
            answers[idx] = failure(exc, metas[idx])
    decoded = decode_images([body for _, body, _ in received], max_pixels, pipeline.device)
    jobs: list[tuple[int, DecodedImage, str, int]] = []  # (index, image, format, quality)
    megapixels = []
    for (idx, _, quality), image in zip(received, decoded, strict=True):
        try:
            if isinstance(image, Exception):
                raise image
            request = requests[idx]
            fmt = choose_output_format(request.format, request.accept, image.source_format)
        except Exception as exc:
            answers[idx] = failure(exc, metas[idx])
            continue
        megapixels.append(image.megapixels)
        jobs.append((idx, image, fmt, quality))
    seconds["decode"] = time.perf_counter() - start
    if jobs:
        try:
            colorized = run_network(pipeline, [job[1] for job in jobs], seconds)
        except Exception as exc:  # e.g. out of memory: fail these photos, keep the worker
            log.exception("colorize failed for a batch of %d", len(jobs))
            for idx, *_ in jobs:
                answers[idx] = failure(exc, metas[idx])
        else:
            start = time.perf_counter()
            encoded = encode_images(
                colorized,
                [image.alpha for _, image, _, _ in jobs],
                [fmt for _, _, fmt, _ in jobs],
                [quality for *_, quality in jobs],
            )
            for (idx, _, fmt, _), body in zip(jobs, encoded, strict=True):
                ok = not isinstance(body, Exception)
                answers[idx] = (
                    Answer(200, body, CONTENT_TYPES[fmt]) if ok else failure(body, metas[idx])
                )
            seconds["encode"] = time.perf_counter() - start
    assert all(a is not None for a in answers), "every request gets an answer"
    answers = [with_meta_headers(a, m) for a, m in zip(answers, metas, strict=True)]
    if log_requests:
        log_answers(metas, answers, seconds)
    return BatchReport(answers, seconds, megapixels)


def with_meta_headers(answer: Answer, meta: RequestMeta) -> Answer:
    """``answer`` echoing the caller's id (``ECHOED_REQUEST_ID_HEADER``) and traceparent,
    when they came."""
    headers = dict(answer.headers)
    if meta.callers_id is not None:
        headers[ECHOED_REQUEST_ID_HEADER] = meta.callers_id
    if meta.traceparent is not None:
        headers[TRACEPARENT_HEADER] = meta.traceparent
    return replace(answer, headers=headers)


def log_answers(metas: list[RequestMeta], answers: list[Answer], seconds: dict) -> None:
    """One line per request: its id, the server's id, trace id, status and the batch's
    seconds per stage."""
    stages = " ".join(f"{stage}={seconds[stage]:.4f}" for stage in STAGES if stage in seconds)
    for meta, answer in zip(metas, answers, strict=True):
        log.info(
            "request_id=%s server_id=%s trace_id=%s status=%d error=%s batch=%d %s",
            meta.request_id,
            meta.server_id or "-",
            meta.trace_id or "-",
            answer.status,
            answer.error or "-",
            len(answers),
            stages,
        )


def run_network(pipeline: ColorizePipeline, images: list[DecodedImage], seconds: dict):
    """Decoded photos -> colorized RGB, (3, H_i, W_i) uint8 on the pipeline's device; the
    seconds of prepare, network and finish go into ``seconds``."""
    start = time.perf_counter()
    batch = pipeline.prepare(images)
    sync(pipeline.device)
    prepared = time.perf_counter()
    ab = pipeline.infer(batch)
    sync(pipeline.device)
    inferred = time.perf_counter()
    colorized = pipeline.finish_images(batch, ab)
    sync(pipeline.device)
    seconds["preprocess"] = prepared - start
    seconds["inference"] = inferred - prepared
    seconds["postprocess"] = time.perf_counter() - inferred
    return colorized
