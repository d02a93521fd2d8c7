"""training/experiments/share_backbone.py: an ensemble whose members each carry
their own backbone becomes one that stores and runs a single backbone, the other members
re-fitted to it by distillation from their old selves."""

from __future__ import annotations

import json

import pytest
import torch

from serving.runtime.model_spec import load_scripted
from tests.support.models import classifier_members, random_inputs
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.distill import members_from_exported
from training.experiments.share_backbone import NotShareable, ShareConfig, share
from training.export import export
from training.model import ColorizerEnsemble
from training.synth import write_dataset


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_dataset(root / "train", 8, seed=0)
    write_dataset(root / "val", 4, seed=1)
    return root


def share_config(source, out, photos, **overrides) -> ShareConfig:
    base = dict(
        source=source, out=out, data=photos / "train", val_data=photos / "val",
        backbone_member=1, epochs=2, lr=3e-3, batch_size=2, workers=0, precision="fp32",
        max_steps_per_epoch=3, progress=False,
    )  # fmt: skip
    return ShareConfig(**{**base, **overrides})


def backbone_keys(path) -> list[str]:
    module, _ = load_scripted(path)
    keys = module.state_dict()
    return sorted(
        {
            "" if k.startswith("backbone.") else k.split(".backbone.")[0]
            for k in keys
            if "backbone." in k
        }
    )


def test_the_ensemble_runs_one_backbone_and_member_0_moves_toward_its_old_self(tmp_path, photos):
    """Members with different backbones in; out: one stored backbone (member 1's), member 1
    as it was, member 0 re-fitted: trained from itself on member 1's frozen backbone,
    taught by itself as it was (how distillation moves a student: test_distill.py). A
    rerun resumes: nothing is trained again, the file is written again."""
    nets = classifier_members(2)
    source = tmp_path / "ensemble.pt"
    export(ColorizerEnsemble(nets).with_decoding(0.6, 0.3), source)
    assert backbone_keys(source) == ["trunks.0", "trunks.1"]  # one backbone per member

    cfg = share_config(source, tmp_path / "run", photos, epochs=3)
    out = share(cfg)
    assert out == tmp_path / "run" / "shared.pt"
    assert backbone_keys(out) == [""]  # the ensemble's own `backbone.`, run once

    # Member 1's layers are stored as they were (float16 rounding aside), its backbone is
    # the one stored, and member 0 runs on it.
    before, after = load_scripted(source)[0].state_dict(), load_scripted(out)[0].state_dict()
    kept = [k for k in before if k.startswith("trunks.1.") and ".backbone." not in k]
    assert kept
    for key in kept:
        assert torch.allclose(after[key].float(), before[key].float(), rtol=1e-3, atol=1e-4), key
    width = after["head.weight"].shape[1] // 2
    member_1_head = (after["head.weight"][:, width:], before["head.weight"][:, width:])
    assert torch.allclose(*member_1_head, rtol=1e-3, atol=1e-4)
    back = members_from_exported(out)
    for key, value in nets[1].backbone.state_dict().items():
        assert torch.allclose(back[0].backbone.state_dict()[key], value, rtol=1e-3, atol=1e-4)
    assert (back[0].temperature, back[0].prior_correction) == (0.6, 0.3)

    # Member 0 trained from itself on member 1's backbone, taught by itself as it was.
    folder = tmp_path / "run" / "member-0"
    teacher = members_from_exported(folder / "teacher.pt")[0].eval()
    start = members_from_exported(folder / "init.pt")[0].eval()
    l_in, gray = random_inputs(5)
    with torch.inference_mode():
        want = nets[0].head_output(l_in, gray)
        assert torch.allclose(teacher.head_output(l_in, gray), want, atol=1e-5)
    for part, donor in (("backbone", nets[1]), ("encoder", nets[0]), ("decoder", nets[0])):
        mine = getattr(start, part).state_dict()
        assert all(torch.equal(v, mine[k]) for k, v in getattr(donor, part).state_dict().items())
    run = json.loads(json.dumps(load_checkpoint(folder / "last.pt")["extra"]["train_config"]))
    assert (run["init_from"], run["teacher"]) == (
        str(folder / "init.pt"),
        str(folder / "teacher.pt"),
    )
    assert (run["backbone_lr_scale"], run["backbone_bn"]) == (0.0, "frozen")
    refit = model_from_checkpoint(folder / "last.pt")
    trained = refit.state_dict()
    moved = [k for k, v in start.state_dict().items() if not torch.equal(v, trained[k])]
    assert moved and not [k for k in moved if k.startswith("backbone.")], moved
    assert not (tmp_path / "run" / "member-1").exists()

    log = folder / "log.jsonl"
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == [0, 1, 2]
    out.unlink()
    share(cfg)
    assert out.exists()
    assert len(log.read_text().splitlines()) == 3  # already trained: not trained again


def test_refuses_one_network_and_a_member_that_does_not_exist(tmp_path, photos):
    single = tmp_path / "one.pt"
    export(classifier_members(1)[0], single)
    with pytest.raises(NotShareable, match="holds one network"):
        share(share_config(single, tmp_path / "a", photos))
    pair = tmp_path / "two.pt"
    export(ColorizerEnsemble(classifier_members(2)).with_decoding(0.6, 0.3), pair)
    with pytest.raises(NotShareable, match="--backbone-member 2: .* has members 0..1"):
        share(share_config(pair, tmp_path / "b", photos, backbone_member=2))
