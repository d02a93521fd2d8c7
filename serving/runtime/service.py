"""The request path, written once: photos and their options in, per request a status, a
body and a content type out, for a batch.

decode (``imageio.decode_images``) -> prepare -> network -> finish
(``pipeline.ColorizePipeline``) -> encode (``imageio.encode_images``).

The TorchServe handler, `colorizer pipeline-bench` and the GPU checks all call
``colorize_requests``. A bad photo or option fails only its own request, with the status
and JSON body of ``errors.error_response``; a failure of the network or the pixel work
fails the photos that reached it. Nothing here knows about TorchServe.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from serving.runtime.constants import CONTENT_TYPES
from serving.runtime.device import sync
from serving.runtime.errors import ColorizerError, error_response
from serving.runtime.imageio import (
    DecodedImage,
    choose_output_format,
    decode_images,
    encode_images,
    parse_quality,
)
from serving.runtime.pipeline import ColorizePipeline

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class PhotoRequest:
    """One photo to colorize: its bytes (or why there are none) and its options as sent.

    ``photo``: the encoded image, or the ``ColorizerError`` met while extracting it from
    the request; ``format``, ``quality``: the option texts or None; ``accept``: the
    request's Accept header or None.
    """

    photo: bytes | Exception
    format: str | None = None
    quality: str | None = None
    accept: str | None = None


@dataclass(frozen=True)
class Answer:
    """What one request gets: HTTP status, body, Content-Type, and the error kind (None
    for a photo)."""

    status: int
    body: bytes
    content_type: str
    error: str | None = None


@dataclass
class BatchReport:
    """A batch's answers, in request order, and what it cost: seconds per stage (each
    stage's device work finished, ``device.sync``) and the megapixels of each photo
    that decoded."""

    answers: list[Answer]
    seconds: dict[str, float] = field(default_factory=dict)  # keys: constants.STAGES
    megapixels: list[float] = field(default_factory=list)


def failure(exc: BaseException) -> Answer:
    """The answer for a failed request (``error_response``); unexpected errors are logged."""
    status, body = error_response(exc)
    if not isinstance(exc, ColorizerError):
        log.error("a request failed unexpectedly", exc_info=exc)
    return Answer(status, json.dumps(body).encode("utf-8"), JSON_CONTENT_TYPE, body["error"])


def colorize_requests(
    pipeline: ColorizePipeline, requests: list[PhotoRequest], max_pixels: int
) -> BatchReport:
    """Colorize a batch of requests (see the module docstring): -> one ``Answer`` each."""
    answers: list[Answer | None] = [None] * len(requests)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    received: list[tuple[int, bytes, int]] = []  # (index, photo bytes, quality)
    for idx, request in enumerate(requests):
        try:
            if isinstance(request.photo, Exception):
                raise request.photo
            received.append((idx, request.photo, parse_quality(request.quality)))
        except Exception as exc:
            answers[idx] = failure(exc)
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
            answers[idx] = failure(exc)
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
                answers[idx] = failure(exc)
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
                answers[idx] = Answer(200, body, CONTENT_TYPES[fmt]) if ok else failure(body)
            seconds["encode"] = time.perf_counter() - start
    assert all(a is not None for a in answers), "every request gets an answer"
    return BatchReport(answers, seconds, megapixels)


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
