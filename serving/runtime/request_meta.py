"""What a request says about itself besides the photo: its id, its trace context, its
deadline; parsed from the text a caller sent (``constants`` names the headers).

Nothing here knows about TorchServe or torch: the handler reads the texts from a REST
request's headers or a gRPC request's input keys, and ``service`` uses the result.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from serving.runtime.constants import (
    DEADLINE_HEADER,
    MAX_REQUEST_ID_CHARS,
    REQUEST_ID_HEADER,
)
from serving.runtime.errors import InvalidOption

# Printable ASCII without spaces: safe in a header and in a log line.
_REQUEST_ID = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID_CHARS}}}")
# W3C Trace Context, version 00: version-traceid-parentid-flags, lower-case hex.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# Deadlines a caller can mean: after 2001 and before 2286, in milliseconds.
_DEADLINE_MS = (1e12, 1e13)


@dataclass(frozen=True)
class RequestMeta:
    """A request's id (always set: the caller's, else the server's), the trace context it
    came with (or None), when its caller gives up (Unix time in seconds, or None: never)
    and the server's own id for it (TorchServe's, which its REST responses carry as
    X-Request-Id; None outside TorchServe)."""

    request_id: str
    traceparent: str | None = None
    deadline: float | None = None
    server_id: str | None = None

    @property
    def callers_id(self) -> str | None:
        """The id the caller sent, or None when ``request_id`` is the server's."""
        return None if self.request_id == self.server_id else self.request_id

    @property
    def trace_id(self) -> str | None:
        """The 32-hex trace id of ``traceparent``, or None."""
        return self.traceparent.split("-")[1] if self.traceparent else None


def new_request_id() -> str:
    """A fresh id: 32 lower-case hex digits (a random UUID)."""
    return uuid.uuid4().hex


def parse_request_id(value: str | None) -> str | None:
    """The caller's request id as sent, or None when none was sent.

    Raises InvalidOption for an id that is not 1-128 printable ASCII characters without
    spaces: it could not be echoed in a header or logged as one word.
    """
    if value is None or value == "":
        return None
    if not _REQUEST_ID.fullmatch(value):
        raise InvalidOption(
            f"{REQUEST_ID_HEADER} must be 1-{MAX_REQUEST_ID_CHARS} printable ASCII characters "
            f"without spaces, got {value[:40]!r}{'...' if len(value) > 40 else ''}"
        )
    return value


def parse_traceparent(value: str | None) -> str | None:
    """A valid W3C ``traceparent`` (version 00 layout, non-zero ids), else None.

    The W3C spec has a receiver ignore a malformed traceparent rather than fail the
    request, so this never raises.
    """
    if not value:
        return None
    value = value.strip()
    match = _TRACEPARENT.fullmatch(value)
    if match is None or match[1] == "ff":
        return None
    if set(match[2]) == {"0"} or set(match[3]) == {"0"}:
        return None
    return value


def parse_deadline(value: str | None) -> float | None:
    """Unix time in seconds from ``DEADLINE_HEADER``'s milliseconds; None when not sent.

    Raises InvalidOption for anything but a whole number of milliseconds since the epoch.
    """
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    if not text.isdigit() or not _DEADLINE_MS[0] <= int(text) < _DEADLINE_MS[1]:
        raise InvalidOption(
            f"{DEADLINE_HEADER} must be Unix time in whole milliseconds "
            f"(e.g. 1767225600000), got {text[:40]!r}"
        )
    return int(text) / 1000.0


def deadline_header_value(deadline_s: float) -> str:
    """``DEADLINE_HEADER``'s text for a deadline at Unix time ``deadline_s`` (seconds)."""
    return str(int(deadline_s * 1000))
