"""TorchServe handler: a thin adapter from TorchServe's request batch to
``serving.runtime.service.colorize_requests`` (the request path) and back, with the
TorchServe-only parts: reading requests, metrics, statuses and gRPC batch failures.

One request is one photo:

- bytes: the REST raw body, or the multipart field / gRPC input key ``data``;
- options: ``format`` (jpeg|png|webp) and ``quality`` (1-100) as REST query parameters,
  multipart fields or gRPC input keys; without ``format``, the ``Accept`` header, then
  the input's own format (see ``serving.runtime.imageio.choose_output_format``).

Request metadata (``serving.runtime.request_meta``): ``X-Request-Id``, ``traceparent`` and
``X-Request-Deadline`` as REST headers, or as gRPC input keys of the same names in lower
case (TorchServe 0.12 passes a gRPC handler neither the call's metadata nor its deadline).
Without an id, the request goes by TorchServe's own request id, which TorchServe's REST
frontend sets as every response's ``X-Request-Id`` (overwriting the handler's), so a
caller's id is echoed as ``X-Client-Request-Id``. A photo whose deadline passed in the
queue, or would pass before a batch (this worker's recent average) could finish, is
answered 504 without being decoded.

Every request gets its own status code and Content-Type. A bad photo fails only its own
request, with the JSON body of ``serving.runtime.errors.error_response`` plus its
``request_id``; the worker never dies on bad input.

gRPC: TorchServe's gRPC frontend (0.12) ignores per-request status codes; it turns only a
failure of the whole batch (``PredictionException`` with an HTTP code) into a gRPC status
(400 INVALID_ARGUMENT, 413 RESOURCE_EXHAUSTED, 500 INTERNAL). So when every request of a
batch came over gRPC and all failed with the same error (always so for a request batched
alone), the handler fails the batch with that status and the JSON body as the message. A
bad gRPC request batched with good ones, or with REST requests, cannot get a status of its
own without failing the others: it completes OK with the JSON body as its ``prediction``.

TorchServe imports this file as a module and requires exactly one class in it.
"""

from __future__ import annotations

import io
import json
import logging
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.utils.util import PredictionException

import serving
from serving.runtime.constants import (
    CANNOT_START,
    DEADLINE_HEADER,
    DEFAULT_MAX_PIXELS,
    INPUT_FORMATS_HUMAN,
    MODEL_NAME,
    REQUEST_ID_HEADER,
    TRACEPARENT_HEADER,
)
from serving.runtime.device import worker_device
from serving.runtime.errors import (
    ColorizerError,
    EmptyInput,
    InvalidOption,
    NotAnImage,
    TooManyInputs,
)
from serving.runtime.forms import is_form, parse_form
from serving.runtime.pipeline import ColorizePipeline
from serving.runtime.precision import PrecisionUnusable
from serving.runtime.request_meta import (
    RequestMeta,
    new_request_id,
    parse_deadline,
    parse_request_id,
    parse_traceparent,
)
from serving.runtime.service import Answer, BatchReport, PhotoRequest, colorize_requests

log = logging.getLogger(__name__)

IMAGE_KEYS = ("data", "body")  # multipart field / gRPC key first, then the raw REST body
WARMUP_RUNS = 2  # TorchScript's profiling executor optimizes a shape on its second call
WARMUP_SIZE = (64, 48)  # width, height of the warm-up photo
BATCH_SECONDS_WEIGHT = 0.3  # of the newest batch in the running average of batch seconds

# Custom metrics, declared in serving/launcher/metrics.yaml (dimension order matters there).
STAGE_METRIC = "colorizer_stage_seconds"
BATCH_METRIC = "colorizer_batch_size"
MEGAPIXELS_METRIC = "colorizer_input_megapixels"
ERRORS_METRIC = "colorizer_errors_total"


def request_image(request: dict[str, Any]) -> bytes:
    """The photo bytes of one TorchServe request. Raises EmptyInput or NotAnImage."""
    value = next((request[key] for key in IMAGE_KEYS if key in request), None)
    if value is None:
        raise EmptyInput(
            "the request carried no image; send it as the raw body, as multipart field "
            f"'data' or as gRPC input 'data' (accepted: {INPUT_FORMATS_HUMAN})"
        )
    if isinstance(value, str):  # TorchServe decoded a text/* body; UTF-8 round-trips exactly
        return value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray)):  # TorchServe parsed an application/json body
        raise NotAnImage(f"the request body is JSON, not an image; accepted: {INPUT_FORMATS_HUMAN}")
    return bytes(value)


def request_option(request: dict[str, Any], name: str) -> str | None:
    """A text option (query parameter, multipart field or gRPC input key), or None."""
    value = request.get(name)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return None if value is None else str(value)


def request_header(context: Any, idx: int, name: str) -> str | None:
    """HTTP request header ``name`` (any case) of request ``idx``; None for gRPC requests."""
    wanted = name.lower()
    for key, value in context.get_all_request_header(idx).items():
        if isinstance(value, str) and key.lower() == wanted:
            return value
    return None


