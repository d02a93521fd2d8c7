"""TorchServe handler: a thin adapter from TorchServe's request batch to ``serving/``.

One request is one photo:

- bytes: the REST raw body, or the multipart field / gRPC input key ``data``;
- options: ``format`` (jpeg|png|webp) and ``quality`` (1-100) as REST query parameters,
  multipart fields or gRPC input keys; without ``format``, the ``Accept`` header, then
  the input's own format (see ``serving.runtime.imageio.choose_output_format``).

Every request gets its own status code and Content-Type. A bad photo fails only its own
request, with the JSON body of ``serving.runtime.errors.error_response``; the worker never dies
on bad input.

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
import time
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
    CONTENT_TYPES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_QUALITY,
    INPUT_FORMATS_HUMAN,
    MODEL_NAME,
)
from serving.runtime.errors import ColorizerError, EmptyInput, NotAnImage, error_response
from serving.runtime.imageio import (
    DecodedImage,
    choose_output_format,
    decode_images,
    encode_images,
    parse_quality,
)
from serving.runtime.pipeline import ColorizePipeline
from serving.runtime.precision import PrecisionUnusable

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
IMAGE_KEYS = ("data", "body")  # multipart field / gRPC key first, then the raw REST body
WARMUP_RUNS = 2  # TorchScript's profiling executor optimizes a shape on its second call
WARMUP_SIZE = (64, 48)  # width, height of the warm-up photo

# A decoded request waiting for the network: (index in the batch, image, format, quality).
Job = tuple[int, DecodedImage, str, int]

# Custom metrics, declared in serving/launcher/metrics.yaml (dimension order matters there).
STAGE_METRIC = "colorizer_stage_seconds"
BATCH_METRIC = "colorizer_batch_size"
MEGAPIXELS_METRIC = "colorizer_input_megapixels"
ERRORS_METRIC = "colorizer_errors_total"


def pick_device(gpu_id: int | None) -> torch.device:
    """CUDA device ``gpu_id`` when TorchServe assigned one and CUDA works, else the CPU."""
    if gpu_id is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        log.warning("TorchServe assigned GPU %s but CUDA is not available; using the CPU", gpu_id)
        return torch.device("cpu")
    return torch.device("cuda", int(gpu_id))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a stage's time is its own (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def grpc_batch_failure(context: Any, responses: list[bytes | None]) -> tuple[int, bytes] | None:
    """(HTTP status, JSON body) to fail the whole batch with, so gRPC callers get a status.

    Only when every request came over gRPC and all failed with one identical answer: a
    batch failure gives each of its callers the same code and message, so it must not
    touch a success, a REST caller (TorchServe would replace our JSON body) or a
    different error.
    """
    answers = set()
    for idx, body in enumerate(responses):
        status = context.get_response_status(idx)[0]
        if status is None or status < 400 or not is_grpc(context, idx):
            return None
        answers.add((status, body))
    return answers.pop() if len(answers) == 1 else None


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
        self.initialized = False

    def initialize(self, context: Any) -> None:
        """Load the TorchScript model of the archive on TorchServe's device; warm it up."""
        props = context.system_properties
        settings = (context.model_yaml_config or {}).get("handler", {}) or {}
        model_file = Path(props["model_dir"]) / context.manifest["model"]["serializedFile"]
        device = pick_device(props.get("gpu_id"))
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
        photo = buffer.getvalue()
        for size in range(1, max_batch + 1):
            for _ in range(WARMUP_RUNS):
                images = decode_images([photo] * size, self.max_pixels, self.pipeline.device)
                colorized = self.inference(images, context=None)
                encode_images(colorized, [None] * size, ["jpeg"] * size, [DEFAULT_QUALITY] * size)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        """One response body per request, in order; status and Content-Type set per request."""
        record(context, BATCH_METRIC, len(data), "count", "histogram")
        responses: list[bytes | None] = [None] * len(data)
        jobs = self.preprocess(data, context, responses)
        if jobs:
            try:
                colorized = self.inference([job[1] for job in jobs], context)
            except Exception as exc:  # e.g. out of memory: fail this batch, keep the worker
                log.exception("colorize failed for a batch of %d", len(jobs))
                for idx, *_ in jobs:
                    responses[idx] = self.fail(context, idx, exc)
            else:
                self.postprocess(jobs, colorized, context, responses)
        failure = grpc_batch_failure(context, responses)
        if failure is not None:  # TorchServe maps the code to a gRPC status (GRPCUtils)
            status, body = failure
            raise PredictionException(body.decode("utf-8"), status)
        return [b"" if body is None else body for body in responses]

    def preprocess(
        self, data: list[dict[str, Any]], context: Any, responses: list[bytes | None]
    ) -> list[Job]:
        """Decode each request into a Job; a failure fills its slot of ``responses`` instead.

        The photos of a batch are decoded together (``decode_images``: nvJPEG straight onto
        the GPU where the pipeline runs on one, Pillow otherwise).
        """
        start = time.perf_counter()
        received: list[tuple[int, bytes, int]] = []  # (index, photo bytes, quality)
        for idx, request in enumerate(data):
            try:
                quality = parse_quality(request_option(request, "quality"))
                received.append((idx, request_image(request), quality))
            except Exception as exc:
                responses[idx] = self.fail(context, idx, exc)
        decoded = decode_images(
            [body for _, body, _ in received], self.max_pixels, self.pipeline.device
        )
        jobs = []
        for (idx, _, quality), image in zip(received, decoded, strict=True):
            try:
                if isinstance(image, Exception):
                    raise image
                fmt = choose_output_format(
                    request_option(data[idx], "format"),
                    request_header(context, idx, "Accept"),
                    image.source_format,
                )
            except Exception as exc:
                responses[idx] = self.fail(context, idx, exc)
                continue
            record(context, MEGAPIXELS_METRIC, image.megapixels, "MP", "histogram")
            jobs.append((idx, image, fmt, quality))
        record(context, STAGE_METRIC, time.perf_counter() - start, "s", "histogram", Stage="decode")
        return jobs

    def inference(self, images: list[DecodedImage], context: Any) -> list[torch.Tensor]:
        """Decoded photos -> colorized RGB, (3, H_i, W_i) uint8 on the pipeline's device."""
        pipeline = self.pipeline
        start = time.perf_counter()
        batch = pipeline.prepare(images)
        sync(pipeline.device)
        prepared = time.perf_counter()
        ab = pipeline.infer(batch)
        sync(pipeline.device)
        inferred = time.perf_counter()
        colorized = pipeline.finish_images(batch, ab)
        sync(pipeline.device)
        done = time.perf_counter()
        for stage, seconds in (
            ("preprocess", prepared - start),
            ("inference", inferred - prepared),
            ("postprocess", done - inferred),
        ):
            record(context, STAGE_METRIC, seconds, "s", "histogram", Stage=stage)
        return colorized

    def postprocess(
        self,
        jobs: list[Job],
        colorized: list[torch.Tensor],
        context: Any,
        responses: list[bytes | None],
    ) -> None:
        """Encode each result in its requested format; set status 200 and its Content-Type."""
        start = time.perf_counter()
        encoded = encode_images(
            colorized,
            [image.alpha for _, image, _, _ in jobs],
            [fmt for _, _, fmt, _ in jobs],
            [quality for *_, quality in jobs],
        )
        for (idx, _, fmt, _), body in zip(jobs, encoded, strict=True):
            if isinstance(body, Exception):
                responses[idx] = self.fail(context, idx, body)
                continue
            responses[idx] = body
            context.set_response_status(code=200, phrase="OK", idx=idx)
            context.set_response_content_type(idx, CONTENT_TYPES[fmt])
        record(context, STAGE_METRIC, time.perf_counter() - start, "s", "histogram", Stage="encode")

    @staticmethod
    def fail(context: Any, idx: int, exc: BaseException) -> bytes:
        """Set request ``idx`` to the status and JSON body ``error_response`` maps ``exc`` to."""
        status, body = error_response(exc)
        if not isinstance(exc, ColorizerError):
            log.error("request %d failed unexpectedly", idx, exc_info=exc)
        record(context, ERRORS_METRIC, 1, "count", "counter", Kind=body["error"])
        context.set_response_status(code=status, phrase=HTTPStatus(status).phrase, idx=idx)
        context.set_response_content_type(idx, JSON_CONTENT_TYPE)
        return json.dumps(body).encode("utf-8")
