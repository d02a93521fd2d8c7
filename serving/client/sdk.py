"""``ColorizerClient``: colorize photos through a running service, over REST or gRPC."""

from __future__ import annotations

import threading

from serving.client.base import DEFAULT_TIMEOUT_S, Colorized, ServiceError
from serving.client.retry import DEFAULT_RETRY, RetryPolicy, call_with_retries
from serving.runtime.constants import MODEL_NAME


class ColorizerClient:
    """Colorize photos over REST (``url``) or gRPC (``grpc_target``): give exactly one.

    ``timeout`` is the deadline of one ``colorize`` call, retries included (over gRPC each
    try's share of it is the call's gRPC deadline). Calls the service could not serve
    right now (REST 503/507, unreachable, gRPC UNAVAILABLE, a full queue, a worker that
    died) are retried under ``retry`` (``RetryPolicy(attempts=1)``: never); refusals
    (4xx, ``internal`` 500) never are. Colorizing is idempotent, so a retry is safe.

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
        self, image: bytes, fmt: str | None = None, quality: int | None = None
    ) -> Colorized:
        """Colorize one encoded photo; ``fmt`` jpeg|png|webp, ``quality`` 1-100 (lossy only).

        Raises ServiceError when the service refuses it, or cannot serve it before the
        deadline.
        """
        options = {k: str(v) for k, v in (("format", fmt), ("quality", quality)) if v is not None}
        return call_with_retries(
            lambda left: self.transport.colorize(image, options, left),
            self.timeout,
            self.retry,
            on_retry=self._count_retry,
        )

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
