"""The client SDK: ``ColorizerClient`` over REST or gRPC, and the commands built on it.

``ColorizerClient`` picks one transport (``rest.RestTransport`` or
``grpc_transport.GrpcTransport``); each transport owns its protocol's details and
retries. ``colorize`` (batch files) and ``bench`` are the `colorizer` commands that use it.
"""

from serving.client.base import Colorized, ServiceError
from serving.client.sdk import ColorizerClient

__all__ = ["ColorizerClient", "Colorized", "ServiceError"]
