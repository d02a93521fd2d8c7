"""The TorchServe handler in-process (no Java): inside TorchServe's own ``Service`` and
``Context``, fed batches shaped like the frontend's, with the real metrics cache reading
serving/launcher/metrics.yaml. Used by the unit tests and, on CUDA, by tests/gpu."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.service import Service

from handlers.colorizer_handler import ColorizerHandler
from serving.launcher.server import METRICS_CONFIG
from serving.runtime.constants import MODEL_NAME


@dataclass
class Response:
    status: int
    content_type: str | None
    body: bytes
    headers: dict[str, str]

    def json(self) -> dict:
        assert self.content_type == "application/json", self
        return json.loads(self.body)


def param(name: str, value, content_type: str = "") -> dict:
    """One request parameter as TorchServe's worker hands it to the service."""
    return {"name": name, "contentType": content_type, "value": value}


# A REST request always carries HTTP headers (TorchServe passes them all; Netty sets
# Content-Length); a gRPC one carries none.
REST_HEADERS = {"Host": "127.0.0.1:8080", "Content-Length": "0"}


def request(*params: dict, headers: dict[str, str] | None = None) -> dict:
    """A REST request: ``headers`` beside the ones every REST request has."""
    headers = {**REST_HEADERS, **(headers or {})}
    return {
        "headers": [{"name": k.encode(), "value": v.encode()} for k, v in headers.items()],
        "parameters": list(params),
    }


def grpc_request(*params: dict) -> dict:
    """A gRPC ``Predictions`` request: input keys only, no headers."""
    return {"headers": [], "parameters": list(params)}


class Harness:
    """The handler inside ``ts.service.Service``, as a TorchServe worker runs it."""

    def __init__(self, model_dir: Path, handler_config: dict | None = None) -> None:
        (model_dir / "model-config.yaml").write_text(
            yaml.safe_dump({"batchSize": 4, "handler": handler_config or {}})
        )
        manifest = {"model": {"serializedFile": "model.pt", "configFile": "model-config.yaml"}}
        cache = MetricsCacheYamlImpl(config_file_path=str(METRICS_CONFIG))
        cache.initialize_cache()
        cache.model_name = MODEL_NAME
        self.handler = ColorizerHandler()
        self.outputs: list[bytes] | None = None
        self.service = Service(
            MODEL_NAME, str(model_dir), manifest, self._entry, None, 4, metrics_cache=cache
        )
        self.service.set_cl_socket(None)
        self.handler.initialize(self.service.context)

    def _entry(self, data, context):
        self.outputs = self.handler.handle(data, context)
        return self.outputs

    def predict(self, *requests: dict) -> tuple[int, str]:
        """The worker's answer for the batch: (batch status code, batch message)."""
        batch = [{"requestId": f"r{i}".encode(), **r} for i, r in enumerate(requests)]
        self.outputs = None
        answer = bytes(self.service.predict(batch))
        length = int.from_bytes(answer[4:8], "big")
        return int.from_bytes(answer[:4], "big", signed=True), answer[8 : 8 + length].decode()

    def run(self, *requests: dict) -> list[Response]:
        code, message = self.predict(*requests)
        assert self.outputs is not None and code == 200, f"the batch failed: {code} {message}"
        ctx = self.service.context
        return [
            Response(
                ctx.get_response_status(i)[0],
                ctx.get_response_content_type(i),
                body,
                dict(ctx.get_response_headers(i)),
            )
            for i, body in enumerate(self.outputs)
        ]