def is_grpc(context: Any, idx: int) -> bool:
    """True when request ``idx`` came over gRPC: only REST requests carry HTTP headers.

    TorchServe passes every HTTP header of a REST request (there is always at least
    Content-Length or Host) as a string; a gRPC ``Predictions`` request has none, only
    the per-input entries (dicts of the input's content type).
    """
    headers = context.get_all_request_header(idx)
    return not any(isinstance(value, str) for value in headers.values())


def grpc_batch_failure(context: Any, answers: list[Answer]) -> tuple[int, bytes] | None:
    """(HTTP status, JSON body) to fail the whole batch with, so gRPC callers get a status.

    Only when every request came over gRPC and all failed with one identical error (kind
    and message): a batch failure gives each of its callers the same code and message, so
    it must not touch a success, a REST caller (TorchServe would replace our JSON body) or
    a different error. The body names the request's id, or, for several, all their ids
    (``request_ids``).
    """
    for idx, answer in enumerate(answers):
        if answer.status < 400 or not is_grpc(context, idx):
            return None
    bodies = [json.loads(answer.body) for answer in answers]
    errors = {(a.status, b["error"], b["message"]) for a, b in zip(answers, bodies, strict=True)}
    if len(errors) != 1:
        return None
    status, kind, message = errors.pop()
    ids = [body["request_id"] for body in bodies]
    named = {"request_id": ids[0]} if len(ids) == 1 else {"request_ids": ids}
    body = {"error": kind, "message": message, **named}
    return status, json.dumps(body).encode("utf-8")


def record(context: Any, name: str, value: float, unit: str, kind: str, **dims: str) -> None:
    """Emit one custom metric; dimensions ``dims`` + ModelName + Level, as metrics.yaml declares."""
    if context is None or context.metrics is None:  # None: a warm-up run
        return
    dimensions = [Dimension(k, v) for k, v in dims.items()]
    dimensions.append(Dimension("ModelName", context.model_name or MODEL_NAME))
    dimensions.append(Dimension("Level", "Model"))
    context.metrics.add_metric(
        name=name, value=value, unit=unit, dimensions=dimensions, metric_type=MetricTypes(kind)
    )


class ColorizerHandler:
    """TorchServe entry point: ``initialize`` once per worker, then ``handle`` per batch."""

    def __init__(self) -> None:
        self.pipeline: ColorizePipeline | None = None
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.batch_seconds = 0.0  # running average of a batch's seconds (the deadline margin)
        self.initialized = False

    def initialize(self, context: Any) -> None:
        """Load the TorchScript model of the archive on TorchServe's device; warm it up."""
        props = context.system_properties
        settings = (context.model_yaml_config or {}).get("handler", {}) or {}
        model_file = Path(props["model_dir"]) / context.manifest["model"]["serializedFile"]
        device = worker_device(props.get("gpu_id"))
        if settings.get("device") == "cuda" and device.type != "cuda":
            # The gpu profile's batch of 64 cannot even warm up within its startupTimeout
            # on a CPU node: refuse at once, in words, rather than restart for ever.
            reason = (
                "this archive's profile needs a CUDA GPU and torch sees none here; run the "
                "cpu archive (colorizer-cpu.mar, the cpu overlay) on CPU nodes"
            )
            log.error("%s %s", CANNOT_START, reason)  # `colorizer serve` stops on this line
            raise RuntimeError(reason)
        if settings.get("threads"):  # else torch's default: OMP_NUM_THREADS or all cores
            torch.set_num_threads(int(settings["threads"]))
        batch_size = int(props.get("batch_size") or 1)
        try:
            self.pipeline = ColorizePipeline.load(
                model_file, device, settings.get("precision", "auto"), probe_batch=batch_size
            )
        except PrecisionUnusable as exc:
            log.error("%s %s", CANNOT_START, exc)  # `colorizer serve` stops on this line
            raise
        self.max_pixels = int(settings.get("max_pixels", DEFAULT_MAX_PIXELS))
        self.warm_up(batch_size)
        log.info(
            "colorizer handler ready: device=%s dtype=%s threads=%d batch_size=%s max_pixels=%d "
            "serving=%s; %s",
            device,
            str(self.pipeline.dtype).removeprefix("torch."),
            torch.get_num_threads(),
            props.get("batch_size"),
            self.max_pixels,
            Path(serving.__file__).parent,
            self.pipeline.precision_reason,
        )
        self.initialized = True

    def warm_up(self, max_batch: int) -> None:
        """Run each batch size up to ``max_batch`` a few times along the served path (decode,
        network, finish, JPEG encode) on a small photo.

        TorchScript specializes the graph per input shape, and nvJPEG creates its handles on
        first use: untouched, the first requests of each batch size would take seconds
        instead of milliseconds.
        """
        buffer = io.BytesIO()
        Image.new("L", WARMUP_SIZE, 128).save(buffer, format="JPEG")
        photo = PhotoRequest(buffer.getvalue(), format="jpeg")
        for size in range(1, max_batch + 1):
            for _ in range(WARMUP_RUNS):
                report = colorize_requests(self.pipeline, [photo] * size, self.max_pixels)
                failed = [a for a in report.answers if a.status != 200]
                if failed:
                    raise RuntimeError(f"warm-up failed: {failed[0].body[:300]!r}")

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        """One response body per request, in order; status and Content-Type set per request."""
        record(context, BATCH_METRIC, len(data), "count", "histogram")
        requests = [photo_request(context, idx, request) for idx, request in enumerate(data)]
        report = colorize_requests(
            self.pipeline,
            requests,
            self.max_pixels,
            expected_s=self.batch_seconds,
            log_requests=True,
        )
        self.batch_seconds = updated_batch_seconds(self.batch_seconds, report)
        for megapixels in report.megapixels:
            record(context, MEGAPIXELS_METRIC, megapixels, "MP", "histogram")
        for stage, seconds in report.seconds.items():
            record(context, STAGE_METRIC, seconds, "s", "histogram", Stage=stage)
        for idx, answer in enumerate(report.answers):
            respond(context, idx, answer)
        bodies = [answer.body for answer in report.answers]
        failure = grpc_batch_failure(context, report.answers)
        if failure is not None:  # TorchServe maps the code to a gRPC status (GRPCUtils)
            status, body = failure
            raise PredictionException(body.decode("utf-8"), status)
        return bodies


