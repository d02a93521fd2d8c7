"""The rendered overlays: schemas, scanners, one configuration source, ports, services,
network policy, pod security, probes, shutdown and resources.

Each external tool also gets a known-bad input, so a tool that silently checks nothing
fails the suite."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from serving.runtime import constants as C
from tests.support.k8s import (
    CONFIG_FILES,
    CRD_KINDS,
    K8S_VERSIONS,
    MANAGEMENT_PORTS,
    container,
    containers,
    dockerfile_instructions,
    exec_form,
    final_stage,
    model_profile,
    objects,
    one,
    pod_spec,
    run,
    selects,
    tool,
)
from tests.support.paths import K8S, LAUNCHER


def test_every_overlay_renders_the_whole_service(rendered):
    expected = {
        "Namespace": 1,
        "ServiceAccount": 1,
        "ConfigMap": 3,  # TorchServe's configuration, the front's, the Grafana dashboard
        "Service": 2,
        "Deployment": 1,
        "HorizontalPodAutoscaler": 1,
        "PodDisruptionBudget": 1,
        "NetworkPolicy": 1,
        "ServiceMonitor": 1,
        "PrometheusRule": 1,
    }
    for overlay, docs in rendered.items():
        kinds = {k: len(objects(docs, k)) for k in {d["kind"] for d in docs}}
        gpu_dashboard = 1 if overlay == "gpu" else 0
        assert kinds == {**expected, "ConfigMap": 3 + gpu_dashboard}, overlay
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
    scrape_interval = yaml.safe_load((LAUNCHER / "prometheus.yml").read_text())["global"][
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
        target = pod_ports(docs)[port["targetPort"]]
        assert target == C.METRICS_PORT


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


def torchserve_configmap(docs: list[dict]) -> dict:
    """The generated TorchServe ConfigMap (the others carry the front's nginx.conf and
    dashboards)."""
    (cm,) = [
        d
        for d in objects(docs, "ConfigMap")
        if d["metadata"]["name"].startswith("colorizer-torchserve-")
    ]
    return cm


def pod_ports(docs: list[dict]) -> dict[str, int]:
    """{name: containerPort} over every container of the pod (names are pod-wide)."""
    named = [
        (p["name"], p["containerPort"])
        for c in containers(docs).values()
        for p in c.get("ports", [])
    ]
    assert len({n for n, _ in named}) == len(named), named
    return dict(named)


def test_configmap_is_generated_from_the_serving_files(rendered):
    for overlay, docs in rendered.items():
        cm = torchserve_configmap(docs)
        assert cm["metadata"]["name"].startswith("colorizer-torchserve-"), "content hash suffix"
        assert set(cm["data"]) == set(CONFIG_FILES), overlay
        for name in CONFIG_FILES:
            assert cm["data"][name] == (LAUNCHER / name).read_text(), f"{overlay}: {name}"


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
        cm_name = torchserve_configmap(docs)["metadata"]["name"]
        (volume,) = [
            v for v in pod_spec(docs)["volumes"] if v.get("configMap", {}).get("name") == cm_name
        ]
        assert volume["configMap"]["name"] == cm_name
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        mounted = {str(Path(mount["mountPath"]) / k) for k in CONFIG_FILES}
        assert str(Path(workdir) / ts_config) in mounted, overlay
        assert str(Path(workdir) / config["metrics_config"]) in mounted, overlay


def test_config_binds_torchserve_to_loopback_behind_the_front(config):
    """Only the front listens beyond the pod's loopback; nginx.conf and the gRPC front pass
    requests to exactly the ports TorchServe binds."""
    from serving.front import grpc_front, nginx

    assert config["inference_address"] == f"http://127.0.0.1:{C.BACKEND_HTTP_PORT}"
    assert config["metrics_address"] == f"http://127.0.0.1:{C.BACKEND_METRICS_PORT}"
    assert config["grpc_inference_address"] == "127.0.0.1"
    assert int(config["grpc_inference_port"]) == C.BACKEND_GRPC_PORT
    text = nginx.NGINX_CONF.read_text()
    assert nginx.listen_ports(text) == [C.HTTP_PORT, C.FRONT_STATUS_PORT, C.METRICS_PORT]
    assert nginx.upstream_ports(text) == [C.BACKEND_HTTP_PORT, C.BACKEND_METRICS_PORT]
    front = grpc_front.GrpcFrontConfig.from_ts_config(LAUNCHER / "config.properties")
    assert front.backend == f"127.0.0.1:{C.BACKEND_GRPC_PORT}"
    assert front.listen == f"0.0.0.0:{C.GRPC_PORT}"
    assert config["management_address"] == f"http://127.0.0.1:{C.MANAGEMENT_PORT}"
    assert config["grpc_management_address"] == "127.0.0.1"
    assert int(config["grpc_management_port"]) == C.GRPC_MANAGEMENT_PORT
    assert config["metrics_mode"] == "prometheus"


def test_pdb_keeps_one_replica_serving(rendered):
    for overlay, docs in rendered.items():
        pdb = one(docs, "PodDisruptionBudget")["spec"]
        labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert selects(pdb["selector"]["matchLabels"], labels)
        min_replicas = one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
        assert pdb["maxUnavailable"] < min_replicas, overlay


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


def test_only_the_front_exposes_the_inference_and_metrics_ports(rendered):
    for docs in rendered.values():
        assert pod_ports(docs) == {
            "http": C.HTTP_PORT,
            "metrics": C.METRICS_PORT,
            "grpc": C.GRPC_PORT,
        }
        assert not container(docs).get("ports"), "TorchServe listens on loopback only"
        assert {p["name"] for p in container(docs, "front-http")["ports"]} == {"http", "metrics"}
        assert {p["name"] for p in container(docs, "front-grpc")["ports"]} == {"grpc"}
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
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert not any("hostPath" in v for v in volumes.values())
        for name, c in containers(docs).items():
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == uid, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc.get("privileged", False) is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            # Writable mounts are bounded emptyDirs; nothing from the host.
            for m in c["volumeMounts"]:
                if not m.get("readOnly"):
                    assert "sizeLimit" in volumes[m["name"]].get("emptyDir", {}), (name, m)
        mounts = {m["mountPath"] for m in container(docs)["volumeMounts"]}
        assert "/tmp" in mounts, "TorchServe's scratch"
        assert "/tmp" in {m["mountPath"] for m in container(docs, "front-http")["volumeMounts"]}
        assert (
            one(docs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
            == "restricted"
        )


def test_no_secret_material_in_the_manifests(rendered_text, rendered):
    for overlay, docs in rendered.items():
        for env in (e for c in containers(docs).values() for e in c.get("env", [])):
            assert "secretKeyRef" not in env.get("valueFrom", {})
            assert not re.search(r"TOKEN|PASSWORD|SECRET|API_KEY", env["name"]), env
        assert not re.search(r"(?i)BEGIN [A-Z ]*PRIVATE KEY|password:", rendered_text[overlay])


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
        # metrics endpoint (on loopback), which the frontend answers whatever the workers do.
        assert live["exec"]["command"] == [*startup["exec"]["command"][:5], "--live"]
        # The front's containers: ready and alive while they take connections on their ports.
        for name in ("front-http", "front-grpc"):
            front = container(docs, name)
            own = {p["name"] for p in front["ports"]}
            for kind in ("readinessProbe", "livenessProbe"):
                assert front[kind]["tcpSocket"]["port"] in own, (overlay, name, kind)
        # Loading may take the profile's startupTimeout plus JVM start and archive unpack.
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget >= model_profile(overlay)["startupTimeout"] + 60, overlay
        assert live["periodSeconds"] * live["failureThreshold"] >= 30


def prestop_sleep(c: dict) -> int:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def test_prestop_drains_before_sigterm(rendered, config):
    """Every container sleeps through endpoint removal; the front outlives TorchServe's
    drain, so the answers TorchServe finishes after its SIGTERM reach their callers, and the
    gRPC front's own drain still fits the grace period."""
    from serving.front.grpc_front import GrpcFrontConfig

    for overlay, docs in rendered.items():
        grace = pod_spec(docs)["terminationGracePeriodSeconds"]
        drain = prestop_sleep(container(docs))
        assert drain + 10 <= grace, overlay
        assert drain >= 15, "endpoint removal takes seconds to reach every node and client"
        for name in ("front-http", "front-grpc"):
            assert prestop_sleep(container(docs, name)) > drain, (overlay, name)
        front_grpc = prestop_sleep(container(docs, "front-grpc"))
        assert front_grpc + GrpcFrontConfig.stop_grace_s + 10 <= grace, overlay


