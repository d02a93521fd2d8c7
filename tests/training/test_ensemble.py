"""Ensembles: several classification networks run as one, sharing one frozen backbone or
each with its own (fine-tuned) backbone."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from serving.cli import main
from serving.runtime.imageio import decode_image
from serving.runtime.model_spec import load_scripted, stored_half
from serving.runtime.pipeline import ColorizePipeline
from tests.support.models import TINY
from training.checkpoint import models_from_checkpoints, save_checkpoint
from training.evaluate import evaluate
from training.export import random_inputs, round_to_half, script_model
from training.model import Colorizer, ColorizerEnsemble, count_parameters

PHOTOS = "tests/data/photos"
CLASSIFIER = replace(TINY, head="classification")


def members(count: int = 2) -> list[Colorizer]:
    """Networks with their own random trunks and one shared backbone, as seeds of a
    frozen-backbone recipe give, and uneven class weights, as rebalancing gives."""
    nets = []
    for seed in range(count):
        torch.manual_seed(seed)
        net = Colorizer(CLASSIFIER).eval()
        net.class_weights.copy_(torch.linspace(0.2, 5.0, len(net.class_weights)))
        nets.append(net)
    for net in nets[1:]:
        net.backbone.load_state_dict(nets[0].backbone.state_dict())
    return nets


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, 224, 224, generator=gen) * 2 - 1, torch.rand(
        2, 1, 299, 299, generator=gen
    ) * 2 - 1


def test_pools_the_members_log_probabilities():
    nets = members(3)
    l_in, gray = inputs()
    with torch.inference_mode():
        expected = torch.stack([n.head_output(l_in, gray).log_softmax(1) for n in nets]).mean(0)
        pooled = ColorizerEnsemble(nets).head_output(l_in, gray)
    assert pooled.shape == (2, len(nets[0].bin_centers), 112, 112)
    assert torch.allclose(pooled, expected, atol=1e-5)
    assert not torch.allclose(pooled, nets[0].head_output(l_in, gray).log_softmax(1), atol=1e-3)


def test_an_ensemble_of_one_network_twice_decodes_like_the_network():
    net = members(1)[0].with_decoding(0.5, 0.25)
    twice = ColorizerEnsemble([net, net]).with_decoding(0.5, 0.25)
    l_in, gray = inputs(1)
    with torch.inference_mode():
        ab = twice(l_in, gray)
        assert ab.shape == (2, 2, 224, 224)
        assert torch.allclose(ab, net(l_in, gray), atol=1e-5)


def assert_same_pooled_logits(exported, ensemble, l_in, gray) -> None:
    """An exported ensemble's logits equal the ensemble's pooled log-probabilities up to a
    per-pixel constant (which the decoding's softmax removes), to float32 rounding of their
    size. Compared before decoding: these random members' logits run into the thousands,
    so their distributions are one-hot and a rounding difference can tip a near-tie to the
    next bin (a*b* jumps a bin width) in the decoded colors."""
    with torch.inference_mode():
        mine, theirs = exported.head_output(l_in, gray), ensemble.head_output(l_in, gray)
    diff = mine - theirs
    rounding = 1e-6 * max(1.0, float(theirs.abs().max()))
    assert float((diff - diff.mean(dim=1, keepdim=True)).abs().max()) < rounding


def fine_tuned(count: int = 2) -> list[Colorizer]:
    """Members whose backbones differ, as seeds of a fine-tuning recipe give (fused, like
    the default's recipe)."""
    nets = members(count)
    for i, net in enumerate(nets[1:], start=1):
        with torch.no_grad():
            for p in net.backbone.parameters():
                p.add_(0.01 * i)
    return nets


def test_members_with_their_own_backbones_each_run_theirs():
    nets = fine_tuned(3)
    ensemble = ColorizerEnsemble(nets).eval()
    assert not ensemble.shared_backbone and ColorizerEnsemble(members(2)).shared_backbone
    l_in, gray = inputs(2)
    with torch.inference_mode():
        expected = torch.stack([n.head_output(l_in, gray).log_softmax(1) for n in nets]).mean(0)
        pooled = ensemble.head_output(l_in, gray)
        shared = ColorizerEnsemble([nets[0], *members(3)[1:]]).head_output(l_in, gray)
    assert torch.allclose(pooled, expected, atol=1e-5)
    assert not torch.allclose(pooled, shared, atol=1e-3)  # the backbones' differences count
    assert_same_pooled_logits(script_model(ensemble), ensemble, l_in, gray)
    # Every member's whole network is stored.
    assert count_parameters(ensemble) == sum(count_parameters(n) for n in nets)


def test_refuses_members_that_cannot_be_pooled():
    with pytest.raises(ValueError, match="at least two"):
        ColorizerEnsemble(members(1))
    with pytest.raises(ValueError, match="regression"):
        ColorizerEnsemble([Colorizer(TINY), Colorizer(TINY)])
    a, b = members()
    b.class_weights.fill_(1.0)
    with pytest.raises(ValueError, match="class weights"):
        ColorizerEnsemble([a, b])
    wider = Colorizer(replace(CLASSIFIER, fusion_channels=4))
    with pytest.raises(ValueError, match="another config"):
        ColorizerEnsemble([members(1)[0], wider])


def test_tune_export_and_serve_an_ensemble_from_checkpoints(tmp_path):
    paths = []
    for i, net in enumerate(members(2)):
        paths.append(str(tmp_path / f"seed{i}.pt"))
        save_checkpoint(paths[-1], net, None, epoch=0)
    result = tmp_path / "decoding.json"
    grid = ["--temperatures", "0.5,1", "--corrections", "0,1", "--min-colorfulness-ratio", "0"]
    args = [*paths, "--data", PHOTOS, "--out", str(result), "--precision", "fp32", *grid]
    assert main(["tune-decoding", *args]) == 0
    report = json.loads(result.read_text())
    assert report["checkpoint"] == paths

    exported = tmp_path / "ensemble.pt"
    assert main(["export", *paths, "--out", str(exported), "--decoding", str(result)]) == 0
    module, spec = load_scripted(exported)
    # The backbone is stored once: one network's parameters plus one more trunk; the two
    # heads pool into one conv with one bias.
    one, ensemble = models_from_checkpoints(paths[:1]), models_from_checkpoints(paths)
    trunk = count_parameters(one) - count_parameters(one.backbone)
    one_bias = one.head.bias.numel()
    assert count_parameters(module) == count_parameters(one) + trunk - one_bias
    l_in, gray = random_inputs(spec, 1, seed=5)
    with torch.inference_mode():
        ensemble.with_decoding(module.temperature, module.prior_correction)
    assert_same_pooled_logits(module, ensemble, l_in, gray)
    pipeline = ColorizePipeline(module, spec, torch.device("cpu"), torch.float32)
    summary = evaluate(pipeline, PHOTOS, tmp_path / "report", progress=False)
    assert summary["psnr"] == pytest.approx(report["choice"]["psnr"], abs=1e-3)

    # A GPU worker freezes the network (jit.freeze + optimize_for_inference); the loop
    # over members must survive that with the same output.
    frozen = ColorizePipeline.load(exported, "cpu", "fp32", freeze=True)
    batch = pipeline.prepare(
        [decode_image(p.read_bytes()) for p in sorted(Path(PHOTOS).glob("*.jpg"))[:2]]
    )
    assert frozen.frozen
    assert torch.allclose(pipeline.infer(batch), frozen.infer(batch), atol=1e-4)


def test_cli_names_the_mismatch(tmp_path, capsys):
    a, b = members()
    b.class_weights.fill_(1.0)
    paths = [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    save_checkpoint(paths[0], a, None, epoch=0)
    save_checkpoint(paths[1], b, None, epoch=0)
    assert main(["export", *paths, "--out", str(tmp_path / "x.pt")]) == 2
    assert "other class weights" in capsys.readouterr().err


def test_half_export_of_fine_tuned_members_halves_the_file_and_loads_as_float32(tmp_path):
    paths = []
    for i, net in enumerate(fine_tuned(2)):
        paths.append(str(tmp_path / f"member{i}.pt"))
        save_checkpoint(paths[-1], net, None, epoch=0)
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    assert main(["export", *paths, "--out", str(full)]) == 0
    assert main(["export", *paths, "--out", str(half), "--half"]) == 0
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert stored_half(torch.jit.load(str(half)))  # the file really holds float16

    module, spec = load_scripted(half)
    assert not stored_half(module)
    assert all(p.dtype == torch.float32 for p in module.parameters())
    reference, _ = load_scripted(full)
    l_in, gray = random_inputs(spec, 2, seed=3)
    with torch.inference_mode():
        ab_half, ab_full = module(l_in, gray), reference(l_in, gray)
    assert ab_half.dtype == torch.float32
    assert 0 < float((ab_half - ab_full).abs().max()) * spec.ab_scale < 1.0  # Lab units
    # The pipeline serves it like any file.
    pipeline = ColorizePipeline.load(half, "cpu", "fp32")
    photo = decode_image(sorted(Path(PHOTOS).glob("*.jpg"))[0].read_bytes())
    assert pipeline.infer(pipeline.prepare([photo])).shape[1] == 2


def test_half_export_refuses_weights_beyond_float16():
    net = members(1)[0]
    with torch.no_grad():
        net.head.bias[0] = 1e6
    with pytest.raises(ValueError, match="head.bias.*float16"):
        round_to_half(net)
    assert float(net.head.bias[0]) == 1e6  # untouched
    regression = round_to_half(Colorizer(TINY))  # an empty bin-center buffer is fine
    assert regression.bin_centers.numel() == 0
