"""Fixtures shared by every test area (unit, e2e, k8s, training).

Helpers live in tests/support/ (paths, models, photos, net, prometheus, torchserve, k8s);
the fixtures that more than one area needs live here.
"""

from __future__ import annotations

import pytest

from tests.support.models import export_test_model
from tests.support.photos import photo_paths


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """An exported random-init tiny network (.pt with its spec): fast to load and run."""
    return export_test_model(tmp_path_factory.mktemp("tiny") / "model.pt", "tiny")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A real TorchServe serving the untrained compact network on free loopback ports
    (tests/support/torchserve.py); stopped at the end of the session, and checked that
    none of its processes is left."""
    from tests.support.torchserve import served

    with served(tmp_path_factory.mktemp("e2e")) as running:
        yield running


@pytest.fixture(scope="session")
def photo() -> bytes:
    """One real JPEG photo from tests/data/photos."""
    return photo_paths()[0].read_bytes()
