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
from training.decoding import (
    Decoding,
    NoFeasibleDecoding,
    choose,
    leave_one_out,
    read_choice,
    summary_rows,
)
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


def photo(gain: float, colorfulness: float = 10.0) -> dict[str, float]:
    """One photo's metrics as ``image_metrics`` gives them: PSNR ``gain`` dB above gray."""
    return {
        "psnr": 20.0 + gain,
        "psnr_gray": 20.0,
        "colorfulness": colorfulness,
        "colorfulness_gt": 10.0,
        "l_mae": 0.0,
    }


def test_leave_one_out_scores_each_photo_with_the_choice_made_without_it():
    lucky, steady = Decoding(1.0, 0.0), Decoding(0.5, 0.0)
    per_image = {
        lucky: [photo(6.0), photo(0.0), photo(0.0)],  # mean +2.0, all of it from photo 0
        steady: [photo(1.5), photo(1.5), photo(1.5)],  # mean +1.5
    }
    rows = summary_rows(per_image, torch.float32)
    assert choose(rows, 0.5)["temperature"] == 1.0  # on all photos the lucky one wins
    held = leave_one_out(per_image, 0.5, torch.float32)
    # Without photo 0 the steady decoding wins and scores photo 0 (+1.5); without photo 1
    # or 2 the lucky one wins and scores them (+0.0 each).
    assert held["psnr_gain"] == pytest.approx(0.5)
    assert held["images"] == 3
    assert held["method"] == "leave-one-out"
    assert held["choices"] == [
        {"temperature": 1.0, "prior_correction": 0.0, "photos": 2},
        {"temperature": 0.5, "prior_correction": 0.0, "photos": 1},
    ]


def test_leave_one_out_of_a_single_decoding_is_its_own_summary():
    only = {Decoding(0.38, 0.0): [photo(g, c) for g, c in ((1.0, 4.0), (-2.0, 9.0), (3.5, 7.0))]}
    held = leave_one_out(only, 0.0, torch.float32)
    (row,) = summary_rows(only, torch.float32)
    for key in ("psnr", "psnr_gray", "psnr_gain", "colorfulness", "colorfulness_ratio"):
        assert held[key] == pytest.approx(row[key])


def test_leave_one_out_refuses_what_it_cannot_estimate():
    with pytest.raises(ValueError, match="at least two photos"):
        leave_one_out({Decoding(1.0, 0.0): [photo(1.0)]}, 0.0, torch.float32)
    # Colorful enough on all three photos (ratio 0.6), but not without photo 0 (0.3).
    uneven = {Decoding(1.0, 0.0): [photo(1.0, 12.0), photo(1.0, 3.0), photo(1.0, 3.0)]}
    assert summary_rows(uneven, torch.float32)[0]["colorfulness_ratio"] == pytest.approx(0.6)
    with pytest.raises(NoFeasibleDecoding):
        leave_one_out(uneven, 0.5, torch.float32)


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
    held = report["held_out"]
    assert held["images"] == report["choice"]["images"] > 1
    assert sum(c["photos"] for c in held["choices"]) == held["images"]
    out = capsys.readouterr().out
    assert "choice: temperature" in out
    assert (
        f"held out (leave-one-out, each photo decoded as chosen on the other {held['images'] - 1})"
        in out
    )

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


def test_tuner_scores_an_exported_model_as_its_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "cls.pt"
    save_checkpoint(ckpt, classifier(), None, epoch=0)
    exported = tmp_path / "m.pt"
    # Exported with a decoding of its own, which the tuner must neither use nor keep.
    assert main(["export", str(ckpt), "--out", str(exported), "--temperature", "0.2"]) == 0
    grid = ["--temperatures", "0.5,1", "--corrections", "0,1", "--min-colorfulness-ratio", "0"]
    common = ["--data", PHOTOS, "--precision", "fp32", *grid]
    from_ckpt, from_model = tmp_path / "ckpt.json", tmp_path / "model.json"
    assert main(["tune-decoding", str(ckpt), "--out", str(from_ckpt), *common]) == 0
    assert main(["tune-decoding", "--model", str(exported), "--out", str(from_model), *common]) == 0
    ckpt_report, model_report = (json.loads(f.read_text()) for f in (from_ckpt, from_model))
    assert model_report["model"] == str(exported)
    for mine, theirs in zip(ckpt_report["rows"], model_report["rows"], strict=True):
        assert (mine["temperature"], mine["prior_correction"]) == (
            theirs["temperature"],
            theirs["prior_correction"],
        )
        assert mine["psnr"] == pytest.approx(theirs["psnr"], abs=1e-3)
        assert mine["colorfulness"] == pytest.approx(theirs["colorfulness"], rel=1e-3)
    capsys.readouterr()
    both = ["tune-decoding", str(ckpt), "--model", str(exported), "--out", str(from_model)]
    assert main([*both, *common]) == 2
    assert "one of the two" in capsys.readouterr().err
    assert main(["tune-decoding", "--out", str(from_model), *common]) == 2


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
