"""Kubernetes manifests and the serving image recipe (k8s/).

Renders every overlay with a real kustomize (kubectl from .venv-tools, `make k8s-tools`),
validates the objects offline against the Kubernetes JSON schemas, scans them and the
Dockerfile with checkov, lints the Dockerfile with hadolint, and checks what the
manifests promise: one configuration source, the autoscaling query, ports, security
context, probes, network policy. Each external tool also gets a known-bad input, so a
tool that silently checks nothing fails the suite.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from serving.runtime import constants as C

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
TOOLS = ROOT / ".venv-tools" / "bin"
OVERLAYS = ("cpu", "gpu")
# Oldest and newest Kubernetes the manifests are validated against.
K8S_VERSIONS = ("1.29.0", "1.37.0")
CRD_KINDS = {"ServiceMonitor"}  # no bundled schema: checked structurally below
MANAGEMENT_PORTS = {C.MANAGEMENT_PORT, C.GRPC_MANAGEMENT_PORT}
SERVING = ROOT / "serving" / "launcher"  # the TorchServe configuration files
CONFIG_FILES = ("config.properties", "metrics.yaml")  # serving/ files the ConfigMap carries


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make k8s-tools` (make test does)")
    return str(path)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def kustomize(overlay_dir: Path) -> str:
    done = run(
        [
            tool("kubectl"),
            "kustomize",
            "--load-restrictor",
            "LoadRestrictionsNone",
            str(overlay_dir),
        ]
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines of a Java properties file (the subset config.properties uses)."""
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


# ---- fixtures: rendered overlays -------------------------------------------------------


@pytest.fixture(scope="module")
def rendered_text() -> dict[str, str]:
    return {o: kustomize(K8S / "overlays" / o) for o in OVERLAYS}


@pytest.fixture(scope="module")
def rendered(rendered_text) -> dict[str, list[dict]]:
    return {o: [d for d in yaml.safe_load_all(t) if d] for o, t in rendered_text.items()}


