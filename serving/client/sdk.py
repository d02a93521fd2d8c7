"""``ColorizerClient``: colorize photos through a running service, over REST or gRPC."""

from __future__ import annotations

import threading
import time

from serving.client.base import DEFAULT_TIMEOUT_S, Colorized, ServiceError
from serving.client.retry import DEFAULT_RETRY, RetryPolicy, call_with_retries
from serving.runtime.constants import (
    DEADLINE_HEADER,
    MODEL_NAME,
    REQUEST_ID_HEADER,
    TRACEPARENT_HEADER,
)
from serving.runtime.request_meta import deadline_header_value, new_request_id


def call_meta(
    request_id: str | None, deadline: float | None, traceparent: str | None = None
) -> dict[str, str]:
    """What a call sends beside the photo (REST headers; gRPC input keys, lower-cased by
    the transport): its id (``request_id``, else a new one), its deadline (Unix seconds;
    None: none sent) and its trace context (None: none sent)."""
    meta = {REQUEST_ID_HEADER: request_id or new_request_id()}
    if deadline is not None:
        meta[DEADLINE_HEADER] = deadline_header_value(deadline)
    if traceparent:
        meta[TRACEPARENT_HEADER] = traceparent
    return meta


class ColorizerClient:
    """Colorize photos over REST (``url``) or gRPC (``grpc_target``): give exactly one.

    ``timeout`` is the deadline of one ``colorize`` call, retries included (over gRPC each
    try's share of it is the call's gRPC deadline). Calls the service could not serve
    right now (REST 503/507, unreachable, gRPC UNAVAILABLE, a full queue, a worker that
    died) are retried under ``retry`` (``RetryPolicy(attempts=1)``: never); refusals
    (4xx, ``internal`` 500) never are. Colorizing is idempotent, so a retry is safe.

    Each call sends its request id (``X-Request-Id``; generated unless given) and its
    deadline (``X-Request-Deadline``): the server skips a photo whose caller has given up.
    A ``ServiceError`` names the id, which the server's log lines carry too.

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
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if (url is None) == (grpc_target is None):
            raise ValueError("give exactly one of url (REST) or grpc_target (gRPC)")
        self.timeout = timeout
        self.retry = retry
        self.retries = 0  # retried tries so far, all calls together
        self._lock = threading.Lock()
        if url is not None:
            from serving.client.rest import RestTransport

            self.transport = RestTransport(
                url, model_name=model_name, timeout=timeout, pool_size=pool_size
            )
        else:
            from serving.client.grpc_transport import GrpcTransport

            self.transport = GrpcTransport(grpc_target, model_name=model_name, timeout=timeout)

    def colorize(
        self,
        image: bytes,
        fmt: str | None = None,
        quality: int | None = None,
        *,
        request_id: str | None = None,
        traceparent: str | None = None,
    ) -> Colorized:
        """Colorize one encoded photo; ``fmt`` jpeg|png|webp, ``quality`` 1-100 (lossy only).

        ``request_id``: sent as ``X-Request-Id`` on every try (default: a new random id);
        ``traceparent``: a W3C trace context to pass on. Raises ServiceError, naming the
        request id, when the service refuses the photo or cannot serve it before the
        deadline.
        """
        options = {k: str(v) for k, v in (("format", fmt), ("quality", quality)) if v is not None}
        meta = call_meta(request_id, time.time() + self.timeout, traceparent)
        try:
            return call_with_retries(
                lambda left: self.transport.colorize(image, options, left, meta),
                self.timeout,
                self.retry,
                on_retry=self._count_retry,
            )
        except ServiceError as exc:
            exc.request_id = exc.request_id or meta[REQUEST_ID_HEADER]
            raise

    def _count_retry(self, error: ServiceError) -> None:
        with self._lock:
            self.retries += 1

    def ping(self) -> bool:
        """True when the service reports itself healthy."""
        return self.transport.ping()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> ColorizerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
