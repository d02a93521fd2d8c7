"""A real TorchServe with a precision the model cannot run: `colorizer serve` stops at once
with the handler's one-line reason, instead of waiting out its timeout (it was 180 s and a
screen of Java stack traces on AMX CPUs), and leaves no process behind."""

from __future__ import annotations

import time

import psutil
import pytest

from serving.cli import main as cli
from serving.launcher.archive import build_archive
from tests.support.models import export_fp32_only_model
from tests.support.torchserve import serve_argv

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REFUSAL_BOUND_S = 60.0  # workers load in a few seconds; the old failure took 180 s


def test_serve_refuses_a_precision_the_model_cannot_run(tmp_path, capsys):
    model = export_fp32_only_model(tmp_path / "colorizer.pt")
    store = tmp_path / "store"
    build_archive(model, store, profile="cpu", precision="bf16")
    before = {p.pid for p in psutil.process_iter()}
    start = time.monotonic()
    assert cli(serve_argv(store, tmp_path / "state")) == 1
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    print(f"refused after {elapsed:.1f} s: {err.strip().splitlines()[0]}")
    assert "colorizer cannot start: precision bf16 cannot run this model" in err
    assert "compute_index_ranges_weights" in err and "auto or fp32" in err
    assert elapsed < REFUSAL_BOUND_S
    time.sleep(1)
    left = [
        p for p in psutil.process_iter(["cmdline"])
        if p.pid not in before and "torchserve" in " ".join(p.info["cmdline"] or [])
    ]  # fmt: skip
    assert not left, f"processes left behind: {left}"
