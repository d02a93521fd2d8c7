"""k8s/drain.py: a container's SIGTERM waits until nothing is in flight through the front,
against a stand-in nginx status page and a real child process; nginx's real status page
is read by the container test (tests/k8s/test_container.py)."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.support.paths import K8S

sys.path.insert(0, str(K8S))
import drain  # noqa: E402

STATUS = (
    "Active connections: {n} \nserver accepts handled requests\n 9 9 9 \n"
    "Reading: 0 Writing: {w} Waiting: 0 \n"
)


def test_in_flight_counts_all_but_the_status_request():
    assert drain.in_flight(STATUS.format(n=1, w=1)) == 0
    assert drain.in_flight(STATUS.format(n=4, w=4)) == 3
    assert drain.in_flight("Reading: 2 Writing: 3 Waiting: 7") == 4
    with pytest.raises(ValueError, match="stub_status"):
        drain.in_flight("<html>not it</html>")


class FakeStatus:
    """A loopback page saying ``busy`` requests are in flight until ``idle()`` is called."""

    def __init__(self, busy: int) -> None:
        state = {"writing": busy + 1}
        self.state = state

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                body = STATUS.format(n=state["writing"], w=state["writing"]).encode()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/status"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def idle(self) -> None:
        self.state["writing"] = 1

    def close(self) -> None:
        self.server.shutdown()


CHILD = (
    "import signal, sys, time; signal.signal(signal.SIGQUIT, lambda *a: sys.exit(0)); "
    "time.sleep(60)"
)


def start(status_url: str, *options: str) -> subprocess.Popen:
    cmd = [sys.executable, "-I", str(K8S / "drain.py"), "--status-url", status_url, *options]
    proc = subprocess.Popen([*cmd, "--", sys.executable, "-c", CHILD], stderr=subprocess.PIPE)
    time.sleep(1.0)  # the child runs
    return proc


def test_sigterm_waits_for_the_requests_in_flight_then_stops_the_child():
    status = FakeStatus(busy=2)
    try:
        proc = start(status.url, "--stop-signal", "QUIT")
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert proc.poll() is None, "stopped while requests were in flight"
        status.idle()
        assert proc.wait(timeout=10) == 0  # the child exited 0 on QUIT
        assert "until nothing was in flight" in proc.stderr.read().decode()
    finally:
        status.close()


def test_a_front_that_is_gone_holds_nothing_and_the_group_is_signalled():
    """No status page (the front already stopped): stop at once; the child's TERM, sent to
    its process group, counts as stopping as asked (exit 0, not 143)."""
    proc = start("http://127.0.0.1:9/status", "--group")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5


def test_max_wait_bounds_the_hold_and_a_childs_own_failure_is_kept():
    status = FakeStatus(busy=5)
    try:
        proc = start(status.url, "--max-wait", "1", "--stop-signal", "QUIT")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert 0.9 < time.monotonic() - started < 5
    finally:
        status.close()
    failing = subprocess.run(
        [
            sys.executable,
            "-I",
            str(K8S / "drain.py"),
            "--",
            sys.executable,
            "-c",
            "raise SystemExit(3)",
        ],
        timeout=30,
    )
    assert failing.returncode == 3
