"""``ColorizerClient``: colorize photos through a running service, over REST or gRPC."""

from __future__ import annotations

from serving.client.base import DEFAULT_TIMEOUT_S, Colorized
from serving.runtime.constants import MODEL_NAME


class ColorizerClient:
    """Colorize photos over REST (``url``) or gRPC (``grpc_target``): give exactly one.

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
    ) -> None:
        if (url is None) == (grpc_target is None):
            raise ValueError("give exactly one of url (REST) or grpc_target (gRPC)")
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

        Raises ServiceError when the service refuses it or cannot be reached.
        """
        options = {k: str(v) for k, v in (("format", fmt), ("quality", quality)) if v is not None}
        return self.transport.colorize(image, options)

    def ping(self) -> bool:
        """True when the service reports itself healthy."""
        return self.transport.ping()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> ColorizerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