def objects(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in objects(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs: list[dict]) -> dict:
    containers = pod_spec(docs)["containers"]
    assert [c["name"] for c in containers] == ["torchserve"]
    return containers[0]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def adapter_rule() -> dict:
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    rules = values["rules"]["custom"]
    assert len(rules) == 1
    return rules[0]


@pytest.fixture(scope="module")
def config() -> dict[str, str]:
    return read_properties(SERVING / "config.properties")


# ---- Dockerfile parsing ----------------------------------------------------------------


def dockerfile_instructions(path: Path = K8S / "Dockerfile") -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments) with continuation lines joined."""
    out, stage, buf = [], -1, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        buf += " " + line.rstrip("\\").strip() if buf else line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        instr, _, args = buf.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stage += 1
        out.append((stage, instr, args.strip()))
        buf = ""
    return out


def final_stage(instructions):
    last = max(s for s, _, _ in instructions)
    return [(i, a) for s, i, a in instructions if s == last]


def exec_form(args: str) -> list[str]:
    return json.loads(args)


# ---- render and schema validation ------------------------------------------------------


def test_every_overlay_renders_the_whole_service(rendered):
    expected = {
        "Namespace": 1,
        "ServiceAccount": 1,
        "ConfigMap": 1,
        "Service": 2,
        "Deployment": 1,
        "HorizontalPodAutoscaler": 1,
        "PodDisruptionBudget": 1,
        "NetworkPolicy": 1,
        "ServiceMonitor": 1,
    }
    for overlay, docs in rendered.items():
        kinds = {k: len(objects(docs, k)) for k in {d["kind"] for d in docs}}
        assert kinds == expected, overlay
        assert not objects(docs, "Secret"), "no secrets in manifests"
        for d in docs:
            if d["kind"] != "Namespace":
                assert d["metadata"]["namespace"] == "colorizer", d["metadata"]["name"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_match_kubernetes_schemas(rendered, tmp_path, version):
    files = []
    for overlay, docs in rendered.items():
        builtin = [d for d in docs if d["kind"] not in CRD_KINDS]
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(yaml.safe_dump_all(builtin))
        files.append(str(path))
    done = run([tool("kubernetes-validate"), "--strict", "-k", version, *files])
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "Couldn't find schema" not in out, out
    assert out.count("passed for resource") == sum(
        len([d for d in docs if d["kind"] not in CRD_KINDS]) for docs in rendered.values()
    ), out


def test_schema_validation_rejects_a_misspelt_field(rendered, tmp_path):
    """The validator is strict: an unknown field fails (so the test above means something)."""
    deployment = copy.deepcopy(one(rendered["gpu"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    done = run([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSIONS[-1], str(path)])
    assert done.returncode != 0, done.stdout


def test_servicemonitor_scrapes_the_metrics_port_of_each_pod(rendered):
    """ServiceMonitor is a CRD without a bundled schema: check its structure and targets."""
    scrape_interval = yaml.safe_load((SERVING / "prometheus.yml").read_text())["global"][
        "scrape_interval"
    ]
    for overlay, docs in rendered.items():
        sm = one(docs, "ServiceMonitor")
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
        (endpoint,) = sm["spec"]["endpoints"]
        assert set(endpoint) <= {"port", "path", "interval", "scheme", "scrapeTimeout"}
        assert endpoint["path"] == "/metrics"
        assert endpoint["interval"] == scrape_interval
        # Services it selects that have the endpoint's port: exactly one, and that port
        # leads to the container's metrics port.
        services = [
            s
            for s in objects(docs, "Service")
            if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
            and any(p["name"] == endpoint["port"] for p in s["spec"]["ports"])
        ]
        assert len(services) == 1, overlay
        (port,) = [p for p in services[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
        target = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}[
            port["targetPort"]
        ]
        assert target == C.METRICS_PORT


# ---- checkov and hadolint ---------------------------------------------------------------


def checkov(*args: str) -> dict:
    done = run([tool("checkov"), "--skip-download", "-o", "json", *args])
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    return {r["check_type"]: r for r in reports}


@pytest.fixture(scope="module")
def checkov_report(rendered_text, tmp_path_factory) -> dict:
    scan = tmp_path_factory.mktemp("checkov")
    for overlay, text in rendered_text.items():
        (scan / f"{overlay}.yaml").write_text(text)
    return {
        **checkov("-d", str(scan), "--framework", "kubernetes"),
        **checkov("-f", str(K8S / "Dockerfile"), "--framework", "dockerfile"),
    }


@pytest.mark.parametrize("framework", ["kubernetes", "dockerfile"])
def test_checkov_finds_nothing(checkov_report, framework):
    report = checkov_report[framework]
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [] and summary["failed"] == 0, failed
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 50  # it really ran its checks
    # Every skip is declared with its reason where the object declares it.
    for check in report["results"]["skipped_checks"]:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason.split()) >= 8, (check["check_id"], reason)


def test_checkov_flags_an_insecure_pod(rendered, tmp_path):
    """Negative control: the same Deployment without its security context fails checkov."""
    deployment = copy.deepcopy(one(rendered["cpu"], "Deployment"))
    del deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(deployment))
    failed = {
        c["check_id"]
        for c in checkov("-d", str(tmp_path), "--framework", "kubernetes")["kubernetes"]["results"][
            "failed_checks"
        ]
    }
    assert {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_28"} <= failed, failed


def test_hadolint_passes_the_dockerfile():
    done = run([tool("hadolint"), str(K8S / "Dockerfile")])
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    done = run([tool("hadolint"), str(bad)])
    assert done.returncode != 0 and "DL3007" in done.stdout, done.stdout


# ---- one configuration source ----------------------------------------------------------


def test_configmap_is_generated_from_the_serving_files(rendered):
    for overlay, docs in rendered.items():
        cm = one(docs, "ConfigMap")
        assert cm["metadata"]["name"].startswith("colorizer-torchserve-"), "content hash suffix"
        assert set(cm["data"]) == set(CONFIG_FILES), overlay
        for name in CONFIG_FILES:
            assert cm["data"][name] == (SERVING / name).read_text(), f"{overlay}: {name}"


def test_pod_reads_the_configmap_where_the_image_and_config_expect_it(rendered, config):
    """workingDir + the entrypoint's --ts-config and config.properties' relative paths
    must all land in the ConfigMap mount; model_store must be where the image puts the
    archives."""
    instructions = dockerfile_instructions()
    final = final_stage(instructions)
    workdir = [a for i, a in final if i == "WORKDIR"][-1]
    entrypoint = exec_form([a for i, a in final if i == "ENTRYPOINT"][-1])
    ts_config = entrypoint[entrypoint.index("--ts-config") + 1]
    copies = [a.split() for i, a in final if i == "COPY"]
    store = next(c[-1] for c in copies if c[0] == "--from=archive" and c[1] == "/model-store")
    assert config["model_store"] == store
    for overlay, docs in rendered.items():
        c = container(docs)
        assert c["workingDir"] == workdir
        cm_name = one(docs, "ConfigMap")["metadata"]["name"]
        (volume,) = [v for v in pod_spec(docs)["volumes"] if "configMap" in v]
        assert volume["configMap"]["name"] == cm_name
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        mounted = {str(Path(mount["mountPath"]) / k) for k in CONFIG_FILES}
        assert str(Path(workdir) / ts_config) in mounted, overlay
        assert str(Path(workdir) / config["metrics_config"]) in mounted, overlay


def test_config_binds_inference_to_the_pod_and_management_to_loopback(config):
    assert config["inference_address"] == f"http://0.0.0.0:{C.HTTP_PORT}"
    assert config["metrics_address"] == f"http://0.0.0.0:{C.METRICS_PORT}"
    assert config["grpc_inference_address"] == "0.0.0.0"
    assert int(config["grpc_inference_port"]) == C.GRPC_PORT
    assert config["management_address"] == f"http://127.0.0.1:{C.MANAGEMENT_PORT}"
    assert config["grpc_management_address"] == "127.0.0.1"
    assert int(config["grpc_management_port"]) == C.GRPC_MANAGEMENT_PORT
    assert config["metrics_mode"] == "prometheus"


# ---- the autoscaling query -------------------------------------------------------------

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
    import urllib.parse
    import urllib.request

    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    with urllib.request.urlopen(url, timeout=5) as resp:
        data = json.load(resp)
    assert data["status"] == "success", data
    return {r["metric"].get("pod", ""): float(r["value"][1]) for r in data["data"]["result"]}


def test_adapter_queries_give_per_pod_rates_on_a_real_prometheus(adapter_rule, tmp_path):
    """Two fake pods scraped by Debian's Prometheus, labelled as the ServiceMonitor labels
    them: the adapter's series query finds only the colorizer series, its metrics query
    gives one rate per pod in the right proportion, and the per-pod rates add up to the
    serving query's rate. (Absolute values need a full rate window; ratios do not.)"""
    import socket
    import time

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is missing: run `make k8s-tools` (make test does)")
    # Pod a also serves another model at a high rate: the model_name filter must drop it.
    pods = {
        "colorizer-a": FakeExporter({C.MODEL_NAME: 10.0, "other": 100.0}),
        "colorizer-b": FakeExporter({C.MODEL_NAME: 4.0}),
    }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
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
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    api = f"http://127.0.0.1:{port}"
    per_pod_query = adapter_query(
        adapter_rule["metricsQuery"],
        C.REQUEST_COUNTER,
        'namespace="colorizer",pod=~"colorizer-a|colorizer-b"',
        "pod",
    )
    try:
        deadline, per_pod = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                per_pod = prometheus_query(api, per_pod_query, time.time())
            except OSError:
                continue  # not up yet
            if len(per_pod) == 2 and all(v > 0 for v in per_pod.values()):
                break
        assert set(per_pod) == set(pods), (per_pod, (tmp_path / "prometheus.log").read_text())
        time.sleep(4)  # a few more samples per pod, so one sample more or less matters little
        at = time.time() - 1
        per_pod = prometheus_query(api, per_pod_query, at)
        ratio = per_pod["colorizer-a"] / per_pod["colorizer-b"]
        assert 1.5 < ratio < 4.5, per_pod  # 10 : 4, far from (10 + 100) : 4 unfiltered
        service_wide = prometheus_query(api, C.REQUEST_RATE_PROMQL, at)[""]
        assert service_wide == pytest.approx(sum(per_pod.values()), rel=1e-6)
        # The series query the adapter uses for discovery: colorizer series of both pods.
        import urllib.parse
        import urllib.request

        url = f"{api}/api/v1/series?" + urllib.parse.urlencode(
            {"match[]": adapter_rule["seriesQuery"]}
        )
        with urllib.request.urlopen(url, timeout=5) as resp:
            series = json.load(resp)["data"]
        assert sorted(s["pod"] for s in series) == sorted(pods)
        assert {s["model_name"] for s in series} == {C.MODEL_NAME}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
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


