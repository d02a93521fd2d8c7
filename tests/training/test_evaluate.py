"""Evaluation metrics and the report files."""

import json
import math

import pytest
import torch
from PIL import Image

from serving.runtime.colorspace import rgb_to_lab
from serving.runtime.pipeline import ColorizePipeline
from tests.support.models import TINY
from training.evaluate import colorfulness, evaluate, gray_baseline, psnr
from training.export import export
from training.model import Colorizer


def test_psnr_known_values():
    a = torch.zeros(3, 4, 4)
    assert psnr(a, a) == 100.0
    assert psnr(a + 0.1, a) == pytest.approx(20.0, abs=1e-4)


def test_colorfulness_gray_is_zero_and_saturation_raises_it():
    gray = torch.full((3, 8, 8), 0.5)
    assert colorfulness(gray) == pytest.approx(0.0, abs=1e-9)
    red = torch.zeros(3, 8, 8)
    red[0] = 1.0
    # rg = 255, yb = 127.5 everywhere: sigma 0, mu = sqrt(255^2 + 127.5^2)
    assert colorfulness(red) == pytest.approx(0.3 * math.hypot(255, 127.5), rel=1e-6)


def test_gray_baseline_keeps_l_and_drops_color():
    rgb = torch.rand(3, 16, 16)
    lab_in, lab_out = rgb_to_lab(rgb), rgb_to_lab(gray_baseline(rgb))
    assert float((lab_in[0] - lab_out[0]).abs().max()) < 0.05
    assert float(lab_out[1:].abs().max()) < 0.1


def test_evaluate_writes_metrics_and_grid(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, size in enumerate([(64, 48), (33, 71), (100, 100)]):
        Image.effect_mandelbrot(size, (-2, -1.5, 1, 1.5), 50 + i).convert("RGB").save(
            data / f"p{i}.png"
        )
        Image.new("RGB", size, (30 * i, 200, 90)).save(data / f"q{i}.jpg")
    model_path = tmp_path / "m.pt"
    export(Colorizer(TINY), model_path)
    pipeline = ColorizePipeline.load(model_path, device="cpu", precision="fp32")
    report = tmp_path / "report"
    summary = evaluate(pipeline, data, report, batch_size=4, progress=False)
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics == summary
    for key in ("images", "psnr", "psnr_gray", "colorfulness", "colorfulness_gt", "l_mae"):
        assert key in metrics
    assert metrics["images"] == 6
    assert metrics["l_mae"] < 1.0  # output L equals input L
    grid = Image.open(report / "grid.png")
    assert grid.height >= 6 * 192
    assert len((report / "per_image.jsonl").read_text().splitlines()) == 6
