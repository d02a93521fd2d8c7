"""Fixtures of the k8s tests: the overlays rendered once per module, the adapter rule, the
TorchServe configuration."""

from __future__ import annotations

import pytest
import yaml

from tests.support.k8s import OVERLAYS, kustomize, read_properties
from tests.support.paths import K8S, LAUNCHER


@pytest.fixture(scope="module")
def rendered_text() -> dict[str, str]:
    return {o: kustomize(K8S / "overlays" / o) for o in OVERLAYS}


@pytest.fixture(scope="module")
def rendered(rendered_text) -> dict[str, list[dict]]:
    return {o: [d for d in yaml.safe_load_all(t) if d] for o, t in rendered_text.items()}


@pytest.fixture(scope="module")
def adapter_rule() -> dict:
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    rules = values["rules"]["custom"]
    assert len(rules) == 1
    return rules[0]


@pytest.fixture(scope="module")
def config() -> dict[str, str]:
    return read_properties(LAUNCHER / "config.properties")
