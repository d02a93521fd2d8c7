"""The autoscaling path: the prometheus-adapter rule runs the serving query per pod (on a
real Prometheus), the HPA scales on it, and CAPACITY.md states each overlay's target."""

from __future__ import annotations

import math
import re
import time

import pytest

from serving.runtime import constants as C
from tests.support.k8s import (
    one,
)
from tests.support.paths import K8S
from tests.support.prometheus import api_get, instant_query, log_tail, running_prometheus

QUERY = re.compile(
    r"^sum\(rate\((?P<series>[^{]+)\{(?P<matchers>[^}]*)\}\[(?P<window>\w+)\]\)\)"
    r"(?: by \((?P<by>[^)]*)\))?$"
)


def parse_query(q: str) -> dict:
    m = QUERY.match(q.strip())
    assert m, f"not of the form sum(rate(series{{...}}[w])) [by (...)]: {q}"
    matchers = {x.strip() for x in m["matchers"].split(",") if x.strip()}
    return {**m.groupdict(), "matchers": matchers}


def adapter_query(template: str, series: str, label_matchers: str, group_by: str) -> str:
    """The query prometheus-adapter runs for a rule (its Go template, filled in)."""
    return (
        template.replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", label_matchers)
        .replace("<<.GroupBy>>", group_by)
    )


def test_adapter_rule_runs_the_serving_query_per_pod(adapter_rule):
    serving = parse_query(C.REQUEST_RATE_PROMQL)
    assert serving["by"] is None  # the serving query is the service-wide rate
    # What the adapter asks Prometheus for the HPA: two pods of the namespace.
    per_pod = parse_query(
        adapter_query(
            adapter_rule["metricsQuery"],
            series=C.REQUEST_COUNTER,
            label_matchers='namespace="colorizer",pod=~"colorizer-a|colorizer-b"',
            group_by="pod",
        )
    )
    assert per_pod["series"] == serving["series"] == C.REQUEST_COUNTER
    assert per_pod["window"] == serving["window"] == C.RATE_WINDOW
    assert per_pod["by"] == "pod"
    # Same filter as the serving query, plus only the adapter's own matchers.
    assert (
        per_pod["matchers"] - {'namespace="colorizer"', 'pod=~"colorizer-a|colorizer-b"'}
        == (serving["matchers"])
    )
    # Summed over every pod, it is the serving query.
    service_wide = adapter_query(adapter_rule["metricsQuery"], C.REQUEST_COUNTER, "", "")
    service_wide = service_wide.replace(",}", "}").replace(" by ()", "")
    assert service_wide == C.REQUEST_RATE_PROMQL


def test_adapter_rule_discovers_the_series_and_maps_it_to_pods(adapter_rule):
    series = parse_query(f"sum(rate({adapter_rule['seriesQuery']}[{C.RATE_WINDOW}]))")
    assert series["series"] == C.REQUEST_COUNTER
    assert f'model_name="{C.MODEL_NAME}"' in series["matchers"]
    overrides = adapter_rule["resources"]["overrides"]
    assert overrides == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert re.fullmatch(adapter_rule["name"]["matches"], C.REQUEST_COUNTER)


class FakeExporter:
    """A loopback /metrics endpoint whose request counters grow at fixed rates per second."""

    def __init__(self, rates: dict[str, float]):  # {model_name: requests per second}
        import http.server
        import threading
        import time

        start = time.monotonic()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                elapsed = time.monotonic() - start
                lines = [f"# TYPE {C.REQUEST_COUNTER} counter"]
                for model, rate in rates.items():
                    labels = f'model_name="{model}",model_version="default",hostname="h"'
                    lines.append(f"{C.REQUEST_COUNTER}{{{labels}}} {100 + rate * elapsed:.3f}")
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.target = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def prometheus_query(api: str, query: str, at: float) -> dict[str, float]:
    """{pod label or "": value} of an instant query evaluated at unix time ``at``."""
    return {r["metric"].get("pod", ""): float(r["value"][1]) for r in instant_query(api, query, at)}


