"""The classification head's a*b* bins, rebalancing and annealed-mean decoding."""

from dataclasses import replace

import pytest
import torch

from serving.runtime.colorspace import rgb_to_lab
from serving.runtime.model_spec import ModelSpec
from tests.support.models import quick_train_config
from training.ab_bins import annealed_mean, gamut_bin_centers, nearest_bin, rebalance_weights
from training.export import export, random_inputs
from training.model import PRESETS, Colorizer
from training.synth import write_dataset
from training.train import loss_fn, train

SPEC = ModelSpec()


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


def test_classification_training_sets_rebalancing_weights(tmp_path):
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
        )
    )
    weights = result.model.class_weights
    assert not torch.equal(weights, torch.ones_like(weights))  # computed from the data
    assert result.record["head"] == "classification"
