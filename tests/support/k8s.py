"""Helpers of the k8s tests: the tools, the rendered objects, the Dockerfile's instructions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from serving.runtime import constants as C
from tests.support.paths import K8S, LAUNCHER, TOOLS

OVERLAYS = ("cpu", "gpu")
# Oldest and newest Kubernetes the manifests are validated against.
K8S_VERSIONS = ("1.29.0", "1.37.0")
# prometheus-operator's kinds: no bundled schema; checked structurally (tests/k8s)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
MANAGEMENT_PORTS = {C.MANAGEMENT_PORT, C.GRPC_MANAGEMENT_PORT}
CONFIG_FILES = ("config.properties", "metrics.yaml")  # the files the ConfigMap carries


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make k8s-tools` (make test does)")
    return str(path)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def kustomize(path: Path) -> str:
    """`kubectl kustomize PATH` with no flags: kustomize's defaults, as `kubectl apply -k`,
    Argo CD and Flux render it (the default load restrictor included)."""
    done = run([tool("kubectl"), "kustomize", str(path)])
    assert done.returncode == 0, done.stderr
    return done.stdout


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines of a Java properties file: the parser the gRPC front reads
    config.properties with."""
    from serving.front.grpc_front import parse_properties

    return parse_properties(path.read_text())


def objects(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in objects(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


# The pod's containers: TorchServe, and the front before it (serving/front/).
CONTAINERS = ("torchserve", "front-http", "front-grpc")


def containers(docs: list[dict]) -> dict[str, dict]:
    """{name: container} of the Deployment's pod; exactly CONTAINERS."""
    found = {c["name"]: c for c in pod_spec(docs)["containers"]}
    assert tuple(found) == CONTAINERS, list(found)
    return found


def container(docs: list[dict], name: str = "torchserve") -> dict:
    return containers(docs)[name]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


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


def model_profile(overlay: str) -> dict:
    return yaml.safe_load((LAUNCHER / "model-config.yaml").read_text())[overlay]
