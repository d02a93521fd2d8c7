"""The monitoring manifests (k8s/monitoring) as Grafana and the cluster will read them:
dashboards that lay out cleanly and take their data source from a variable, shipped as
ConfigMaps the Grafana sidecar picks up, with the JSON files' bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.k8s import kustomize, objects, one, run, tool
from tests.support.paths import K8S

MONITORING = K8S / "monitoring"
# ConfigMap name -> the dashboard file it carries
DASHBOARDS = {
    "colorizer-dashboard": MONITORING / "dashboards" / "colorizer.json",
    "colorizer-dashboard-gpu": MONITORING / "gpu" / "colorizer-gpu.json",
}


def render(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(kustomize(path)) if d]


def overlaps(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["w"] <= b["x"]
        or b["x"] + b["w"] <= a["x"]
        or a["y"] + a["h"] <= b["y"]
        or b["y"] + b["h"] <= a["y"]
    )


@pytest.mark.parametrize("path", DASHBOARDS.values(), ids=DASHBOARDS.keys())
def test_dashboard_is_well_formed(path):
    board = json.loads(path.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for i, a in enumerate(panels):
        assert 0 <= a["gridPos"]["x"] and a["gridPos"]["x"] + a["gridPos"]["w"] <= 24
        for b in panels[i + 1 :]:
            assert not overlaps(a["gridPos"], b["gridPos"]), (a["title"], b["title"])
        if a["type"] == "row":
            continue
        assert a["title"] and a["description"], a
        assert a["datasource"]["uid"] == "${datasource}", a["title"]
        refs = [t["refId"] for t in a["targets"]]
        assert refs and len(set(refs)) == len(refs), a["title"]
        for t in a["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip(), a["title"]


@pytest.mark.parametrize("folder", [MONITORING, MONITORING / "gpu"], ids=["main", "gpu"])
def test_dashboards_ship_as_configmaps_the_grafana_sidecar_loads(folder):
    for cm in (d for d in render(folder) if d["kind"] == "ConfigMap"):
        name = cm["metadata"]["name"]
        assert name in DASHBOARDS, f"{name}: a fixed name (no hash), or apply -k leaves copies"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        path = DASHBOARDS[name]
        assert cm["data"] == {path.name: path.read_text()}


def test_monitoring_lands_in_the_service_namespace_and_passes_checkov(tmp_path):
    """Applied beside an overlay, the alerts and dashboards go where the service is (not
    into kubectl's current namespace), and checkov finds nothing in them."""
    namespace = yaml.safe_load((K8S / "base" / "namespace.yaml").read_text())
    for folder in (MONITORING, MONITORING / "gpu"):
        docs = render(folder)
        assert docs and all(
            d["metadata"].get("namespace") == namespace["metadata"]["name"] for d in docs
        ), folder
        (tmp_path / f"{folder.name}.yaml").write_text(yaml.safe_dump_all(docs))
    cmd = [tool("checkov"), "--skip-download", "-o", "json", "-d", str(tmp_path)]
    done = run([*cmd, "--framework", "kubernetes"])
    summary = json.loads(done.stdout)["summary"]
    assert summary["failed"] == 0 and summary["parsing_errors"] == 0, done.stdout[-3000:]
    assert summary["passed"] > 0


def test_every_overlay_ships_the_alerts_and_its_dashboards(rendered):
    """`kubectl apply -k k8s/overlays/<overlay>` brings what to watch: the PrometheusRule of
    k8s/monitoring (in the shape prometheus-operator reads; no schema is bundled for it) and
    the dashboards, the GPU one on the gpu overlay only."""
    (source,) = [d for d in render(MONITORING) if d["kind"] == "PrometheusRule"]
    for overlay, docs in rendered.items():
        rule = one(docs, "PrometheusRule", "colorizer")
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert rule["spec"] == source["spec"], overlay
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        for group in rule["spec"]["groups"]:
            assert set(group) == {"name", "rules"}, group.keys()
            for r in group["rules"]:
                assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r.keys()
                assert r["alert"] and r["expr"].strip(), r
        dashboards = {
            d["metadata"]["name"]
            for d in objects(docs, "ConfigMap")
            if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
        }
        gpu = {"colorizer-dashboard-gpu"} if overlay == "gpu" else set()
        assert dashboards == {"colorizer-dashboard", *gpu}, overlay
