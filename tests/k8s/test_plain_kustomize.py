"""The overlays render with kustomize's DEFAULT load restrictor (the ``rendered`` fixture of
tests/k8s/conftest.py runs `kubectl kustomize` with no flags), as `kubectl apply -k`, Argo CD
and Flux run it, and the TorchServe configuration the cluster gets is the one
`colorizer serve` runs: same files, same keys, same values except the per-run overrides.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from serving.launcher import server
from tests.support.k8s import run, tool
from tests.support.paths import K8S, REPO

CONFIGMAP = "colorizer-torchserve"
FRONT_CONFIGMAP = "colorizer-front"


def torchserve_configmap(docs: list[dict], name: str = CONFIGMAP) -> dict:
    (cm,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(f"{name}-")
    ]
    return cm


def properties(text: str) -> dict[str, str]:
    """key=value lines of a Java properties file (the subset config.properties uses)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith(("#", "!"))}


def drift(served: str, deployed: str) -> list[str]:
    """Keys whose value differs between what `colorizer serve` runs and the ConfigMap,
    ignoring the keys serve sets per run (addresses, ports, paths)."""
    per_run = set(server.config_overrides(server.Ports(), Path("store")))
    a, b = properties(served), properties(deployed)
    keys = (set(a) | set(b)) - per_run
    return sorted(k for k in keys if a.get(k) != b.get(k))


def test_every_overlay_renders_without_flags(rendered):
    for overlay, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"Deployment", "ConfigMap", "HorizontalPodAutoscaler"} <= kinds, overlay
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        names = {v["configMap"]["name"] for v in volumes if "configMap" in v}
        generated = {
            torchserve_configmap(docs, n)["metadata"]["name"] for n in (CONFIGMAP, FRONT_CONFIGMAP)
        }
        assert names == generated, overlay


def test_the_default_restrictor_is_on(tmp_path):
    """This kubectl refuses a file outside the kustomization root when given no flag, so the
    test above ran under the restriction Argo CD, Flux and `kubectl apply -k` apply."""
    (tmp_path / "outside.properties").write_text("a=1\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / "kustomization.yaml").write_text(
        "configMapGenerator:\n  - name: x\n    files: [../outside.properties]\n"
    )
    done = run([tool("kubectl"), "kustomize", str(root)])
    assert done.returncode != 0 and "is not in or below" in done.stderr, done.stderr


def test_configmap_carries_the_files_colorizer_serve_reads(rendered):
    """One source: the generator's files are the very files serve reads and the image
    copies, and the rendered ConfigMap holds their bytes."""
    launcher = yaml.safe_load((server.LAUNCHER_DIR / "kustomization.yaml").read_text())
    (generator,) = launcher["configMapGenerator"]
    assert generator["name"] == CONFIGMAP
    sources = {server.LAUNCHER_DIR / f for f in generator["files"]}
    assert sources == {server.CONFIG_TEMPLATE, server.METRICS_CONFIG}
    dockerfile = (K8S / "Dockerfile").read_text()
    copied = " ".join(str(p.relative_to(REPO)) for p in sorted(sources))
    assert f"COPY {copied} /home/model-server/serving/" in dockerfile
    for overlay, docs in rendered.items():
        data = torchserve_configmap(docs)["data"]
        assert set(data) == {p.name for p in sources}, overlay
        for path in sources:
            assert data[path.name] == path.read_text(), f"{overlay}: {path.name}"


def test_served_and_deployed_configuration_agree(rendered, tmp_path):
    """What `colorizer serve` writes for a run differs from the ConfigMap only in the keys
    it overrides per run; metrics_config points at the same metrics.yaml."""
    overrides = server.config_overrides(server.Ports(), tmp_path)
    served = server.render_config(server.CONFIG_TEMPLATE.read_text(), overrides)
    assert Path(properties(served)["metrics_config"]) == server.METRICS_CONFIG
    for overlay, docs in rendered.items():
        deployed = torchserve_configmap(docs)["data"]["config.properties"]
        assert drift(served, deployed) == [], overlay


def test_drift_check_catches_a_changed_deployed_value(tmp_path):
    served = server.render_config(
        server.CONFIG_TEMPLATE.read_text(),
        server.config_overrides(server.Ports(), tmp_path),
    )
    deployed = server.CONFIG_TEMPLATE.read_text()
    assert drift(served, deployed) == []
    changed = deployed.replace("max_request_size=", "max_request_size=1") + "job_queue_size=5\n"
    assert drift(served, changed) == ["job_queue_size", "max_request_size"]


def test_front_configmap_is_the_nginx_conf_colorizer_serve_runs(rendered):
    """The pod's front-http runs serving/front/nginx.conf byte for byte; `colorizer serve`
    runs the same file with only its listen and upstream ports (and bind host) replaced."""
    from serving.front import nginx

    front = yaml.safe_load((nginx.NGINX_CONF.parent / "kustomization.yaml").read_text())
    (generator,) = front["configMapGenerator"]
    assert generator["name"] == FRONT_CONFIGMAP and generator["files"] == ["nginx.conf"]
    for overlay, docs in rendered.items():
        data = torchserve_configmap(docs, FRONT_CONFIGMAP)["data"]
        assert data == {"nginx.conf": nginx.NGINX_CONF.read_text()}, overlay
    text = nginx.NGINX_CONF.read_text()
    ports = server.Ports(1, 2, 3, 4, 5, 6, 7, 8, 9)
    served = nginx.render(text, "127.0.0.1", ports.front_mapping())
    assert len(served.splitlines()) == len(text.splitlines())
    pairs = zip(text.splitlines(), served.splitlines(), strict=True)
    changed = [(a, b) for a, b in pairs if a != b]
    assert changed and all(("listen" in a or "server 127.0.0.1" in a) for a, _ in changed)