def test_pdb_keeps_one_replica_serving(rendered):
    for overlay, docs in rendered.items():
        pdb = one(docs, "PodDisruptionBudget")["spec"]
        labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert selects(pdb["selector"]["matchLabels"], labels)
        min_replicas = one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
        assert pdb["maxUnavailable"] < min_replicas, overlay


# ---- ports, services, network policy ---------------------------------------------------


def all_ints(node) -> set[int]:
    if isinstance(node, dict):
        return set().union(*(all_ints(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(all_ints(v) for v in node)) if node else set()
    return {node} if isinstance(node, int) and not isinstance(node, bool) else set()


def test_management_ports_appear_nowhere(rendered):
    for overlay, docs in rendered.items():
        for d in docs:
            if d["kind"] == "ConfigMap":
                continue  # config.properties names them, bound to 127.0.0.1 (tested above)
            assert not all_ints(d) & MANAGEMENT_PORTS, f"{overlay}: {d['kind']}"
            text = yaml.safe_dump(d)
            for port in MANAGEMENT_PORTS:
                assert not re.search(rf"\b{port}\b", text), f"{overlay}: {d['kind']} names {port}"


def test_container_exposes_exactly_the_inference_and_metrics_ports(rendered):
    for docs in rendered.values():
        ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
        assert ports == {"http": C.HTTP_PORT, "grpc": C.GRPC_PORT, "metrics": C.METRICS_PORT}
    expose = [a for i, a in final_stage(dockerfile_instructions()) if i == "EXPOSE"]
    assert {int(p) for a in expose for p in a.split()} == {C.HTTP_PORT, C.GRPC_PORT, C.METRICS_PORT}


def test_services_rest_metrics_and_headless_grpc(rendered):
    for docs in rendered.values():
        labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        rest = one(docs, "Service", "colorizer")["spec"]
        grpc = one(docs, "Service", "colorizer-grpc")["spec"]
        for spec in (rest, grpc):
            assert spec.get("type", "ClusterIP") == "ClusterIP"  # nothing outside the cluster
            assert selects(spec["selector"], labels)
        assert {(p["name"], p["port"], p["targetPort"]) for p in rest["ports"]} == {
            ("http", C.HTTP_PORT, "http"),
            ("metrics", C.METRICS_PORT, "metrics"),
        }
        assert grpc["clusterIP"] == "None", "headless: one DNS record per pod"
        assert [(p["name"], p["port"], p["targetPort"]) for p in grpc["ports"]] == [
            ("grpc", C.GRPC_PORT, "grpc")
        ]
        assert not grpc.get("publishNotReadyAddresses"), "only ready pods in DNS"


def test_networkpolicy_admits_callers_to_inference_and_monitoring_to_metrics(rendered):
    for overlay, docs in rendered.items():
        spec = one(docs, "NetworkPolicy")["spec"]
        labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert selects(spec["podSelector"]["matchLabels"], labels)
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        assert spec.get("egress", []) == [], "no egress"
        allowed: dict[int, list[dict]] = {}
        for rule in spec["ingress"]:
            assert rule.get("ports"), f"{overlay}: a rule without ports opens every port"
            assert rule.get("from"), f"{overlay}: a rule without peers admits everyone"
            for port in rule["ports"]:
                assert port.get("protocol", "TCP") == "TCP"
                allowed.setdefault(port["port"], []).extend(rule["from"])
        assert set(allowed) == {C.HTTP_PORT, C.GRPC_PORT, C.METRICS_PORT}, overlay
        for port in (C.HTTP_PORT, C.GRPC_PORT):
            for peer in allowed[port]:
                assert peer["podSelector"]["matchLabels"] == {"colorizer.io/client": "true"}
                assert "ipBlock" not in peer
        for peer in allowed[C.METRICS_PORT]:
            assert peer == {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
            }


# ---- pod: security, probes, shutdown, resources ----------------------------------------


def test_pod_runs_non_root_read_only_without_privileges(rendered):
    user = [a for i, a in final_stage(dockerfile_instructions()) if i == "USER"][-1]
    uid = int(user.split(":")[0])
    assert uid >= 10000
    for docs in rendered.values():
        pod = pod_spec(docs)
        assert pod["automountServiceAccountToken"] is False
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == uid
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        sc = container(docs)["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == uid
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc.get("privileged", False) is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        # Writable mounts are bounded emptyDirs; nothing from the host.
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert not any("hostPath" in v for v in volumes.values())
        mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
        assert "/tmp" in mounts, "TorchServe's scratch"
        for m in mounts.values():
            if not m.get("readOnly"):
                assert "sizeLimit" in volumes[m["name"]].get("emptyDir", {}), m
        assert (
            one(docs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
            == "restricted"
        )


def test_no_secret_material_in_the_manifests(rendered_text, rendered):
    for overlay, docs in rendered.items():
        for env in container(docs).get("env", []):
            assert "secretKeyRef" not in env.get("valueFrom", {})
            assert not re.search(r"TOKEN|PASSWORD|SECRET|API_KEY", env["name"]), env
        assert not re.search(r"(?i)BEGIN [A-Z ]*PRIVATE KEY|password:", rendered_text[overlay])


def model_profile(overlay: str) -> dict:
    return yaml.safe_load((SERVING / "model-config.yaml").read_text())[overlay]


def test_probes_tell_loading_from_ready_from_dead(rendered):
    final = final_stage(dockerfile_instructions())
    copied = {
        str(Path(c.split()[-1]) / Path(src).name)
        for i, c in final
        if i == "COPY" and not c.startswith("--from")
        for src in c.split()[:-1]
    }
    for overlay, docs in rendered.items():
        c = container(docs)
        startup, ready, live = c["startupProbe"], c["readinessProbe"], c["livenessProbe"]
        # Loading vs ready: probe.py asks the management API (loopback) for a READY worker.
        for probe in (startup, ready):
            cmd = probe["exec"]["command"]
            assert cmd[:3] == ["python", "-I", "/home/model-server/probe.py"], overlay
            assert cmd[2] in copied, "the image ships probe.py where the probe runs it"
            args = dict(zip(cmd[3::2], cmd[4::2], strict=True))
            assert args["--model"] == C.MODEL_NAME
            config_mount = next(m for m in c["volumeMounts"] if m["name"] == "torchserve-config")
            assert args["--config"] == f"{config_mount['mountPath']}/config.properties"
            assert probe["timeoutSeconds"] >= 3  # python start + one local HTTP call
        # Dead: liveness must not restart a pod whose worker is reloading; it asks the
        # metrics endpoint, which the frontend answers whatever the workers do.
        assert live["httpGet"] == {"path": "/metrics", "port": "metrics"}
        # Loading may take the profile's startupTimeout plus JVM start and archive unpack.
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget >= model_profile(overlay)["startupTimeout"] + 60, overlay
        assert live["periodSeconds"] * live["failureThreshold"] >= 30


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
    url = probe.management_url(str(SERVING / "config.properties"))
    assert url == f"http://127.0.0.1:{C.MANAGEMENT_PORT}"


def test_prestop_drains_before_sigterm(rendered, config):
    for overlay, docs in rendered.items():
        pod = pod_spec(docs)
        command = container(docs)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        drain = int(command[1])
        assert drain + 10 <= pod["terminationGracePeriodSeconds"], overlay
        assert drain >= 15, "endpoint removal takes seconds to reach every node and client"


def test_grpc_connections_age_out_within_the_drain(rendered, config):
    """TorchServe sends GOAWAY after the max connection age (+-10% jitter): every client
    must have left a terminating pod before preStop ends."""
    age_s = int(config["grpc_inference_max_connection_age_ms"]) / 1000
    grace_s = int(config.get("grpc_inference_max_connection_age_grace_ms", "0")) / 1000
    assert age_s <= 120, "new replicas get gRPC traffic only after connections age out"
    for overlay, docs in rendered.items():
        drain = int(container(docs)["lifecycle"]["preStop"]["exec"]["command"][1])
        assert drain >= age_s * 1.1 + 5, overlay
        # In-flight calls on an aged connection may run to the response timeout.
        assert grace_s >= model_profile(overlay)["responseTimeout"], overlay


def test_resources_are_guaranteed_and_gpu_only_in_the_gpu_overlay(rendered):
    for overlay, docs in rendered.items():
        res = container(docs)["resources"]
        for key in ("cpu", "memory"):
            assert res["requests"][key] == res["limits"][key], f"{overlay}: {key}"
        gpus = res["limits"].get("nvidia.com/gpu")
        pod = pod_spec(docs)
        env = {e["name"]: e for e in container(docs).get("env", [])}
        assert env["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
        if overlay == "gpu":
            assert gpus == 1 and res["requests"]["nvidia.com/gpu"] == 1
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
                "tolerations"
            ]
            assert env["CUDA_VISIBLE_DEVICES"]["value"] == "0"
        else:
            assert gpus is None and "nodeSelector" not in pod and "tolerations" not in pod
            assert "CUDA_VISIBLE_DEVICES" not in env


def test_replicas_spread_across_nodes(rendered):
    for docs in rendered.values():
        labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        spread = {c["topologyKey"]: c for c in pod_spec(docs)["topologySpreadConstraints"]}
        assert "kubernetes.io/hostname" in spread
        for c in spread.values():
            assert selects(c["labelSelector"]["matchLabels"], labels)


# ---- the image recipe ------------------------------------------------------------------


ARCHIVE_CMD = "python -m serving.cli archive"  # `colorizer archive`, from the source tree


def archives_built_by_dockerfile() -> dict[str, str]:
    """{profile: archive file name in the image's model store}, from the build stage."""
    runs = [a for s, i, a in dockerfile_instructions() if i == "RUN" and ARCHIVE_CMD in a]
    assert len(runs) == 1
    m = re.search(r"for profile in ([\w ]+); do", runs[0])
    assert m, runs[0]
    names = re.findall(r"/model-store/(colorizer-\$profile\.mar)", runs[0])
    assert names, runs[0]
    return {p: names[0].replace("$profile", p) for p in m[1].split()}


def test_dockerfile_archive_commands_parse_with_the_real_cli():
    """The image runs `colorizer archive` (as python -m serving.cli) like the tests and
    `make serve` do; a renamed flag or profile fails here, not in someone's image build."""
    from serving.cli import build_parser
    from serving.launcher.archive import PROFILES

    (run_args,) = [a for s, i, a in dockerfile_instructions() if i == "RUN" and ARCHIVE_CMD in a]
    built = archives_built_by_dockerfile()
    assert set(built) == set(PROFILES)
    command = re.search(r"python -m serving\.cli (archive .*?)(?:&&|;|$)", run_args)[1]
    for profile in built:
        argv = shlex.split(command.replace("$profile", profile))
        args = build_parser("archive").parse_args(argv)
        assert args.command == "archive" and args.profile == profile
        assert str(args.model) == "model_store/default/colorizer.pt"


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # the tiny model export
def test_dockerfile_archive_step_runs_on_what_the_build_stage_copies(tmp_path):
    """Replays the build stage outside a container: copy exactly what its COPY lines name
    (the shipped weights replaced by a tiny exported model, for speed), run its archive
    RUN line with /model-store redirected, and open the two archives it leaves."""
    from tests.serving_support import export_test_model

    src, store = tmp_path / "src", tmp_path / "model-store"
    instructions = dockerfile_instructions()
    (archive_stage,) = {s for s, i, a in instructions if i == "RUN" and ARCHIVE_CMD in a}
    build_stage = [(i, a) for s, i, a in instructions if s == archive_stage]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "generated")
    for instr, args in build_stage:
        if instr != "COPY":
            continue
        *sources, dest = args.split()
        for source in sources:
            target = src / dest / Path(source).name if dest.endswith("/") else src / dest
            if source == "model_store/default":
                export_test_model(target / "colorizer.pt", "tiny")
            elif (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=ignore)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    (step,) = [a for i, a in build_stage if i == "RUN" and ARCHIVE_CMD in a]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    done = run(
        ["bash", "-o", "pipefail", "-c", step.replace("/model-store/", f"{store}/")],
        cwd=src,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for profile, name in archives_built_by_dockerfile().items():
        with zipfile.ZipFile(store / name) as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
            assert manifest["model"]["modelName"] == C.MODEL_NAME
            config = mar.read("model-config.yaml").decode()
            assert f"profile: {profile}" in config.splitlines()[0]


def test_each_overlay_serves_its_profile_archive_under_the_model_name(rendered):
    built = archives_built_by_dockerfile()
    cmd = exec_form([a for i, a in final_stage(dockerfile_instructions()) if i == "CMD"][-1])
    assert cmd[1] in {f"{C.MODEL_NAME}={name}" for name in built.values()}
    for overlay, docs in rendered.items():
        args = container(docs)["args"]
        assert args == ["--models", f"{C.MODEL_NAME}={built[overlay]}"], overlay


def test_dockerfile_final_stage_is_lean_and_starts_torchserve():
    instructions = dockerfile_instructions()
    stages = [a for s, i, a in instructions if i == "FROM"]
    assert stages[0].endswith(" AS runtime") and stages[1] == "runtime AS archive"
    base_images = {a.split()[0] for a in stages} - {"runtime"}
    assert len(base_images) == 1, "the venv moves between stages: same Python in both"
    assert base_images.pop().startswith("python:3.11-")
    final = final_stage(instructions)
    installs = " ".join(a for i, a in final if i == "RUN")
    assert "openjdk-17-jre-headless" in installs
    for build_tool in ("build-essential", "gcc", "g++", "make ", "git", "-dev ", "pip install"):
        assert build_tool not in installs, build_tool
    copied = [a.split() for i, a in final if i == "COPY" and a.startswith("--from=")]
    # The served venv comes from the runtime stage, never from the stage with the archiver.
    assert ["--from=runtime", "/opt/venv", "/opt/venv"] in copied
    assert [c for c in copied if c[0] == "--from=archive"] == [
        ["--from=archive", "/model-store", "/home/model-server/model-store"]
    ]
    entrypoint = exec_form([a for i, a in final if i == "ENTRYPOINT"][-1])
    # tini -g: SIGTERM reaches the JVM and the worker, not only the torchserve launcher.
    assert entrypoint[:5] == ["tini", "-g", "--", "torchserve", "--foreground"]
    assert "--ts-config" in entrypoint


def test_dockerfile_copies_only_what_the_context_allows_and_the_repo_has():
    patterns = [
        line.strip()
        for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    assert patterns[0] == "*", "an allow-list"
    for _, instr, args in dockerfile_instructions():
        if instr != "COPY" or args.startswith("--from"):
            continue
        for src in args.split()[:-1]:
            src = src.rstrip("/")
            assert any(src == a or src.startswith(a + "/") for a in allowed), src
            assert (ROOT / src).exists() or src.startswith("model_store/default"), src


def read_lock(name: str) -> dict[str, str]:
    """{canonical name: version} of k8s/requirements-<name>.txt; every line pinned."""
    pinned = {}
    for ln in (K8S / f"requirements-{name}.txt").read_text().splitlines():
        if not ln.strip() or ln.startswith("#"):
            continue
        pkg, sep, version = ln.partition("==")
        assert sep and version, f"not pinned: {ln}"
        pinned[canonicalize_name(pkg)] = version
    return pinned


def load_image_lock_module():
    spec = importlib.util.spec_from_file_location("image_lock", K8S / "image_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["image", "archive"])
def test_image_wheel_lists_agree_with_pyproject(name):
    image_lock = load_image_lock_module()
    pinned = read_lock(name)
    wanted = {"image": image_lock.runtime_requirements, "archive": image_lock.archive_requirements}
    available = pinned | (read_lock("image") if name == "archive" else {})
    stale = [
        str(req)
        for req in wanted[name]()
        if canonicalize_name(req.name) not in available
        or not req.specifier.contains(available[canonicalize_name(req.name)], prereleases=True)
    ]
    assert not stale, f"k8s/requirements-{name}.txt is stale for {stale}: run `make image-lock`"
    # Closed under dependencies (names from the installed metadata): the image installs
    # each list with --no-deps (the archive list on top of the image list), then pip check.
    missing = set()
    for pkg in pinned:
        try:
            requires = metadata.requires(pkg) or []
        except metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, requires):
            if (r.marker is None or r.marker.evaluate({"extra": ""})) and canonicalize_name(
                r.name
            ) not in available:
                missing.add(f"{pkg} -> {r.name}")
    assert not missing, f"run `make image-lock`: {sorted(missing)}"


def test_served_image_holds_the_runtime_and_torchserve_only():
    image = read_lock("image")
    assert {"torch", "pillow", "numpy", "torchserve"} <= set(image)
    for not_served in ("timm", "torchvision", "grpcio", "torch-model-archiver", "requests"):
        assert not_served not in image, f"{not_served} is not used by the served runtime"
    assert "torch-model-archiver" in read_lock("archive")


def test_container_logs_go_to_stdout_only():
    root = ET.parse(K8S / "log4j2.xml").getroot()
    appenders = list(root.find("Appenders"))
    assert [a.tag for a in appenders] == ["Console"]
    assert appenders[0].get("target") == "SYSTEM_OUT"
