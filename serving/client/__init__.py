"""The client SDK: ``ColorizerClient`` over REST or gRPC, and the commands built on it.

``ColorizerClient`` picks one transport (``rest.RestTransport`` or
``grpc_transport.GrpcTransport``); each transport owns its protocol's details and says
which failures are transient; ``retry`` retries those within the caller's deadline.
``colorize`` (batch files) and ``bench`` are the `colorizer` commands that use it.
"""

from serving.client.base import Colorized, ServiceError
from serving.client.retry import NO_RETRY, RetryPolicy
from serving.client.sdk import ColorizerClient

__all__ = ["NO_RETRY", "ColorizerClient", "Colorized", "RetryPolicy", "ServiceError"]
