"""The shipped default model: present, small, loadable, and its model card's numbers reproduce."""

import json
from pathlib import Path

import pytest
import torch

from serving.runtime.model_spec import load_scripted, stored_half
from serving.runtime.pipeline import ColorizePipeline
from training.decoding import read_choice
from training.evaluate import evaluate

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "model_store" / "default"
VAL = REPO / "training" / "datasets" / "photos" / "val"
MAX_BYTES = 30 * 1024 * 1024
TOLERANCE = {"psnr": 0.05, "psnr_gray": 0.01, "colorfulness": 0.3, "l_mae": 0.05}


def test_default_weights_are_shipped_small_and_loadable():
    weights = DEFAULT / "colorizer.pt"
    assert weights.is_file(), "model_store/default/colorizer.pt is missing (make default-model)"
    assert weights.stat().st_size <= MAX_BYTES
    module, spec = load_scripted(weights)
    assert spec.l_size == 224 and spec.gray_size == 299
    assert (DEFAULT / "MODEL_CARD.md").is_file()


def test_default_is_two_fine_tuned_networks_stored_as_float16():
    """The card's model: an ensemble of two networks, each with its own backbone, whose
    weights the file stores as float16 (that is what keeps it under MAX_BYTES)."""
    stored = torch.jit.load(str(DEFAULT / "colorizer.pt"))
    assert stored_half(stored)
    module, _ = load_scripted(DEFAULT / "colorizer.pt")
    assert not stored_half(module)
    assert not module.shared_backbone and len(list(module.branches.children())) == 2


def test_default_decodes_as_its_tuning_report_chose():
    module, _ = load_scripted(DEFAULT / "colorizer.pt")
    report = json.loads((DEFAULT / "report" / "decoding.json").read_text())
    choice = read_choice(DEFAULT / "report" / "decoding.json")
    assert (module.temperature, module.prior_correction) == (
        choice.temperature,
        choice.prior_correction,
    )
    assert report["choice"]["colorfulness_ratio"] >= report["min_colorfulness_ratio"]


@pytest.mark.slow
def test_evaluate_reproduces_the_model_card_numbers(tmp_path):
    card = json.loads((DEFAULT / "report" / "metrics.json").read_text())
    precision = {"bfloat16": "bf16", "float32": "fp32"}[card["precision"]]
    pipeline = ColorizePipeline.load(DEFAULT / "colorizer.pt", device="cpu", precision=precision)
    got = evaluate(pipeline, VAL, tmp_path, progress=False)
    assert got["images"] == card["images"]
    for key, tolerance in TOLERANCE.items():
        assert got[key] == pytest.approx(card[key], abs=tolerance), key
