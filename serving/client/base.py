"""What both transports share: the result type, the error type, and decoding a refusal.

TorchServe's gRPC frontend (0.12) returns a refused request as a successful call whose
``prediction`` is the JSON error body; REST returns that body with a 4xx/5xx status.
Both become ``ServiceError`` here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from serving.runtime.constants import CONTENT_TYPES, HTTP_PORT
from serving.runtime.errors import ColorizerError

DEFAULT_URL = f"http://127.0.0.1:{HTTP_PORT}"
DEFAULT_TIMEOUT_S = 120.0
MAX_MESSAGE_BYTES = 100 * 2**20  # = max_request_size in serving/launcher/config.properties
# Error kind -> HTTP status, from the server's own typed errors (gRPC carries only the kind).
STATUS_OF_KIND = {
    cls.kind: cls.http_status for cls in (ColorizerError, *ColorizerError.__subclasses__())
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
