"""The client without a server: inputs, output names, error decoding, unreachable services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.client import ColorizerClient, ServiceError
from serving.client.base import error_from_body, sniff_content_type
from serving.client.colorize import collect_inputs, output_name
from tests.support.net import free_ports
from tests.support.photos import encode, synthetic_photo


def test_collect_inputs_walks_folders_and_keeps_relative_names(tmp_path):
    (tmp_path / "album" / "2019").mkdir(parents=True)
    (tmp_path / "album" / "a.JPG").write_bytes(b"x")
    (tmp_path / "album" / "2019" / "b.png").write_bytes(b"x")
    (tmp_path / "album" / "notes.txt").write_text("not a photo")
    single = tmp_path / "c.webp"
    pairs = collect_inputs([tmp_path / "album", single])
    assert [(src.name, str(name)) for src, name in pairs] == [
        ("b.png", "2019/b.png"),
        ("a.JPG", "a.JPG"),
        ("c.webp", "c.webp"),
    ]


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("a.jpg", "jpeg", "a.jpg"),
        ("a.JPEG", "jpeg", "a.JPEG"),
        ("a.jpg", "png", "a.png"),
        ("scan.bmp", "png", "scan.png"),
        ("dir/x.tif", "webp", "dir/x.webp"),
    ],
)
def test_output_names_follow_the_output_format(name, fmt, expected):
    assert output_name(Path(name), fmt) == Path(expected)


def test_error_bodies_of_the_handler_and_of_torchserve():
    ours = error_from_body(413, json.dumps({"error": "image_too_large", "message": "m"}).encode())
    assert (ours.status, ours.kind, ours.message) == (413, "image_too_large", "m")
    theirs = error_from_body(
        500, b'{"code": 500, "type": "ErrorDataDecoderException", "message": "x"}'
    )
    assert (theirs.kind, theirs.message) == ("ErrorDataDecoderException", "x")
    plain = error_from_body(502, b"Bad Gateway")
    assert (plain.kind, plain.message) == ("http_error", "Bad Gateway")


def test_sniffs_the_three_output_formats():
    img = synthetic_photo(8, 8)
    for fmt, ct in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")):
        assert sniff_content_type(encode(img, fmt)) == ct
    with pytest.raises(ServiceError):
        sniff_content_type(b"GIF89a")


def test_exactly_one_transport():
    with pytest.raises(ValueError):
        ColorizerClient()
    with pytest.raises(ValueError):
        ColorizerClient("http://x", "y:1")


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_an_unreachable_service_is_a_503_service_error(protocol):
    (port,) = free_ports(1)
    target = {"rest": (f"http://127.0.0.1:{port}", None), "grpc": (None, f"127.0.0.1:{port}")}
    with ColorizerClient(*target[protocol], timeout=5) as client:
        assert client.ping() is False
        with pytest.raises(ServiceError) as failed:
            client.colorize(b"\xff\xd8")
    assert failed.value.status == 503


def test_grpc_retries_a_call_the_server_answered_unavailable():
    """In-process gRPC server: UNAVAILABLE once (as when a connection ages out), then a photo."""
    from concurrent import futures

    import grpc

    import protos

    stubs = protos.load()
    png = encode(synthetic_photo(8, 8), "PNG")
    calls = []

    class FlakyInference(stubs.inference_pb2_grpc.InferenceAPIsServiceServicer):
        def Predictions(self, request, context):
            calls.append(len(request.input["data"]))
            if len(calls) == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection aged out")
            return stubs.inference_pb2.PredictionResponse(prediction=png)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    stubs.inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(FlakyInference(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with ColorizerClient(grpc_target=f"127.0.0.1:{port}", timeout=10) as client:
            photo = b"\xff\xd8" + bytes(1_000_000)  # a photo-sized request
            result = client.colorize(photo)
    finally:
        server.stop(None)
    assert result.content_type == "image/png" and calls == [len(photo), len(photo)]


def test_every_try_sends_one_request_id_and_the_calls_deadline():
    """A local HTTP server: TorchServe's queue-full 503 (no id in its body) twice, then
    a photo; the client sends the same id and absolute deadline each time."""
    import http.server
    import threading
    import time

    png = encode(synthetic_photo(8, 8), "PNG")
    seen: list[dict[str, str]] = []

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(dict(self.headers))
            busy = len(seen) <= 2
            body = b'{"code": 503, "type": "ServiceUnavailableException"}' if busy else png
            self.send_response(503 if busy else 200)
            self.send_header("Content-Type", "application/json" if busy else "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        started = time.time()
        with ColorizerClient(url, timeout=30) as client:
            client.colorize(png, request_id="mine-1")
            client.colorize(png)  # a generated id
    finally:
        server.shutdown()
    assert [h["X-Request-Id"] for h in seen[:3]] == ["mine-1"] * 3
    assert len(seen[3]["X-Request-Id"]) == 32 and seen[3]["X-Request-Id"] != "mine-1"
    deadlines = {int(h["X-Request-Deadline"]) / 1000 for h in seen[:3]}
    assert len(deadlines) == 1 and abs(deadlines.pop() - (started + 30)) < 2


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_failure_names_the_request_id(protocol):
    (port,) = free_ports(1)
    target = {"rest": (f"http://127.0.0.1:{port}", None), "grpc": (None, f"127.0.0.1:{port}")}
    with ColorizerClient(*target[protocol], timeout=1) as client:
        with pytest.raises(ServiceError) as failed:
            client.colorize(b"\xff\xd8", request_id="trace-me")
    assert failed.value.request_id == "trace-me" and "(request id trace-me)" in str(failed.value)


def test_the_servers_request_id_is_read_from_an_error_body():
    body = b'{"error": "deadline_exceeded", "message": "late", "request_id": "abc"}'
    error = error_from_body(504, body)
    assert error.kind == "deadline_exceeded" and error.request_id == "abc"


def test_colorize_prints_each_failures_request_id(tmp_path, capsys):
    from serving.cli import main as cli

    (port,) = free_ports(1)
    src = tmp_path / "a.png"
    src.write_bytes(encode(synthetic_photo(8, 8), "PNG"))
    argv = ["colorize", str(src), "-o", str(tmp_path / "out"), "--timeout", "1"]
    assert cli([*argv, "--url", f"http://127.0.0.1:{port}"]) == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("FAILED")]
    assert str(src) in line and "(request id " in line