def updated_batch_seconds(average: float, report: BatchReport) -> float:
    """The running average of batch seconds after ``report`` (unchanged when no photo of
    the batch reached the network)."""
    if "inference" not in report.seconds:
        return average
    spent = sum(report.seconds.values())
    if average == 0.0:
        return spent
    return (1 - BATCH_SECONDS_WEIGHT) * average + BATCH_SECONDS_WEIGHT * spent


def request_text(context: Any, idx: int, request: dict[str, Any], header: str) -> str | None:
    """Metadata ``header`` of request ``idx``: the REST header, else the gRPC input key (or
    multipart field) of the same name in lower case."""
    value = request_header(context, idx, header)
    return value if value is not None else request_option(request, header.lower())


def request_meta(
    context: Any, idx: int, request: dict[str, Any]
) -> tuple[RequestMeta, InvalidOption | None]:
    """Request ``idx``'s id, trace context and deadline, and what was wrong with them.

    An unusable id or deadline fails the request (the error); the request then carries
    TorchServe's id, so its answer and log line still have one.
    """
    server_id = context.get_request_id(idx) or new_request_id()
    traceparent = parse_traceparent(request_text(context, idx, request, TRACEPARENT_HEADER))
    try:
        request_id = parse_request_id(request_text(context, idx, request, REQUEST_ID_HEADER))
        deadline = parse_deadline(request_text(context, idx, request, DEADLINE_HEADER))
    except InvalidOption as exc:
        return RequestMeta(server_id, traceparent, server_id=server_id), exc
    return RequestMeta(request_id or server_id, traceparent, deadline, server_id), None


def with_form_fields(context: Any, idx: int, request: dict[str, Any]) -> dict[str, Any]:
    """``request`` with a multipart body the front passed on unread (``serving.runtime.forms``)
    replaced by its fields; other requests as they are. Raises TooManyInputs, InvalidOption."""
    content_type = request_header(context, idx, "Content-Type")
    if not is_form(content_type) or not isinstance(request.get("body"), (bytes, bytearray)):
        return request
    fields = parse_form(bytes(request["body"]), content_type)
    return {**{k: v for k, v in request.items() if k != "body"}, **fields}


def photo_request(context: Any, idx: int, request: dict[str, Any]) -> PhotoRequest:
    """TorchServe's request ``idx`` as a ``PhotoRequest`` (the photo, or why there is none)."""
    form_error: ColorizerError | None = None
    try:
        request = with_form_fields(context, idx, request)
    except (TooManyInputs, InvalidOption) as exc:
        form_error = exc
    meta, invalid = request_meta(context, idx, request)
    try:
        photo: bytes | Exception = invalid or form_error or request_image(request)
    except (EmptyInput, NotAnImage) as exc:
        photo = exc
    return PhotoRequest(
        photo,
        format=request_option(request, "format"),
        quality=request_option(request, "quality"),
        accept=request_header(context, idx, "Accept"),
        meta=meta,
    )


def respond(context: Any, idx: int, answer: Answer) -> None:
    """Set request ``idx``'s status, Content-Type and headers; count it if it is an error."""
    if answer.error is not None:
        record(context, ERRORS_METRIC, 1, "count", "counter", Kind=answer.error)
    context.set_response_status(
        code=answer.status, phrase=HTTPStatus(answer.status).phrase, idx=idx
    )
    context.set_response_content_type(idx, answer.content_type)
    for name, value in answer.headers.items():
        context.set_response_header(idx, name, value)
