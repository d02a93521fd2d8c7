"""What both transports share: the result type, the error type, and decoding a refusal.

REST returns a refused request's JSON error body with a 4xx/5xx status; gRPC returns it
as the message of a non-OK status, or (a bad request batched with good ones, TorchServe
0.12) as the ``prediction`` of a call that ended OK. All become ``ServiceError`` here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from serving.runtime.constants import CONTENT_TYPES, HTTP_PORT
from serving.runtime.errors import ColorizerError

DEFAULT_URL = f"http://127.0.0.1:{HTTP_PORT}"
DEFAULT_TIMEOUT_S = 120.0
MAX_MESSAGE_BYTES = 100 * 2**20  # = max_request_size in serving/launcher/config.properties
# TorchServe's message when the worker running a request died. The status beside it depends
# on whether the frontend already saw the worker's exit code: 507 (REST) / RESOURCE_EXHAUSTED
# (gRPC) for a killed worker, else 500 / INTERNAL (seen both from one kill -9 of two workers).
WORKER_DIED = "Worker died."
# Error kind -> HTTP status, from the server's own typed errors (gRPC carries only the kind).
STATUS_OF_KIND = {
    cls.kind: cls.http_status for cls in (ColorizerError, *ColorizerError.__subclasses__())
}


class ServiceError(Exception):
    """The service refused or failed a request: HTTP status, error kind, message.

    ``retryable``: the service could not serve it right now (queue full, worker died,
    unreachable) and the same call may succeed later; ``retry_after``: the seconds the
    server asked to wait (REST Retry-After), if it did; ``request_id``: the id the call
    was sent with (``ColorizerClient`` sets it), to find it in the server's logs;
    ``server_id``: the server's own id for it (TorchServe's REST X-Request-Id), if known.
    """

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        request_id: str | None = None,
        server_id: str | None = None,
    ) -> None:
        super().__init__(status, kind, message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.request_id = request_id
        self.server_id = server_id

    def __str__(self) -> str:
        ids = [f"request id {self.request_id}"] if self.request_id else []
        if self.server_id and self.server_id != self.request_id:
            ids.append(f"server id {self.server_id}")
        return f"{self.status} {self.kind}: {self.message}" + (
            f" ({', '.join(ids)})" if ids else ""
        )


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


def error_from_body(status: int, body: bytes, **flags) -> ServiceError:
    """ServiceError from a JSON error body: ours {error, message} or TorchServe's {code, type}.

    ``flags``: ``retryable`` / ``retry_after`` for ServiceError.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ServiceError(status, "http_error", body[:200].decode("utf-8", "replace"), **flags)
    if not isinstance(data, dict):
        return ServiceError(status, "http_error", str(data)[:200], **flags)
    kind = str(data.get("error") or data.get("type") or "http_error")
    request_id = data.get("request_id") if isinstance(data.get("request_id"), str) else None
    return ServiceError(status, kind, str(data.get("message", "")), request_id=request_id, **flags)


def refusal_from_json(text: bytes | str) -> ServiceError | None:
    """ServiceError from the service's own JSON error body {error, message}; None if not one.

    Its status comes from the error kind (the server's typed errors), as gRPC carries none.
    """
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return None
    kind = data["error"]
    request_id = data.get("request_id") if isinstance(data.get("request_id"), str) else None
    status = STATUS_OF_KIND.get(kind, 500)
    return ServiceError(status, kind, str(data.get("message", "")), request_id=request_id)
