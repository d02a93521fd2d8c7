"""gRPC transport: ``InferenceAPIsService/Predictions`` with stubs built from TorchServe's protos.

``input = {"data": photo, "format": ..., "quality": ...}`` plus the request's id, deadline
and trace context as input keys (``x-request-id``, ``x-request-deadline``,
``traceparent``): TorchServe 0.12 passes the handler the input map, never the call's
metadata or gRPC deadline. Calls balance over every
address the target resolves to (``round_robin``), so ``dns:///headless-service:7070``
spreads over the pods.
"""

from __future__ import annotations

import json

import grpc

import protos
from serving.client.base import (
    MAX_MESSAGE_BYTES,
    WORKER_DIED,
    Colorized,
    ServiceError,
    refusal_from_json,
    sniff_content_type,
)
from serving.runtime.errors import GRPC_CODE_FOR_HTTP

# gRPC status code name -> HTTP status, for calls that end with a status of TorchServe's own.
HTTP_OF_GRPC_CODE = {
    **{code: status for status, code in GRPC_CODE_FOR_HTTP.items()},
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
}
# What TorchServe 0.12 answers, over gRPC, when it cannot serve a call right now; each is
# worth the same (idempotent) call again (serving/client/retry.py):
# - UNAVAILABLE: the server is unreachable, or grpc-java reset a call in flight on a
#   connection at its max age (grpc/grpc-java#9566; 3 of 176 calls at 4 in flight here);
# - the worker serving the call died: "Worker died." with RESOURCE_EXHAUSTED when the
#   frontend saw exit code 137 (kill -9; reported as 413; REST says 507), else INTERNAL;
# - the queue is full: INTERNAL "Model ... has no worker to serve inference request"
#   (REST says 503).
# Our own refusals (the JSON error body as the message) are never retried.
TRANSIENT_MESSAGES = {
    WORKER_DIED: (507, "worker_died"),
    "has no worker to serve inference request": (503, "queue_full"),
}


def error_from_rpc(exc: grpc.RpcError) -> ServiceError:
    """ServiceError for a call that ended with a non-OK status."""
    code = exc.code().name
    details = exc.details() or ""
    # TorchServe appends the exception class on a second line of the message.
    refusal = refusal_from_json(details.split("\n", 1)[0])
    if refusal is not None:
        return refusal
    if code == "UNAVAILABLE":
        return ServiceError(503, "grpc_unavailable", details, retryable=True)
    if code in ("INTERNAL", "RESOURCE_EXHAUSTED"):
        for marker, (status, kind) in TRANSIENT_MESSAGES.items():
            if marker in details:
                return ServiceError(status, kind, details, retryable=True)
    return ServiceError(HTTP_OF_GRPC_CODE.get(code, 500), f"grpc_{code.lower()}", details)


class GrpcTransport:
    """One gRPC target (``host:7070`` or ``dns:///name:7070``); thread-safe."""

    def __init__(self, target: str, *, model_name: str, timeout: float) -> None:
        self.target = target
        self.model_name = model_name
        self.timeout = timeout  # for ping; colorize gets each try's share of the deadline
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

    def colorize(
        self, image: bytes, options: dict[str, str], timeout: float, meta: dict[str, str]
    ) -> Colorized:
        """One try with ``timeout`` as its gRPC deadline and ``meta`` (request id, deadline,
        trace) as lower-case input keys; ServiceError says whether to retry."""
        texts = {**options, **{k.lower(): v for k, v in meta.items()}}
        inputs = {"data": image, **{k: v.encode() for k, v in texts.items()}}
        request = self._stubs.inference_pb2.PredictionsRequest(
            model_name=self.model_name, input=inputs
        )
        try:
            prediction = self._stub.Predictions(request, timeout=timeout).prediction
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        if prediction.startswith(b"{"):  # refused inside a batch with good requests: in-band
            refusal = refusal_from_json(prediction)
            text = prediction[:200].decode("utf-8", "replace")
            raise refusal or ServiceError(502, "bad_response", text)
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
