"""The gRPC front: `python -m serving.front.grpc_front`, before TorchServe's gRPC port.

TorchServe 0.12 serves gRPC with grpc-java 1.50 and its shaded netty 4.1.79, open to
HTTP/2 reset floods (CVE-2023-44487, CVE-2025-55163), and it hands every entry of a
request's input map to a Python worker before the handler can refuse it (5 M empty
entries in 64 MB kept a worker busy 50 s). This front ends callers' HTTP/2 connections
in gRPC's C core (grpcio, which limits resets and streams), and passes on only
``InferenceAPIsService`` calls that fit:

- a message at most TorchServe's ``max_request_size`` (RESOURCE_EXHAUSTED above it);
- a ``PredictionsRequest`` whose input map has at most ``max_inputs`` entries
  (INVALID_ARGUMENT ``too_many_inputs`` otherwise, found without reading past the limit).

The message travels on as the caller's bytes; TorchServe's answer, or its status and
details, comes back unchanged, within the caller's deadline. Connections end after
``max_connection_age_ms`` so that callers re-resolve and spread over new replicas, and a
draining pod's callers move on within its preStop sleep.

The pod runs it as the container front-grpc (k8s/base/deployment.yaml) and `colorizer
serve` beside TorchServe, with the same config.properties TorchServe reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import grpc

from serving.runtime.constants import GRPC_PORT, MAX_FORM_PARTS
from serving.runtime.errors import GRPC_CODE_FOR_HTTP, ColorizerError, TooManyInputs

log = logging.getLogger("colorizer.grpc_front")

SERVICE_NAME = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
SERVICE = f"/{SERVICE_NAME}/"
UNARY_METHODS = ("Ping", "Predictions")  # what the colorizer's callers use
INPUT_FIELD = 3  # PredictionsRequest.input: map<string, bytes> = 3
MAX_INPUTS = MAX_FORM_PARTS  # the same cap as a multipart body's fields


@dataclass(frozen=True)
class GrpcFrontConfig:
    """Where the front listens and what it lets through. The sizes and the backend's port
    come from TorchServe's config.properties (``from_ts_config``), never typed twice."""

    listen: str = f"0.0.0.0:{GRPC_PORT}"
    backend: str = "127.0.0.1:9070"
    max_request_bytes: int = 100 * 1024 * 1024
    max_response_bytes: int = 100 * 1024 * 1024
    max_inputs: int = MAX_INPUTS
    # HTTP/2 streams one connection may have open at once.
    max_concurrent_streams: int = 100
    # Close connections after 30 s (gRPC adds up to 10% jitter); calls in flight on them
    # get max_connection_age_grace_ms (>= model-config.yaml's longest responseTimeout).
    max_connection_age_ms: int = 30_000
    max_connection_age_grace_ms: int = 120_000
    # Headers (metadata) a call may carry.
    max_metadata_bytes: int = 16 * 1024
    # On SIGTERM: stop taking calls, give those in flight this long, then exit 0.
    stop_grace_s: float = 30.0

    @classmethod
    def from_ts_config(cls, path: Path, **overrides: object) -> GrpcFrontConfig:
        """The config for TorchServe's config.properties at ``path``, with ``overrides``."""
        props = read_properties(path)
        derived: dict[str, object] = {
            "backend": f"{props['grpc_inference_address']}:{props['grpc_inference_port']}",
            "max_request_bytes": int(props.get("max_request_size", cls.max_request_bytes)),
            "max_response_bytes": int(props.get("max_response_size", cls.max_response_bytes)),
        }
        return cls(**{**derived, **{k: v for k, v in overrides.items() if v is not None}})


