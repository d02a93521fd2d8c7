"""Training loop: logs, checkpoints, exact resume, and DDP on 2 CPU processes."""

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.support.models import quick_train_config
from training.checkpoint import load_checkpoint
from training.synth import write_dataset
from training.train import TrainConfig, lr_at, resume_differences, train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    write_dataset(folder, 12, seed=0)
    return folder


def test_train_logs_checkpoints_and_resumes_exactly(synth_data, tmp_path):
    straight = train(quick_train_config(synth_data, tmp_path / "straight"))
    log = [json.loads(x) for x in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    for record in log:
        for key in ("train_loss", "val_loss", "images_per_s", "seconds", "dtype"):
            assert key in record
        assert record["images"] == 4
    ckpt = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["optimizer"] is not None
    assert (tmp_path / "straight" / "best.pt").is_file()

    train(quick_train_config(synth_data, tmp_path / "part", epochs=1))
    resumed = train(
        quick_train_config(
            synth_data, tmp_path / "part", resume=tmp_path / "part" / "last.pt", epochs=2
        )
    )
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    part_log = (tmp_path / "part" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in part_log] == [0, 1]


def test_resume_names_the_options_that_differ_from_the_run(synth_data, tmp_path, caplog):
    train(quick_train_config(synth_data, tmp_path / "run", epochs=1))
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["extra"]["train_config"]
    longer = quick_train_config(
        synth_data, tmp_path / "run", resume=tmp_path / "run" / "last.pt", epochs=3
    )
    assert resume_differences(longer, saved) == {}  # where and how long may change
    unfrozen = replace(longer, backbone_lr_scale=0.5, lr=2e-3)
    assert resume_differences(unfrozen, saved) == {
        "backbone_lr_scale": (saved["backbone_lr_scale"], 0.5),
        "lr": (saved["lr"], 2e-3),
    }
    with caplog.at_level(logging.WARNING, logger="training.train"):
        train(replace(longer, epochs=2, lr=2e-3))
    assert "--lr 0.001 -> 0.002" in caplog.text


def test_lr_schedules():
    cfg = TrainConfig(data=Path("d"), out=Path("o"), lr=1e-3)
    assert [lr_at(cfg, p) for p in (0.0, 0.5, 1.0)] == [1e-3] * 3
    cosine = TrainConfig(data=Path("d"), out=Path("o"), lr=1e-3, lr_schedule="cosine")
    assert lr_at(cosine, 0.0) == pytest.approx(1e-3)
    assert lr_at(cosine, 0.5) == pytest.approx(5e-4)
    assert lr_at(cosine, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(cosine, 0.25) > lr_at(cosine, 0.75)
    with pytest.raises(ValueError, match="constant, cosine"):
        lr_at(TrainConfig(data=Path("d"), out=Path("o"), lr_schedule="step"), 0.5)


def test_cosine_run_ends_at_zero_learning_rate(synth_data, tmp_path):
    train(quick_train_config(synth_data, tmp_path / "cos", lr_schedule="cosine"))
    log = [json.loads(x) for x in (tmp_path / "cos" / "log.jsonl").read_text().splitlines()]
    assert log[0]["lr"] == pytest.approx(5e-4) and log[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_training_moves_the_weights(synth_data, tmp_path):
    result = train(quick_train_config(synth_data, tmp_path / "a", epochs=1, seed=1))
    fresh = train(
        quick_train_config(synth_data, tmp_path / "b", epochs=1, seed=1, max_steps_per_epoch=0)
    )
    moved = [
        not torch.equal(v, fresh.model.state_dict()[k])
        for k, v in result.model.state_dict().items()
        if v.is_floating_point()
    ]
    assert any(moved)


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_identical_weights(synth_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(REPO / "tests" / "training" / "ddp_worker.py"), str(synth_data), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    initial = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], initial[key]), key  # the checkpoint is rank 0's weights
    log = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert log["world_size"] == 2
    assert log["images"] == 2 * 2 * 2  # 2 ranks x 2 steps x batch 2: both ranks' samples counted


def test_train_bench_reports_both_precisions_and_their_ratio(capsys):
    from serving.cli import main

    assert main(["train-bench", "--batch-size", "2", "--steps", "1", "--rounds", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fp32_img_s"] > 0 and result["bf16_img_s"] > 0
    assert result["bf16_over_fp32"] == pytest.approx(result["bf16_img_s"] / result["fp32_img_s"])