def test_grpc_connections_age_out_within_the_drain(rendered, config):
    """The gRPC front sends GOAWAY after the max connection age (+-10% jitter): every client
    must have left a terminating pod before preStop ends."""
    from serving.front.grpc_front import GrpcFrontConfig

    age_s = GrpcFrontConfig.max_connection_age_ms / 1000
    grace_s = GrpcFrontConfig.max_connection_age_grace_ms / 1000
    assert age_s <= 120, "new replicas get gRPC traffic only after connections age out"
    for overlay, docs in rendered.items():
        drain = prestop_sleep(container(docs))
        assert drain >= age_s * 1.1 + 5, overlay
        # In-flight calls on an aged connection may run to the response timeout.
        assert grace_s >= model_profile(overlay)["responseTimeout"], overlay


def test_resources_are_guaranteed_and_gpu_only_in_the_gpu_overlay(rendered):
    for overlay, docs in rendered.items():
        for name, c in containers(docs).items():
            for key in ("cpu", "memory"):
                assert c["resources"]["requests"][key] == c["resources"]["limits"][key], (
                    overlay,
                    name,
                    key,
                )
            if name != "torchserve":
                assert "nvidia.com/gpu" not in c["resources"]["limits"], (overlay, name)
                assert "OMP_NUM_THREADS" not in {e["name"] for e in c.get("env", [])}
        res = container(docs)["resources"]
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
