"""Where things are, for every test: the repository, its data and its tool folders."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
DATA = TESTS / "data"
PHOTOS = DATA / "photos"  # real photos with provenance (tests/data/photos/README.md)
VAL_PHOTOS = REPO / "training" / "datasets" / "photos" / "val"
K8S = REPO / "k8s"
LAUNCHER = REPO / "serving" / "launcher"  # the TorchServe configuration files
TOOLS = REPO / ".venv-tools" / "bin"  # kubectl, checkov, hadolint (`make k8s-tools`)
