"""gRPC stubs generated from the .proto files inside the installed TorchServe jar."""

from __future__ import annotations

import protos
from protos.build import build


def test_stubs_hold_torchserve_services_and_messages():
    stubs = protos.load()
    request = stubs.inference_pb2.PredictionsRequest(model_name="colorizer", input={"data": b"x"})
    assert request.input["data"] == b"x"
    inference = stubs.inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"]
    assert {"Ping", "Predictions"} <= set(inference.methods_by_name)
    management = stubs.management_pb2.DESCRIPTOR.services_by_name["ManagementAPIsService"]
    assert "DescribeModel" in management.methods_by_name
    assert hasattr(stubs.inference_pb2_grpc, "InferenceAPIsServiceStub")


def test_build_is_idempotent_and_makes_one_package(tmp_path):
    out = tmp_path / "generated"
    assert build(out) is True
    assert build(out) is False  # up to date: nothing regenerated
    assert (out / "proto" / "inference.proto").is_file()  # extracted from the jar
    grpc_module = (out / "inference_pb2_grpc.py").read_text()
    assert "from . import inference_pb2" in grpc_module
    assert "from .google.rpc import status_pb2" in (out / "inference_pb2.py").read_text()
    assert (out / "google" / "rpc" / "__init__.py").is_file()
