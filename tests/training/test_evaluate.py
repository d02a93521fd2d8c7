"""Evaluation metrics and the report files."""

import json
import math

import pytest
import torch
from PIL import Image

from serving.cli import main
from serving.runtime.colorspace import rgb_to_lab
from serving.runtime.pipeline import ColorizePipeline
from tests.support.models import TINY
from training.evaluate import colorfulness, evaluate, gray_baseline, paired_difference, psnr
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


def rows(psnrs: list[float], colorful: float = 10.0) -> dict[str, dict[str, float]]:
    return {
        f"p{i}.jpg": {"psnr": v, "colorfulness": colorful, "colorfulness_gt": 20.0}
        for i, v in enumerate(psnrs)
    }


def test_paired_difference_is_the_mean_and_standard_error_of_per_photo_changes():
    """Differences 1, 2, -1, 2: mean 1.0, sample sd sqrt(2), standard error sqrt(2)/2; photos
    only one report scored are left out."""
    new = rows([21.0, 22.0, 19.0, 22.0, 30.0], colorful=12.0)
    old = rows([20.0, 20.0, 20.0, 20.0])
    got = paired_difference(new, old)
    assert got["images"] == 4 and (got["better"], got["worse"]) == (3, 1)
    assert got["psnr_diff_mean"] == pytest.approx(1.0)
    assert got["psnr_diff_sem"] == pytest.approx(math.sqrt(2) / 2)
    assert got["colorfulness_ratio_diff"] == pytest.approx(0.6 - 0.5)
    gray_truths = {f: {**r, "colorfulness_gt": 0.0} for f, r in old.items()}
    assert paired_difference(new, gray_truths)["colorfulness_ratio_diff"] is None
    with pytest.raises(ValueError, match="share 1 photo"):
        paired_difference(rows([1.0]), rows([1.0, 2.0]))


def test_cli_evaluate_against_another_report(tmp_path, capsys):
    """Two files on the same photos: paired.json compares them photo by photo; a folder
    that is not a report is refused before any photo is colorized."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        gray = Image.effect_mandelbrot((48, 40), (-2, -1.5, 1, 1.5), 40 + i)
        Image.merge("RGB", (gray, gray.point(lambda v: 255 - v), gray)).save(data / f"p{i}.png")
    reports = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = tmp_path / f"m{seed}.pt"
        export(Colorizer(TINY), model)
        reports.append(tmp_path / f"r{seed}")
        args = ["evaluate", "--model", str(model), "--data", str(data), "--out", str(reports[-1])]
        args += ["--precision", "fp32", "--device", "cpu"]
        if seed == 1:
            args += ["--against", str(reports[0])]
        assert main(args) == 0
    paired = json.loads((reports[1] / "paired.json").read_text())
    first = [json.loads(x) for x in (reports[0] / "per_image.jsonl").read_text().splitlines()]
    second = [json.loads(x) for x in (reports[1] / "per_image.jsonl").read_text().splitlines()]
    want = sum(b["psnr"] - a["psnr"] for a, b in zip(first, second, strict=True)) / 3
    assert paired["images"] == 3 and paired["psnr_diff_mean"] == pytest.approx(want)
    assert paired["colorfulness_ratio_diff"] is not None
    assert "against" in capsys.readouterr().out
    refused = ["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "x")]
    assert main([*refused, "--against", str(data)]) == 2
    assert "per_image.jsonl does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
