"""The classification head's a*b* bins, rebalancing and annealed-mean decoding."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from serving.runtime.colorspace import rgb_to_lab
from serving.runtime.model_spec import ModelSpec
from tests.support.models import quick_train_config
from training.ab_bins import (
    SOFT_TARGET_SIGMA,
    annealed_mean,
    gamut_bin_centers,
    nearest_bin,
    rebalance_weights,
    soft_targets,
)
from training.export import export, random_inputs
from training.model import PRESETS, Colorizer
from training.synth import write_dataset
from training.train import check_target_bins, loss_fn, train

SPEC = ModelSpec()
SIGMA = SOFT_TARGET_SIGMA / SPEC.ab_scale  # what loss_fn's soft targets use


def test_bins_cover_the_srgb_gamut_and_nothing_far_outside():
    centers = gamut_bin_centers(10.0)
    assert 150 < len(centers) < 400
    ab = rgb_to_lab(torch.rand(3, 2000, 1))[1:] / SPEC.ab_scale  # (2, N, 1)
    idx = nearest_bin(ab[None], centers)  # (1, N, 1)
    dist = (centers[idx.flatten()] - ab[:, :, 0].T).norm(dim=1) * SPEC.ab_scale
    assert float(dist.max()) <= 10.0 * 2**0.5 / 2 + 1e-3  # within half a cell diagonal


def test_nearest_bin_picks_the_closest_center():
    centers = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, -0.5]])
    ab = torch.tensor([[0.1, 0.45, 0.0], [0.0, 0.1, -0.4]]).view(1, 2, 1, 3)
    assert nearest_bin(ab, centers).tolist() == [[[0, 1, 2]]]


def test_soft_targets_spread_gaussian_mass_over_the_nearest_bins():
    centers = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.3], [-0.2, 0.0]])
    ab = torch.tensor([0.02, 0.0]).view(1, 2, 1, 1)
    idx, mass = soft_targets(ab, centers, neighbors=3, sigma=0.05)
    assert idx.tolist() == [[0, 1, 3]]  # nearest first; bin 2 (0.30 away) is the 4th
    dist = torch.tensor([0.02, 0.08, 0.22])
    expected = torch.exp(-(dist**2) / (2 * 0.05**2))
    assert torch.allclose(mass[0], expected / expected.sum(), atol=1e-6)
    one_idx, one_mass = soft_targets(ab, centers, neighbors=1, sigma=0.05)
    assert one_idx.tolist() == [[0]] and one_mass.tolist() == [[1.0]]


def test_soft_targets_match_nearest_bin_and_sum_to_one_on_real_bins():
    centers = gamut_bin_centers(10.0)
    ab = torch.rand(2, 2, 5, 7) * 0.6 - 0.3
    idx, mass = soft_targets(ab, centers, 5, SIGMA)
    assert idx.shape == mass.shape == (2 * 5 * 7, 5)
    assert torch.equal(idx[:, 0], nearest_bin(ab, centers).reshape(-1))
    assert torch.allclose(mass.sum(1), torch.ones(len(mass)))
    assert bool((mass[:, :-1] >= mass[:, 1:]).all())  # nearer bins get more mass


@pytest.mark.parametrize("neighbors, sigma", [(0, 0.05), (5, 0.05), (2, 0.0)])
def test_soft_targets_refuse_bad_settings(neighbors, sigma):
    centers = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.3], [-0.2, 0.0]])
    with pytest.raises(ValueError, match="neighbors|sigma"):
        soft_targets(torch.zeros(1, 2, 1, 1), centers, neighbors, sigma)


def _classifier(seed: int = 0) -> Colorizer:
    torch.manual_seed(seed)
    model = Colorizer(replace(PRESETS["compact"], head="classification"))
    model.class_weights.copy_(torch.rand(len(model.bin_centers)) + 0.5)
    return model


def test_soft_target_loss_is_the_rebalanced_cross_entropy_against_the_soft_encoding():
    model = _classifier()
    q = len(model.bin_centers)
    raw = torch.randn(2, q, 112, 112)
    ab = torch.rand(2, 2, 224, 224) * 0.6 - 0.3
    # Reference: dense (N, Q) targets, each pixel weighted by its nearest bin's class weight.
    idx, mass = soft_targets(F.avg_pool2d(ab, 2), model.bin_centers, 5, SIGMA)
    dense = torch.zeros(len(idx), q).scatter_(1, idx, mass)
    log_p = F.log_softmax(raw.permute(0, 2, 3, 1).reshape(-1, q), dim=1)
    weight = model.class_weights[idx[:, 0]]
    expected = (weight * -(dense * log_p).sum(1)).sum() / weight.sum()
    assert float(loss_fn(model, raw, ab, target_bins=5)) == pytest.approx(float(expected), rel=1e-5)
    # One bin is the weighted cross-entropy against the nearest bin.
    nearest = nearest_bin(F.avg_pool2d(ab, 2), model.bin_centers).reshape(-1)
    flat = raw.permute(0, 2, 3, 1).reshape(-1, q)
    hard = F.cross_entropy(flat, nearest, weight=model.class_weights)
    assert float(loss_fn(model, raw, ab, target_bins=1)) == pytest.approx(float(hard), rel=1e-5)


def test_soft_target_loss_prefers_the_soft_encoding_to_the_nearest_bin_alone():
    model = _classifier()
    ab = torch.rand(1, 2, 224, 224) * 0.6 - 0.3
    q = len(model.bin_centers)
    idx, mass = soft_targets(F.avg_pool2d(ab, 2), model.bin_centers, 5, SIGMA)

    def logits(rows: torch.Tensor) -> torch.Tensor:  # (N, Q) probabilities -> (1, Q, 112, 112)
        return rows.clamp(min=1e-6).log().reshape(1, 112, 112, q).permute(0, 3, 1, 2)

    soft = torch.zeros(len(idx), q).scatter_(1, idx, mass)
    one_hot = torch.zeros(len(idx), q).scatter_(1, idx[:, :1], 1.0)
    for bins, best, other in ((5, soft, one_hot), (1, one_hot, soft)):
        assert float(loss_fn(model, logits(best), ab, bins)) < float(
            loss_fn(model, logits(other), ab, bins)
        )


def test_target_bins_are_refused_for_regression_and_beyond_the_bins():
    check_target_bins(1, Colorizer(PRESETS["compact"]))  # the default, any head
    with pytest.raises(ValueError, match="classification head"):
        check_target_bins(5, Colorizer(PRESETS["compact"]))
    with pytest.raises(ValueError, match=r"1\.\.\d+"):
        check_target_bins(10_000, _classifier())


def test_rebalance_weights_favor_rare_bins_and_average_one():
    counts = torch.tensor([1000.0, 100.0, 10.0, 0.0])
    weights = rebalance_weights(counts)
    assert weights[0] < weights[1] < weights[2] <= weights[3]
    p = counts / counts.sum()
    assert float((p * weights).sum()) == pytest.approx(1.0, abs=1e-5)


def test_rebalance_mix_one_turns_rebalancing_off_and_zero_is_refused():
    counts = torch.tensor([1000.0, 100.0, 10.0, 0.0])
    assert torch.allclose(rebalance_weights(counts, mix=1.0), torch.ones(4))
    mild, strong = rebalance_weights(counts, mix=0.8), rebalance_weights(counts, mix=0.5)
    assert float(mild.max() / mild.min()) < float(strong.max() / strong.min())
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        rebalance_weights(counts, mix=0.0)


def test_annealed_mean_interpolates_between_mean_and_mode():
    centers = torch.tensor([[0.5, 0.0], [-0.5, 0.0]])
    logits = torch.tensor([2.0, 0.0]).view(1, 2, 1, 1)
    mean = annealed_mean(logits, centers, temperature=1.0)[0, 0, 0, 0]
    sharp = annealed_mean(logits, centers, temperature=0.05)[0, 0, 0, 0]
    assert 0 < float(mean) < float(sharp) <= 0.5
    assert float(sharp) == pytest.approx(0.5, abs=1e-3)


def test_classification_model_forward_loss_and_export(tmp_path):
    cfg = replace(PRESETS["compact"], head="classification")
    model = Colorizer(cfg)
    l_in, gray = random_inputs(SPEC, 2, seed=0)
    raw = model.head_output(l_in, gray)
    assert raw.shape == (2, len(model.bin_centers), 112, 112)
    ab = torch.rand(2, 2, 224, 224) * 0.4 - 0.2
    loss = loss_fn(model, raw, ab)
    loss.backward()
    assert loss.item() > 0 and model.head.weight.grad is not None
    out = model.eval()(l_in, gray)
    assert out.shape == (2, 2, 224, 224) and float(out.abs().max()) <= 1.0
    assert export(model, tmp_path / "cls.pt") <= 1e-4


@pytest.mark.parametrize("target_bins", [1, 5])
def test_classification_training_sets_rebalancing_weights(tmp_path, target_bins):
    data = tmp_path / "data"
    write_dataset(data, 6, seed=0)
    result = train(
        quick_train_config(
            data,
            tmp_path / "run",
            val_fraction=0.3,
            head="classification",
            epochs=1,
            max_steps_per_epoch=1,
            target_bins=target_bins,
        )
    )
    weights = result.model.class_weights
    assert not torch.equal(weights, torch.ones_like(weights))  # computed from the data
    assert result.record["head"] == "classification"
    assert math.isfinite(result.record["train_loss"]) and result.record["train_loss"] > 0