def test_adapter_queries_give_per_pod_rates_on_a_real_prometheus(adapter_rule, tmp_path):
    """Two fake pods scraped by Debian's Prometheus, labelled as the ServiceMonitor labels
    them: the adapter's series query finds only the colorizer series, its metrics query
    gives one rate per pod in the right proportion, and the per-pod rates add up to the
    serving query's rate. (Absolute values need a full rate window; ratios do not.)"""
    # Pod a also serves another model at a high rate: the model_name filter must drop it.
    pods = {
        "colorizer-a": FakeExporter({C.MODEL_NAME: 10.0, "other": 100.0}),
        "colorizer-b": FakeExporter({C.MODEL_NAME: 4.0}),
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "colorizer",
                "static_configs": [
                    {"targets": [p.target], "labels": {"namespace": "colorizer", "pod": name}}
                    for name, p in pods.items()
                ],
            }
        ],
    }
    per_pod_query = adapter_query(
        adapter_rule["metricsQuery"],
        C.REQUEST_COUNTER,
        'namespace="colorizer",pod=~"colorizer-a|colorizer-b"',
        "pod",
    )
    try:
        with running_prometheus(config, tmp_path) as api:
            deadline, per_pod = time.monotonic() + 60, {}
            while time.monotonic() < deadline:
                time.sleep(1)
                try:
                    per_pod = prometheus_query(api, per_pod_query, time.time())
                except OSError:
                    continue  # not up yet
                if len(per_pod) == 2 and all(v > 0 for v in per_pod.values()):
                    break
            assert set(per_pod) == set(pods), (per_pod, log_tail(tmp_path))
            time.sleep(4)  # a few more samples per pod, so one sample more or less matters little
            at = time.time() - 1
            per_pod = prometheus_query(api, per_pod_query, at)
            ratio = per_pod["colorizer-a"] / per_pod["colorizer-b"]
            assert 1.5 < ratio < 4.5, per_pod  # 10 : 4, far from (10 + 100) : 4 unfiltered
            service_wide = prometheus_query(api, C.REQUEST_RATE_PROMQL, at)[""]
            assert service_wide == pytest.approx(sum(per_pod.values()), rel=1e-6)
            # The series query the adapter uses for discovery: colorizer series of both pods.
            series = api_get(api, "/api/v1/series", **{"match[]": adapter_rule["seriesQuery"]})
            assert sorted(s["pod"] for s in series) == sorted(pods)
            assert {s["model_name"] for s in series} == {C.MODEL_NAME}
    finally:
        for p in pods.values():
            p.close()


def test_hpa_scales_on_the_adapter_metric_and_cpu(rendered, adapter_rule):
    for overlay, docs in rendered.items():
        hpa = one(docs, "HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == (
            "Deployment",
            one(docs, "Deployment")["metadata"]["name"],
        )
        metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
        assert set(metrics) == {"Pods", "Resource"}, overlay
        pods = metrics["Pods"]["pods"]
        assert pods["metric"]["name"] == adapter_rule["name"]["as"]
        assert pods["target"]["type"] == "AverageValue"
        assert float(pods["target"]["averageValue"]) > 0
        assert metrics["Resource"]["resource"]["name"] == "cpu"
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"], overlay
        behavior = hpa["spec"]["behavior"]
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0  # up: fast
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300  # down: stabilised
        assert "replicas" not in one(docs, "Deployment")["spec"], "the HPA owns the count"


def test_capacity_doc_states_each_overlay_target(rendered):
    doc = (K8S / "CAPACITY.md").read_text()
    for overlay, docs in rendered.items():
        hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
        (pods,) = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
        target, low, high = pods["target"]["averageValue"], hpa["minReplicas"], hpa["maxReplicas"]
        row = f"| {overlay} | {target} | {low} | {high} |"
        assert row in doc, f"k8s/CAPACITY.md lacks the row: {row}"


def test_the_cpu_target_is_seventy_percent_of_the_measured_throughput(rendered):
    """The cpu HPA target follows from T(cpu), the bold figure of CAPACITY.md's throughput
    row: 0.7 x T, rounded down to a multiple of 0.5 (section 3)."""
    doc = (K8S / "CAPACITY.md").read_text()
    (row,) = [line for line in doc.splitlines() if line.startswith("| cpu | 2 cores")]
    throughput = float(re.search(r"\*\*([\d.]+)\*\*", row).group(1))
    hpa = one(rendered["cpu"], "HorizontalPodAutoscaler")["spec"]
    (pods,) = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert float(pods["target"]["averageValue"]) == math.floor(0.7 * throughput * 2) / 2
