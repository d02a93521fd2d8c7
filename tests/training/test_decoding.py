"""Decoding of the classification head: prior correction, the tuner, export of the choice."""

import json
from dataclasses import replace

import pytest
import torch

from serving.cli import main
from serving.runtime.model_spec import load_scripted
from serving.runtime.pipeline import ColorizePipeline
from tests.support.models import TINY
from training.ab_bins import adjust_for_prior, annealed_mean
from training.checkpoint import save_checkpoint
from training.decoding import NoFeasibleDecoding, choose, read_choice
from training.evaluate import evaluate
from training.export import random_inputs
from training.model import Colorizer

PHOTOS = "tests/data/photos"


def classifier() -> Colorizer:
    torch.manual_seed(0)
    model = Colorizer(replace(TINY, head="classification")).eval()
    # Uneven weights, as rebalancing gives, so the prior correction has an effect.
    model.class_weights.copy_(torch.linspace(0.2, 5.0, len(model.class_weights)))
    return model


def test_prior_correction_divides_out_the_class_weights():
    logits = torch.zeros(1, 2, 1, 1)
    weights = torch.tensor([1.0, 4.0])
    assert torch.equal(adjust_for_prior(logits, weights, 0.0), logits)
    probs = torch.softmax(adjust_for_prior(logits, weights, 1.0), dim=1).flatten()
    assert probs.tolist() == pytest.approx([0.8, 0.2])  # proportional to 1 / w
    centers = torch.tensor([[0.5, 0.0], [-0.5, 0.0]])
    more = annealed_mean(adjust_for_prior(logits, weights, -1.0), centers, 1.0)[0, 0, 0, 0]
    assert float(more) < 0  # negative correction leans further toward the up-weighted class


def test_choose_takes_the_best_gain_that_is_colorful_enough():
    rows = [
        {"temperature": 1.0, "prior_correction": 1.0, "psnr_gain": 2.0, "colorfulness_ratio": 0.3},
        {"temperature": 0.38, "prior_correction": 0.0, "psnr_gain": 1.2, "colorfulness_ratio": 0.6},
        {"temperature": 0.2, "prior_correction": 0.0, "psnr_gain": 0.9, "colorfulness_ratio": 0.8},
    ]
    assert choose(rows, 0.5)["temperature"] == 0.38
    assert choose(rows, 0.0)["temperature"] == 1.0
    with pytest.raises(NoFeasibleDecoding, match="0.800"):
        choose(rows, 0.9)


def test_with_decoding_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        classifier().with_decoding(0.0, 0.0)
    with pytest.raises(ValueError, match="classification head"):
        Colorizer(TINY).with_decoding(0.38, 0.0)


def test_tuner_scores_match_the_exported_model_it_chooses(tmp_path, capsys):
    ckpt = tmp_path / "cls.pt"
    save_checkpoint(ckpt, classifier(), None, epoch=0)
    result = tmp_path / "decoding.json"
    args = ["--data", PHOTOS, "--out", str(result), "--precision", "fp32"]
    grid = ["--temperatures", "0.3,1", "--corrections", "0,1", "--min-colorfulness-ratio", "0"]
    assert main(["tune-decoding", str(ckpt), *args, *grid]) == 0
    report = json.loads(result.read_text())
    assert len(report["rows"]) == 4
    assert report["choice"] == max(report["rows"], key=lambda r: r["psnr_gain"])
    assert "choice: temperature" in capsys.readouterr().out

    # The tuner decodes cached logits; the service runs the exported file end to end.
    exported = tmp_path / "chosen.pt"
    assert main(["export", str(ckpt), "--out", str(exported), "--decoding", str(result)]) == 0
    module, spec = load_scripted(exported)
    chosen = read_choice(result)
    assert (module.temperature, module.prior_correction) == (
        chosen.temperature,
        chosen.prior_correction,
    )
    pipeline = ColorizePipeline(module, spec, torch.device("cpu"), torch.float32)
    summary = evaluate(pipeline, PHOTOS, tmp_path / "report", progress=False)
    assert summary["psnr"] == pytest.approx(report["choice"]["psnr"], abs=1e-3)
    assert summary["colorfulness"] == pytest.approx(report["choice"]["colorfulness"], rel=1e-3)


def test_export_flags_override_decoding(tmp_path):
    ckpt = tmp_path / "cls.pt"
    save_checkpoint(ckpt, classifier(), None, epoch=0)
    out = tmp_path / "m.pt"
    args = ["export", str(ckpt), "--out", str(out), "--temperature", "0.7"]
    assert main([*args, "--prior-correction", "0.5"]) == 0
    module, _ = load_scripted(out)
    expected = classifier().with_decoding(0.7, 0.5)
    l_in, gray = random_inputs(load_scripted(out)[1], 1, seed=3)
    with torch.inference_mode():
        assert torch.allclose(module(l_in, gray), expected(l_in, gray), atol=1e-5)


def test_tuner_refuses_a_regression_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "reg.pt"
    save_checkpoint(ckpt, Colorizer(TINY), None, epoch=0)
    out = tmp_path / "d.json"
    assert main(["tune-decoding", str(ckpt), "--data", PHOTOS, "--out", str(out)]) == 2
    assert "classification-head checkpoint" in capsys.readouterr().err
