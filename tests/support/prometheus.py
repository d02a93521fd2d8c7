"""The one way tests run a real Prometheus: Debian's binary, installed by `make prometheus`.

A test never installs it; when it is missing the test fails with the command to run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.net import free_ports


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail("Debian's prometheus is missing: run `make prometheus` (make test does)")
    return found


@contextlib.contextmanager
def running_prometheus(config: dict, workdir: Path, ready_s: float = 60) -> Iterator[str]:
    """Start Prometheus with ``config`` (a prometheus.yml as a dict); yield its base URL.

    Its log is ``workdir/prometheus.log``; it is stopped when the block ends.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    (port,) = free_ports(1)
    api = f"http://127.0.0.1:{port}"
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + ready_s
        while True:
            try:
                with urllib.request.urlopen(f"{api}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Prometheus did not start: {log_tail(workdir)}")
            time.sleep(0.3)
        yield api
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def log_tail(workdir: Path, chars: int = 2000) -> str:
    path = workdir / "prometheus.log"
    return path.read_text()[-chars:] if path.exists() else "(no log)"


def api_get(api: str, path: str, **params: str) -> dict:
    """GET ``api``+``path`` with query parameters; the ``data`` of a successful reply."""
    url = f"{api}{path}?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as resp:
        reply = json.load(resp)
    assert reply["status"] == "success", reply
    return reply["data"]


def instant_query(api: str, query: str, at: float | None = None) -> list[dict]:
    """The result vector of an instant query (evaluated now, or at unix time ``at``)."""
    params = {"query": query} if at is None else {"query": query, "time": f"{at:.3f}"}
    return api_get(api, "/api/v1/query", **params)["result"]
