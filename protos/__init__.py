"""gRPC interface of TorchServe, as Python stubs.

The stubs are generated at build time (``make protos`` = ``python -m protos.build``)
from the ``.proto`` files inside the installed TorchServe jar into
``protos/generated/``; they are never committed. ``load()`` imports them.
"""

from __future__ import annotations

from types import SimpleNamespace


def load() -> SimpleNamespace:
    """The generated modules: inference_pb2(_grpc), management_pb2(_grpc).

    Raises RuntimeError saying how to build them when they are missing.
    """
    try:
        from protos.generated import (
            inference_pb2,
            inference_pb2_grpc,
            management_pb2,
            management_pb2_grpc,
        )
    except ImportError as exc:
        raise RuntimeError(
            "gRPC stubs are not built; run `make protos` (or `python -m protos.build`)"
        ) from exc
    return SimpleNamespace(
        inference_pb2=inference_pb2,
        inference_pb2_grpc=inference_pb2_grpc,
        management_pb2=management_pb2,
        management_pb2_grpc=management_pb2_grpc,
    )
