"""Proof that the whole pipeline is right: the compact preset learns the synthetic task.

synth -> train (CPU) -> export (TorchScript) -> evaluate on held-out images, all through
the `colorizer` command line. A pipeline with L/ab misaligned, wrong scaling, or a broken
fusion or export cannot reach these numbers.
"""

import json

import pytest

from serving.cli import main

TRAIN_IMAGES = 1024
HELD_OUT_IMAGES = 48
EPOCHS = 6


@pytest.mark.slow
def test_compact_preset_learns_the_synthetic_task(tmp_path):
    train_dir, val_dir = tmp_path / "train", tmp_path / "held_out"
    run, report = tmp_path / "run", tmp_path / "report"
    for folder, count, seed in ((train_dir, TRAIN_IMAGES, 0), (val_dir, HELD_OUT_IMAGES, 1)):
        args = ["synth", "--out", str(folder), "--count", str(count), "--seed", str(seed)]
        assert main(args) == 0
    args = ["train", "--data", str(train_dir), "--val-data", str(val_dir), "--preset", "compact"]
    args += ["--epochs", str(EPOCHS), "--batch-size", "16", "--lr", "2e-3", "--seed", "0"]
    args += ["--workers", "1", "--out", str(run), "--no-progress"]
    assert main(args) == 0
    model = tmp_path / "colorizer.pt"
    assert main(["export", str(run / "last.pt"), "--out", str(model)]) == 0
    args = ["evaluate", "--model", str(model), "--data", str(val_dir), "--out", str(report)]
    assert main(args) == 0

    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["images"] == HELD_OUT_IMAGES
    assert metrics["psnr"] >= 30.0, metrics
    assert metrics["psnr_gray"] <= metrics["psnr"] - 8.0, metrics
    assert metrics["l_mae"] <= 1.0, metrics
    assert (report / "grid.png").is_file()
