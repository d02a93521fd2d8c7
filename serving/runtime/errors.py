"""Typed errors raised at the service boundary, and the ONE place that maps them to status codes.

Every error carries a machine-readable ``kind`` and a human message that says what
was wrong and what is accepted. ``error_response`` turns any exception into
(HTTP status, JSON body); unknown exceptions become a generic 500 ``internal``.
"""

from __future__ import annotations

from typing import Any

from serving.runtime.constants import EXPIRED_RETRY_AFTER_S


class ColorizerError(Exception):
    """Base class: a request the service refuses, with its status, and the seconds a
    caller should wait before trying again (``Retry-After``; None: not worth a retry)."""

    kind = "internal"
    http_status = 500
    retry_after_s: int | None = None

    def to_body(self) -> dict[str, Any]:
        return {"error": self.kind, "message": str(self)}


class EmptyInput(ColorizerError):
    kind = "empty_input"
    http_status = 400


class NotAnImage(ColorizerError):
    kind = "not_an_image"
    http_status = 400


class CorruptImage(ColorizerError):
    kind = "corrupt_image"
    http_status = 400


class UnsupportedFormat(ColorizerError):
    kind = "unsupported_format"
    http_status = 400


class InvalidOption(ColorizerError):
    kind = "invalid_option"
    http_status = 400


class ImageTooLarge(ColorizerError):
    kind = "image_too_large"
    http_status = 413


class DeadlineExceeded(ColorizerError):
    """The caller's deadline (``constants.DEADLINE_HEADER``) passed, or would pass, before
    the photo's turn ended: it was skipped without running the network."""

    kind = "deadline_exceeded"
    http_status = 504
    retry_after_s = EXPIRED_RETRY_AFTER_S


# Refusals of the front (serving/front/), before a request reaches TorchServe. nginx.conf
# writes the REST ones' JSON bodies itself; tests/unit/test_front.py holds it to these kinds.


class BodyTooLarge(ColorizerError):
    """The body (REST) or message (gRPC) is over TorchServe's max_request_size."""

    kind = "body_too_large"
    http_status = 413


class TooManyInputs(ColorizerError):
    """A gRPC request whose input map has more entries than the API has keys."""

    kind = "too_many_inputs"
    http_status = 400


class UnsupportedMediaType(ColorizerError):
    kind = "unsupported_media_type"
    http_status = 415


class RequestTimeout(ColorizerError):
    kind = "request_timeout"
    http_status = 408


class HeadersTooLarge(ColorizerError):
    kind = "headers_too_large"
    http_status = 431


class NotFound(ColorizerError):
    kind = "not_found"
    http_status = 404


class BackendUnavailable(ColorizerError):
    """The front is up but TorchServe behind it does not answer."""

    kind = "unavailable"
    http_status = 503
    retry_after_s = 1


# HTTP status -> gRPC status code, the same as TorchServe 0.12's own table
# (org.pytorch.serve.util.GRPCUtils), which applies it when the handler fails a whole batch:
# the handler does so for gRPC batches whose requests all failed alike (a request batched
# alone always), with the JSON body as the status message. A bad gRPC request batched with
# good ones completes OK with the JSON body as its prediction (see handlers/).
GRPC_CODE_FOR_HTTP = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

ERROR_KINDS = tuple(
    cls.kind
    for cls in (
        EmptyInput,
        NotAnImage,
        CorruptImage,
        UnsupportedFormat,
        InvalidOption,
        ImageTooLarge,
        DeadlineExceeded,
        BodyTooLarge,
        TooManyInputs,
        UnsupportedMediaType,
        RequestTimeout,
        HeadersTooLarge,
        NotFound,
        BackendUnavailable,
        ColorizerError,
    )
)


def error_response(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """Map any exception to (HTTP status, JSON body). Unknown errors hide their details."""
    if isinstance(exc, ColorizerError):
        return exc.http_status, exc.to_body()
    return 500, {"error": "internal", "message": "internal error while colorizing; see server logs"}
