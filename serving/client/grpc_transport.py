"""gRPC transport: ``InferenceAPIsService/Predictions`` with stubs built from TorchServe's protos.

``input = {"data": photo, "format": ..., "quality": ...}``. Calls balance over every
address the target resolves to (``round_robin``), so ``dns:///headless-service:7070``
spreads over the pods.
"""

from __future__ import annotations

import json
import time

import grpc

import protos
from serving.client.base import (
    MAX_MESSAGE_BYTES,
    STATUS_OF_KIND,
    Colorized,
    ServiceError,
    error_from_body,
    sniff_content_type,
)
from serving.runtime.errors import GRPC_CODE_FOR_HTTP

# Colorizing is idempotent, so calls that end UNAVAILABLE are retried. TorchServe closes
# gRPC connections at their max age (serving/launcher/config.properties), and its grpc-java
# sometimes resets calls in flight on such a connection (grpc/grpc-java#9566): measured
# here, 3 of 176 calls at 4 in flight; gRPC's own retry policy did not recover them.
GRPC_ATTEMPTS = 3
GRPC_RETRY_BACKOFF_S = 0.2
# gRPC status code name -> HTTP status, for calls the gRPC frontend itself fails.
HTTP_OF_GRPC_CODE = {
    **{code: status for status, code in GRPC_CODE_FOR_HTTP.items()},
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
}


class GrpcTransport:
    """One gRPC target (``host:7070`` or ``dns:///name:7070``); thread-safe."""

    def __init__(self, target: str, *, model_name: str, timeout: float) -> None:
        self.target = target
        self.model_name = model_name
        self.timeout = timeout
        self._stubs = protos.load()
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.lb_policy_name", "round_robin"),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = self._stubs.inference_pb2_grpc.InferenceAPIsServiceStub(self._channel)

    def colorize(self, image: bytes, options: dict[str, str]) -> Colorized:
        inputs = {"data": image, **{k: v.encode() for k, v in options.items()}}
        request = self._stubs.inference_pb2.PredictionsRequest(
            model_name=self.model_name, input=inputs
        )
        for attempt in range(1, GRPC_ATTEMPTS + 1):
            try:
                prediction = self._stub.Predictions(request, timeout=self.timeout).prediction
                break
            except grpc.RpcError as exc:
                code = exc.code().name
                if code == "UNAVAILABLE" and attempt < GRPC_ATTEMPTS:
                    time.sleep(GRPC_RETRY_BACKOFF_S * attempt)
                    continue
                status = HTTP_OF_GRPC_CODE.get(code, 500)
                raise ServiceError(status, f"grpc_{code.lower()}", exc.details() or "") from exc
        if prediction.startswith(b"{"):  # a refused request: the JSON error body
            error = error_from_body(500, prediction)
            raise ServiceError(STATUS_OF_KIND.get(error.kind, 500), error.kind, error.message)
        return Colorized(prediction, sniff_content_type(prediction))

    def ping(self) -> bool:
        from google.protobuf import empty_pb2

        try:
            health = self._stub.Ping(empty_pb2.Empty(), timeout=self.timeout).health
        except grpc.RpcError:
            return False
        return json.loads(health).get("status") == "Healthy"

    def close(self) -> None:
        self._channel.close()
