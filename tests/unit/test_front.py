"""The front's own logic without a server: nginx.conf as nginx reads it, its refusals'
kinds, the port mapping `colorizer serve` applies, and the gRPC front's input-map check
against protobuf's own encoding. tests/e2e/test_hostile.py runs it against callers."""

from __future__ import annotations

import json
import re
import subprocess

import grpc
import pytest

import protos  # noqa: F401  (puts the generated stubs on the path)
from serving.front import grpc_front, nginx
from serving.launcher.server import CONFIG_TEMPLATE, Ports
from serving.runtime import constants as C
from serving.runtime.errors import ERROR_KINDS, GRPC_CODE_FOR_HTTP, TooManyInputs


def predictions_request(inputs: dict[str, bytes], **fields) -> bytes:
    from protos.generated import inference_pb2

    return inference_pb2.PredictionsRequest(
        model_name="colorizer", input=inputs, **fields
    ).SerializeToString()


@pytest.mark.parametrize("n", [0, 1, 6, 16, 17, 1000])
def test_count_inputs_agrees_with_protobuf_up_to_the_limit(n):
    message = predictions_request(
        {f"k{i}": b"x" * (i % 3) for i in range(n)}, model_version="1", sequence_id="s"
    )
    assert grpc_front.count_inputs(message, limit=16) == min(n, 17)
    assert grpc_front.count_inputs(message, limit=10_000) == n


def test_a_flood_of_entries_is_refused_after_a_few_steps():
    """Five million empty entries: the check stops at the 17th, so it costs nothing."""
    entry = b"\x1a\x06\x0a\x04" + b"abcd"  # field 3 (LEN), key "abcd", no value
    flood = entry * 5_000_000
    assert grpc_front.count_inputs(flood, limit=16) == 17
    with pytest.raises(TooManyInputs, match="more than 16 entries; the accepted keys are data"):
        grpc_front.check_predictions_request(flood, grpc_front.GrpcFrontConfig())


@pytest.mark.parametrize("bad", [b"\x1a\xff", b"\x1a\x10abc", b"\x0f", b"\x00\x00", b"\x80" * 11])
def test_bytes_that_are_not_a_message_are_refused_as_such(bad):
    with pytest.raises(TooManyInputs, match="not a PredictionsRequest"):
        grpc_front.check_predictions_request(bad, grpc_front.GrpcFrontConfig())


def test_a_normal_request_passes():
    message = predictions_request(
        {"data": b"\xff\xd8" * 1000, "format": b"png", "quality": b"80", "x-request-id": b"a"}
    )
    grpc_front.check_predictions_request(message, grpc_front.GrpcFrontConfig())


def test_refusals_carry_the_json_body_and_the_code_of_their_status():
    code, details = grpc_front.status_of(TooManyInputs("too many"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT == grpc.StatusCode[GRPC_CODE_FOR_HTTP[400]]
    assert json.loads(details) == {"error": "too_many_inputs", "message": "too many"}


def test_front_config_comes_from_torchserve_config(tmp_path):
    config = grpc_front.GrpcFrontConfig.from_ts_config(CONFIG_TEMPLATE)
    props = grpc_front.read_properties(CONFIG_TEMPLATE)
    assert config.max_request_bytes == int(props["max_request_size"])
    assert config.max_response_bytes == int(props["max_response_size"])
    assert config.backend == f"127.0.0.1:{C.BACKEND_GRPC_PORT}"
    args = grpc_front.build_parser().parse_args(
        ["--ts-config", str(CONFIG_TEMPLATE), "--listen", "127.0.0.1:1", "--max-inputs", "8"]
    )
    assert args.listen == "127.0.0.1:1" and args.max_inputs == 8


def test_nginx_refusals_are_typed_errors_of_the_service():
    """Every JSON body nginx.conf answers with names a kind of serving/runtime/errors.py, with
    that kind's status."""
    from serving.runtime import errors

    text = nginx.NGINX_CONF.read_text()
    found = re.findall(r'return (\d{3}) \'\{"error": "(\w+)"', text)
    assert len(found) >= 6
    statuses = {
        cls.kind: cls.http_status
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ColorizerError)
    }
    for status, kind in found:
        assert kind in ERROR_KINDS, kind
        assert statuses[kind] == int(status), kind


def test_nginx_body_cap_is_torchserves_max_request_size():
    text = nginx.NGINX_CONF.read_text()
    cap = re.search(r"^\s*client_max_body_size (\d+)m;", text, re.MULTILINE)[1]
    props = grpc_front.read_properties(CONFIG_TEMPLATE)
    assert int(cap) * 1024 * 1024 == int(props["max_request_size"])


def test_render_maps_every_port_and_refuses_an_unknown_one():
    text = nginx.NGINX_CONF.read_text()
    ports = Ports(11, 12, 13, 14, 15, 16, 17, 18, 19)
    served = nginx.render(text, "0.0.0.0", ports.front_mapping())
    assert nginx.listen_ports(served) == [ports.http, ports.front_status, ports.metrics]
    assert "listen 127.0.0.1:19;" in served, "the status port stays on loopback"
    assert nginx.upstream_ports(served) == [ports.backend_http, ports.backend_metrics]
    assert "listen 0.0.0.0:11 backlog=4096;" in served
    with pytest.raises(nginx.FrontConfigError, match="port 8080"):
        nginx.render(text, "127.0.0.1", {})


@pytest.mark.skipif(nginx.find_nginx() is None, reason=nginx.INSTALL_HINT)
def test_nginx_accepts_the_file_as_the_pod_and_serve_run_it(tmp_path):
    """`nginx -t` with the pod's file and with serve's rendering, as a non-root prefix."""
    rendered = tmp_path / "serve.conf"
    rendered.write_text(
        nginx.render(nginx.NGINX_CONF.read_text(), "127.0.0.1", Ports().front_mapping())
    )
    for conf in (nginx.NGINX_CONF, rendered):
        cmd = [*nginx.command(nginx.find_nginx(), tmp_path, conf), "-t", "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
