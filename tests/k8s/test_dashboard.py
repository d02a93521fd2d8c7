"""Every query of the Grafana dashboards (k8s/monitoring) returns data from a real Prometheus
scraping a real TorchServe under traffic, and the alert rules evaluate there without error.

Traffic: REST and gRPC photos, bad inputs on both, and one burst larger than TorchServe's
job queue (100), so the 503 refusals the dashboard and alerts watch really happen. What only
a cluster exports (kube-state-metrics, cAdvisor, dcgm-exporter) comes from synthetic series
in tests/k8s/data/cluster_series.prom, served to the same Prometheus as a second target; the
test checks that none of TorchServe's series is faked there.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import itertools
import json
import math
import re
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from PIL import Image

from serving.client import ColorizerClient, ServiceError
from serving.runtime.constants import MODEL_NAME
from tests.k8s.test_alerts import alerts, rendered_rule
from tests.support.paths import K8S, TESTS
from tests.support.photos import encode
from tests.support.prometheus import api_get, running_prometheus

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MONITORING = K8S / "monitoring"
DASHBOARDS = {
    "colorizer": MONITORING / "dashboards" / "colorizer.json",
    "colorizer-gpu": MONITORING / "gpu" / "colorizer-gpu.json",
}
SYNTHETIC = TESTS / "k8s" / "data" / "cluster_series.prom"
POD = "colorizer-test-0"  # the pod label the ServiceMonitor would give the test server
# Grafana's interval variables, as Grafana would fill them for a 1 s scrape interval.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s"}
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{")
QUEUE_BURST = 250  # concurrent requests: more than the cpu profile's jobQueueSize (100) + 2 workers


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) of every target of every panel."""
    out = []
    for uid, path in DASHBOARDS.items():
        board = json.loads(path.read_text())
        assert board["uid"] == uid
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
                out.append((uid, panel["title"], expr))
    return out


def metric_names(expr: str) -> set[str]:
    return set(SELECTOR.findall(expr))


def synthetic_names() -> set[str]:
    lines = SYNTHETIC.read_text().splitlines()
    return {SELECTOR.match(line).group(1) for line in lines if line and not line.startswith("#")}


def query(api: str, expr: str) -> dict:
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:  # a query that does not parse: 400 with the error
        return json.load(exc)


def has_data(reply: dict) -> bool:
    """Success with at least one finite value (NaN is what a ratio of zero rates gives)."""
    if reply.get("status") != "success":
        return False
    return any(math.isfinite(float(r["value"][1])) for r in reply["data"]["result"])


@contextlib.contextmanager
def static_exporter(path):
    """``path`` served over loopback HTTP: a scrape target with fixed series."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(path.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    """Debian's Prometheus scraping the test TorchServe (labelled as the ServiceMonitor labels
    a pod) and the synthetic cluster series each second, with the alert rules loaded."""
    root = tmp_path_factory.mktemp("prometheus")
    (root / "colorizer.rules.yaml").write_text(yaml.safe_dump(rendered_rule()["spec"]))
    with static_exporter(SYNTHETIC) as cluster:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(root / "colorizer.rules.yaml")],
            "scrape_configs": [
                {
                    "job_name": "colorizer",  # the Service name: the ServiceMonitor's job
                    "static_configs": [
                        {
                            "targets": [server.metrics_target],
                            "labels": {"namespace": "colorizer", "pod": POD},
                        }
                    ],
                },
                {
                    "job_name": "cluster-synthetic",
                    "honor_labels": True,
                    "metrics_path": f"/{SYNTHETIC.name}",
                    "static_configs": [{"targets": [cluster]}],
                },
            ],
        }
        with running_prometheus(config, root) as api:
            yield api


@pytest.fixture(scope="module")
def traffic(server, prometheus):
    """A queue-overflowing burst, then REST and gRPC photos and bad inputs until the end."""
    photo = encode(Image.new("RGB", (64, 48), (120, 90, 60)))
    url = f"{server.url}/predictions/{MODEL_NAME}"

    def post(_):
        headers = {"Content-Type": "image/jpeg"}
        return requests.post(url, data=photo, headers=headers, timeout=120).status_code

    with ThreadPoolExecutor(QUEUE_BURST) as pool:
        codes = list(pool.map(post, range(QUEUE_BURST)))
    assert 503 in codes and 200 in codes, sorted(set(codes))
    stop = threading.Event()
    clients = [ColorizerClient(server.url), ColorizerClient(grpc_target=server.grpc)]

    def send():
        while not stop.is_set():
            for client, body in itertools.product(clients, (photo, b"not an image")):
                with contextlib.suppress(ServiceError):  # bad input: refused, as meant
                    client.colorize(body)
            stop.wait(0.2)

    for client in clients:  # every kind of traffic has happened before any test looks
        client.colorize(photo)
        with pytest.raises(ServiceError):
            client.colorize(b"not an image")
    sender = threading.Thread(target=send)
    sender.start()
    yield codes
    stop.set()
    sender.join()
    for client in clients:
        client.close()


def test_every_dashboard_query_returns_data(prometheus, traffic):
    queries = dashboard_queries()
    deadline, missing = time.monotonic() + 120, queries
    while missing and time.monotonic() < deadline:
        time.sleep(2)
        with contextlib.suppress(OSError):
            missing = [q for q in missing if not has_data(query(prometheus, q[2]))]
    report = {f"{uid} / {title}: {expr}": query(prometheus, expr) for uid, title, expr in missing}
    assert not missing, json.dumps(report, indent=1)[:4000]
    print(f"{len(queries)} queries of {len(DASHBOARDS)} dashboards returned data")


def test_synthetic_series_are_only_what_a_cluster_exports(server, prometheus, traffic):
    """The faked names are kube-state-metrics', cAdvisor's and DCGM's, never TorchServe's;
    every name the dashboards and alerts use is either TorchServe's (scraped for real) or
    faked; and each faked one is used somewhere."""
    real = set(SELECTOR.findall(requests.get(server.metrics, timeout=10).text)) | {"up"}
    real |= {n for n in real for s in ("_bucket", "_sum", "_count") if n.endswith(s)}
    faked = synthetic_names()
    assert not faked & real
    assert all(n.startswith(("kube_", "container_", "DCGM_")) for n in faked), faked
    used = {n for _, _, e in dashboard_queries() for n in metric_names(e)}
    used |= {n for a in alerts(rendered_rule()) for n in metric_names(a["expr"])}
    assert used - faked <= real, sorted(used - faked - real)
    assert faked <= used, sorted(faked - used)


def test_alert_rules_evaluate_on_the_real_series(prometheus, traffic):
    """Loaded into the Prometheus above, every rule evaluates without error, and every series
    name an alert selects exists there (a misspelt metric would make an alert silently
    never fire)."""
    present = set(api_get(prometheus, "/api/v1/label/__name__/values"))
    names = {n for a in alerts(rendered_rule()) for n in metric_names(a["expr"])}
    assert names <= present, sorted(names - present)
    deadline = time.monotonic() + 30
    while True:
        groups = api_get(prometheus, "/api/v1/rules")["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        if rules and all(rule.get("lastEvaluation", "").startswith("2") for rule in rules):
            break
        assert time.monotonic() < deadline, "rules never evaluated"
        time.sleep(1)
    assert len(rules) == len(alerts(rendered_rule()))
    assert [r["name"] for r in rules if r["health"] != "ok"] == [], rules
