"""Slim checkpoints (what a device sweep carries back) restore to the trained network."""

from __future__ import annotations

import json

import pytest
import torch

from training.checkpoint import (
    backbone_as_loaded,
    backbone_keys,
    restore_checkpoint,
    save_checkpoint,
    slim_checkpoint,
)
from training.experiments import device_sweep
from training.model import build_model, preset

LITE0 = "efficientnet-lite0"


def trained_checkpoint(
    seed: int = 0, touch_backbone: bool = False, fuse_stage: int | None = None
) -> dict:
    """A compact Lite0 network as a frozen-backbone run leaves it: random trunk, loaded
    backbone (or one weight changed, as fine-tuning would), optionally a stage fused."""
    torch.manual_seed(seed)
    cfg = preset(
        "compact",
        backbone="tf_efficientnet_lite0",
        embed_size=224,
        head="classification",
        fuse_stage=fuse_stage,
    )
    model = build_model(cfg, LITE0)
    model.class_weights.uniform_(0.5, 2.0)
    if touch_backbone:
        with torch.no_grad():
            model.backbone.conv_stem.weight.add_(0.01)
    train_config = {"backbone_weights": LITE0, "backbone_lr_scale": 0.0}
    return {
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": {"state": {}},
        "epoch": 59,
        "extra": {"train_config": train_config},
    }


@pytest.mark.parametrize("fuse_stage", [None, 2])
def test_frozen_backbone_is_left_out_and_reloaded_exactly(fuse_stage):
    ckpt = trained_checkpoint(fuse_stage=fuse_stage)
    assert backbone_as_loaded(ckpt)
    small = slim_checkpoint(ckpt)
    assert small["backbone_from"] == LITE0 and small["halved"] == []
    assert not backbone_keys(small["model"]) and "optimizer" not in small
    restored = restore_checkpoint(small)
    assert restored["model"].keys() == ckpt["model"].keys()
    for key, value in ckpt["model"].items():
        assert torch.equal(restored["model"][key], value), key
    assert restored["epoch"] == 59 and restored["optimizer"] is None


def test_changed_backbone_travels_and_half_is_close_and_fp32_again():
    ckpt = trained_checkpoint(touch_backbone=True)
    assert not backbone_as_loaded(ckpt)
    small = slim_checkpoint(ckpt, half=True)
    assert small["backbone_from"] is None
    assert "backbone.conv_head.weight" in small["halved"]
    assert small["model"]["backbone.conv_head.weight"].dtype == torch.float16
    restored = restore_checkpoint(small)["model"]
    for key, value in ckpt["model"].items():
        assert restored[key].dtype == value.dtype, key
        torch.testing.assert_close(restored[key], value, rtol=1e-3, atol=1e-4)


def test_a_run_without_package_weights_keeps_its_backbone():
    ckpt = trained_checkpoint()
    ckpt["extra"]["train_config"]["backbone_weights"] = None
    assert not backbone_as_loaded(ckpt)
    assert backbone_keys(slim_checkpoint(ckpt)["model"])


def test_missing_or_unknown_trunk_weights_are_refused():
    small = slim_checkpoint(trained_checkpoint())
    del small["model"]["head.weight"]
    with pytest.raises(ValueError, match="lacks \\['head.weight'\\]"):
        restore_checkpoint(small)
    small = slim_checkpoint(trained_checkpoint())
    small["model"]["head.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown \\['head.extra'\\]"):
        restore_checkpoint(small)


def test_sweep_parts_restore_every_run(tmp_path, monkeypatch):
    """pack cuts the tar into parts (here tiny ones); restore joins them into last.pt files
    that equal the trained checkpoints."""
    work, parts, back = tmp_path / "work", tmp_path / "parts", tmp_path / "back"
    parts.mkdir()
    trained = {}
    for seed, name in enumerate(["default-s0", "default-s1"]):
        (work / name).mkdir(parents=True)
        trained[name] = trained_checkpoint(seed)
        model = build_model(
            preset(
                "compact", backbone="tf_efficientnet_lite0", embed_size=224, head="classification"
            )
        )
        model.load_state_dict(trained[name]["model"])
        save_checkpoint(work / name / "last.pt", model, None, 59, trained[name]["extra"])
        (work / name / "log.jsonl").write_text(json.dumps({"epoch": 59, "val_loss": 0.02}) + "\n")
        assert device_sweep.slim(work / name) == work / name / "slim.pt"
    monkeypatch.setattr(device_sweep, "PART_BYTES", 2**20)
    summary = [
        {"run": n, "choice": {"psnr_gain": g}}
        for n, g in [("default-s0", 1.0), ("default-s1", 2.0)]
    ]
    written = device_sweep.pack(work, summary, parts, budget=64 * 2**20)
    assert len(written) >= 2 and all(s["weights_returned"] for s in summary)
    device_sweep.main(["restore", str(parts), "--out", str(back)])
    for name, ckpt in trained.items():
        restored = torch.load(back / name / "last.pt", weights_only=False)["model"]
        assert all(torch.equal(restored[k], v) for k, v in ckpt["model"].items()), name
        assert (back / name / "log.jsonl").exists()


def test_table_prints_a_row_per_run_with_its_tuning(tmp_path, capsys):
    run = tmp_path / "ft-s0"
    run.mkdir()
    epochs = [
        {"epoch": e, "val_loss": v, "images_per_s": 90.0, "seconds": 3.0}
        for e, v in enumerate([0.03, 0.02, 0.025])
    ]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
    row = {
        "temperature": 1.0,
        "prior_correction": 0.25,
        "psnr_gain": 1.694,
        "colorfulness_ratio": 0.604,
    }
    (run / "tuned.json").write_text(json.dumps({"rows": [row], "choice": row}))
    device_sweep.main(["table", str(run), "--tuning", "tuned.json"])
    out = capsys.readouterr().out.splitlines()[-1]
    assert out.startswith("| ft-s0 | 3 | 0.0250 (0.0200, 1) | +1.69 dB (1, 0.25; 0.60) |")


def test_pack_leaves_out_weights_beyond_the_budget_worst_first(tmp_path):
    work = tmp_path / "work"
    for name in ("a", "b"):
        (work / name).mkdir(parents=True)
        (work / name / "slim.pt").write_bytes(b"x" * 2**20)
    summary = [{"run": "a", "choice": {"psnr_gain": 0.5}}, {"run": "b", "choice": None}]
    device_sweep.pack(work, summary, tmp_path, budget=int(2.5 * 2**20))
    assert summary[0].get("weights_returned") and not summary[1].get("weights_returned")