def parse_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a Java properties file (no continuations), comments skipped."""
    props = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith(("#", "!")):
            props[key.strip()] = value.strip()
    return props


def read_properties(path: Path) -> dict[str, str]:
    """``parse_properties`` of the file at ``path``."""
    return parse_properties(Path(path).read_text())


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Protobuf base-128 varint at ``pos``: (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def count_inputs(message: bytes, limit: int) -> int:
    """Entries of a serialized PredictionsRequest's input map, counting no further than
    ``limit + 1``: a flood of entries costs a few steps, not a parse of all of them.

    Walks the message's top-level fields (protobuf wire format); raises ValueError when
    the bytes are not a well-formed message. protobuf's parser has no way to stop early.
    """
    count = pos = 0
    while pos < len(message) and count <= limit:
        key, pos = _varint(message, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(message, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _varint(message, pos)
            pos += length
            count += field == INPUT_FIELD
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire_type} is not used by PredictionsRequest")
        if pos > len(message) or field == 0:
            raise ValueError("truncated message")
    return count


def check_predictions_request(message: bytes, config: GrpcFrontConfig) -> None:
    """Raise the ColorizerError TorchServe must not be handed ``message`` for. (Messages
    over ``max_request_bytes`` never get here: grpcio refuses them with RESOURCE_EXHAUSTED.)"""
    try:
        n = count_inputs(message, config.max_inputs)
    except ValueError as exc:
        raise TooManyInputs(f"the message is not a PredictionsRequest: {exc}") from None
    if n > config.max_inputs:
        raise TooManyInputs(
            f"the request's input map has more than {config.max_inputs} entries; the "
            "accepted keys are data, format, quality, x-request-id, traceparent and "
            "x-request-deadline"
        )


def status_of(exc: ColorizerError) -> tuple[grpc.StatusCode, str]:
    """gRPC status and details for a refusal: the code TorchServe would give its HTTP
    status, and the JSON body ColorizerClient reads as the refusal."""
    code = GRPC_CODE_FOR_HTTP.get(exc.http_status, "INTERNAL")
    return grpc.StatusCode[code], json.dumps(exc.to_body())


def _identity(data: bytes) -> bytes:
    return data


class Front:
    """Passes the colorizer's gRPC calls to TorchServe, after the checks above."""

    def __init__(self, config: GrpcFrontConfig) -> None:
        self.config = config
        self.refused = 0
        self._channel = grpc.aio.insecure_channel(
            config.backend,
            options=[
                ("grpc.max_send_message_length", config.max_request_bytes),
                ("grpc.max_receive_message_length", config.max_response_bytes),
            ],
        )
        self._calls = {
            name: self._channel.unary_unary(
                SERVICE + name, request_serializer=_identity, response_deserializer=_identity
            )
            for name in UNARY_METHODS
        }

    async def close(self) -> None:
        await self._channel.close()

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._forwarder(name),
                request_deserializer=_identity,
                response_serializer=_identity,
            )
            for name in UNARY_METHODS
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def _forwarder(self, name: str):
        call = self._calls[name]

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if name == "Predictions":
                try:
                    check_predictions_request(request, self.config)
                except ColorizerError as exc:
                    self.refused += 1
                    await context.abort(*status_of(exc))
            metadata = [
                (k, v) for k, v in context.invocation_metadata() or () if not k.startswith(":")
            ]
            try:
                return await call(request, timeout=context.time_remaining(), metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")

        return forward


def server_options(config: GrpcFrontConfig) -> list[tuple[str, int]]:
    """grpcio server options for ``config``."""
    return [
        ("grpc.max_receive_message_length", config.max_request_bytes),
        ("grpc.max_send_message_length", config.max_response_bytes),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        ("grpc.max_connection_age_ms", config.max_connection_age_ms),
        ("grpc.max_connection_age_grace_ms", config.max_connection_age_grace_ms),
        ("grpc.max_metadata_size", config.max_metadata_bytes),
        ("grpc.so_reuseport", 0),
    ]


async def serve(config: GrpcFrontConfig, ready: asyncio.Event | None = None) -> None:
    """Run the front until SIGTERM or SIGINT; then drain for ``stop_grace_s`` and return."""
    front = Front(config)
    server = grpc.aio.server(options=server_options(config))
    server.add_generic_rpc_handlers((front.handler(),))
    try:
        bound = server.add_insecure_port(config.listen)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {config.listen} (in use, or not an address here)")
    await server.start()
    log.warning("gRPC front on %s -> TorchServe %s", config.listen, config.backend)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    await server.stop(config.stop_grace_s)
    await front.close()
    log.warning("gRPC front stopped (%d calls refused)", front.refused)


def build_parser() -> argparse.ArgumentParser:
    """One flag per GrpcFrontConfig field (defaults: the config's), plus --ts-config."""
    p = argparse.ArgumentParser(
        prog="python -m serving.front.grpc_front", description=__doc__.split("\n", 1)[0]
    )
    p.add_argument("--ts-config", type=Path, required=True, help="TorchServe's config.properties")
    for f in fields(GrpcFrontConfig):
        if f.name in ("backend", "max_request_bytes", "max_response_bytes"):
            continue  # from --ts-config
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),
            default=None,
            help=f"default {f.default}",
        )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    overrides = {k: v for k, v in vars(args).items() if k != "ts_config"}
    config = GrpcFrontConfig.from_ts_config(args.ts_config, **overrides)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"grpc_front: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
