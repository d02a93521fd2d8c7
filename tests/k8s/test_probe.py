"""k8s/probe.py: ready only when the model has a ready worker, against a fake management API."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from serving.runtime import constants as C
from tests.support.k8s import (
    run,
)
from tests.support.paths import K8S, LAUNCHER


class FakeManagement:
    """A loopback HTTP server answering GET /models/<name> like TorchServe's management API."""

    def __init__(self, statuses: list[str] | None, code: int = 200):
        import http.server
        import threading

        body = json.dumps(
            [{"modelName": C.MODEL_NAME, "workers": [{"status": s} for s in statuses or []]}]
        )

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                ok = self.path == f"/models/{C.MODEL_NAME}" and code == 200
                self.send_response(200 if ok else (code if code != 200 else 404))
                self.end_headers()
                self.wfile.write(body.encode() if ok else b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def run_probe(tmp_path: Path, url: str) -> int:
    config = tmp_path / "config.properties"
    config.write_text(f"# test\ninference_address=http://0.0.0.0:1\nmanagement_address={url}\n")
    # As the pod runs it: a fresh isolated interpreter (-I), standard library only.
    cmd = [sys.executable, "-I", str(K8S / "probe.py"), "--config", str(config)]
    return run([*cmd, "--model", C.MODEL_NAME]).returncode


@pytest.mark.parametrize(
    ("statuses", "code", "ready"),
    [
        (["READY"], 200, True),
        (["UNLOADING"], 200, False),  # what TorchServe reports while the model loads
        (["UNLOADING", "READY"], 200, True),
        ([], 200, False),
        (["READY"], 500, False),
    ],
)
def test_probe_is_ready_only_with_a_ready_worker(tmp_path, statuses, code, ready):
    with FakeManagement(statuses, code) as url:
        assert (run_probe(tmp_path, url) == 0) is ready


def test_probe_is_not_ready_when_nothing_listens(tmp_path):
    with FakeManagement(["READY"]) as url:
        pass  # closed again: the port refuses connections now
    assert run_probe(tmp_path, url) == 1


def test_probe_reads_the_management_address_of_the_real_config():
    spec = importlib.util.spec_from_file_location("k8s_probe", K8S / "probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    url = probe.config_url(str(LAUNCHER / "config.properties"))
    assert url == f"http://127.0.0.1:{C.MANAGEMENT_PORT}"
