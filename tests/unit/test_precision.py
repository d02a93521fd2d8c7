"""The precision a network runs in: named ones checked at load, ``auto`` measured.

The choice logic runs on fake probes with a fake clock (no timing in tests); the real
networks follow: one that cannot run bf16 is refused at load, and falls back under auto.
"""

from __future__ import annotations

import logging

import pytest
import torch

from serving.runtime import precision
from serving.runtime.pipeline import ColorizePipeline
from serving.runtime.precision import AutoConfig, PrecisionUnusable, resolve
from tests.support.handler import Harness, param
from tests.support.models import export_fp32_only_model

CPU = torch.device("cpu")
REFERENCE = torch.zeros(1, 2, 4, 4)


class FakeClock:
    """``time.perf_counter`` for ``precision``: a fake run advances it by its cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(precision.time, "perf_counter", fake)
    return fake


def fake_probe(clock: FakeClock, costs: dict, lab_shift: dict[str, float] | None = None):
    """probe(dtype) for ``resolve``: each run costs ``costs[name]`` seconds and returns
    the reference a*b* shifted by ``lab_shift[name]`` Lab units; a cost of None raises."""

    def probe(dtype: torch.dtype):
        name = precision.name_of(dtype)
        if costs[name] is None:
            raise NotImplementedError(f"Traceback ...\nno {name} kernel for this op")

        def run() -> torch.Tensor:
            clock.now += costs[name]
            return REFERENCE + (lab_shift or {}).get(name, 0.0) / 128.0

        return run

    return probe


def test_auto_takes_bf16_when_it_is_faster_at_equal_output(clock):
    choice = resolve("auto", CPU, fake_probe(clock, {"fp32": 0.10, "bf16": 0.05}, {"bf16": 1.0}))
    assert choice.dtype == torch.bfloat16
    assert choice.ms == pytest.approx({"fp32": 100.0, "bf16": 50.0})
    assert choice.lab_diff["bf16"] == pytest.approx(1.0)
    assert "auto chose bf16" in choice.reason and "fp32 100.0 ms" in choice.reason


def test_auto_keeps_fp32_unless_another_precision_clearly_pays(clock):
    barely = fake_probe(clock, {"fp32": 0.100, "bf16": 0.095})
    assert resolve("auto", CPU, barely).dtype == torch.float32
    slower = fake_probe(clock, {"fp32": 0.05, "bf16": 0.10})
    assert resolve("auto", CPU, slower).dtype == torch.float32


def test_auto_keeps_fp32_when_bf16_changes_the_output(clock):
    config = AutoConfig()
    shifted = {"bf16": config.max_mean_lab_diff + 1.0}
    choice = resolve("auto", CPU, fake_probe(clock, {"fp32": 0.1, "bf16": 0.02}, shifted))
    assert choice.dtype == torch.float32
    assert choice.lab_diff["bf16"] > config.max_mean_lab_diff


def test_auto_skips_a_precision_that_cannot_run_and_says_why(clock):
    choice = resolve("auto", CPU, fake_probe(clock, {"fp32": 0.1, "bf16": None}))
    assert choice.dtype == torch.float32
    assert "no bf16 kernel for this op" in choice.refused["bf16"]
    assert "bf16 cannot run" in choice.reason


def test_a_named_precision_that_cannot_run_is_refused_naming_the_setting(clock):
    with pytest.raises(PrecisionUnusable) as refused:
        resolve("bf16", CPU, fake_probe(clock, {"fp32": 0.1, "bf16": None}))
    message = str(refused.value)
    assert "precision bf16 cannot run this model" in message
    assert "no bf16 kernel for this op" in message  # the cause, not the traceback
    assert "handler: precision:" in message and "auto or fp32" in message
    with pytest.raises(PrecisionUnusable, match="precision fp32"):
        resolve("auto", CPU, fake_probe(clock, {"fp32": None, "bf16": 0.1}))
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        resolve("fp16", CPU, fake_probe(clock, {"fp32": 0.1}))


# --- Real networks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp32_only(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp32-only")
    export_fp32_only_model(folder / "model.pt")
    return folder


def test_a_network_without_bf16_kernels_is_refused_in_bf16_and_runs_under_auto(fp32_only):
    """What stopped `make serve` on AMX CPUs, reproduced on any x86 CPU: bf16 is refused
    at load with a message, and auto falls back to fp32."""
    with pytest.raises(PrecisionUnusable, match="compute_index_ranges_weights"):
        ColorizePipeline.load(fp32_only / "model.pt", "cpu", "bf16")
    pipeline = ColorizePipeline.load(fp32_only / "model.pt", "cpu", "auto")
    assert pipeline.dtype == torch.float32 and "bf16 cannot run" in pipeline.precision_reason
    (rgb,) = pipeline.colorize([torch.rand(3, 30, 40)])
    assert rgb.shape == (3, 30, 40)


def test_the_handler_refuses_such_a_precision_with_one_log_line(fp32_only, caplog):
    from serving.runtime.constants import CANNOT_START

    with caplog.at_level(logging.ERROR), pytest.raises(PrecisionUnusable):
        Harness(fp32_only, {"precision": "bf16"})
    lines = [r.getMessage() for r in caplog.records if CANNOT_START in r.getMessage()]
    assert len(lines) == 1 and "precision bf16" in lines[0]
    assert Harness(fp32_only, {"precision": "auto"}).handler.pipeline.dtype == torch.float32


@pytest.mark.parametrize("setting", ["fp32", "bf16"])
def test_the_handler_serves_the_shipped_default_in_each_precision(tmp_path, setting):
    """bf16 is what the old rule gave every AMX CPU (and what auto takes wherever it measures
    faster): the real handler loads, warms up and colorizes the shipped default in each."""
    import shutil

    from tests.support.handler import request
    from tests.support.paths import REPO
    from tests.support.photos import photo_paths

    shutil.copy(REPO / "model_store" / "default" / "colorizer.pt", tmp_path / "model.pt")
    harness = Harness(tmp_path, {"precision": setting})
    assert harness.handler.pipeline.dtype == precision.DTYPES[setting]
    photo = photo_paths()[0].read_bytes()
    (response,) = harness.run(request(param("data", photo)))
    assert response.status == 200 and response.content_type == "image/jpeg"


def test_auto_probes_at_the_batch_size_the_network_will_run(tiny_model, monkeypatch):
    """On a GPU bf16 may win only at the served batch (64), not at 1: the probe runs at the
    batch the handler is configured for."""
    seen = []
    real = ColorizePipeline.infer

    def infer(self, batch):
        seen.append(batch.l_in.shape[0])
        return real(self, batch)

    monkeypatch.setattr(ColorizePipeline, "infer", infer)
    ColorizePipeline.load(tiny_model, "cpu", "auto", probe_batch=3)
    assert seen and set(seen) == {3}

    asked = {}
    load = ColorizePipeline.load.__func__

    def spy(cls, *args, **kwargs):
        asked.update(kwargs)
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(ColorizePipeline, "load", classmethod(spy))
    harness_dir = tiny_model.parent / "handler-probe"
    harness_dir.mkdir(exist_ok=True)
    (harness_dir / "model.pt").write_bytes(tiny_model.read_bytes())
    Harness(harness_dir)  # TorchServe's batch size there: 4
    assert asked["probe_batch"] == 4
