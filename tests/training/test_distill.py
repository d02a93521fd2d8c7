"""Distillation (training/distill.py): a member read back from an exported file, the
teacher's soft targets, the loss, and `colorizer train --teacher` end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from tests.support.models import CLASSIFIER, TINY, quick_train_config
from tests.support.models import classifier_members as members
from tests.support.models import random_inputs as inputs
from training.distill import (
    NotDistillable,
    Teacher,
    distillation_loss,
    member_from_exported,
    mix_photos,
)
from training.export import export
from training.model import Colorizer, ColorizerEnsemble
from training.synth import write_dataset
from training.train import train


@pytest.fixture(scope="module")
def ensemble_file(tmp_path_factory):
    nets = members(2)
    path = tmp_path_factory.mktemp("teacher") / "ensemble.pt"
    export(ColorizerEnsemble(nets).with_decoding(0.6, 0.3), path)
    return path, nets


@pytest.mark.parametrize("index", [0, 1])
def test_each_member_comes_back_from_the_inference_layout(ensemble_file, index):
    """The pooled head is split back into the member's own: same logits, decoding and
    class weights as the network that was exported."""
    path, nets = ensemble_file
    member = member_from_exported(path, index).eval()
    l_in, gray = inputs()
    with torch.inference_mode():
        want = nets[index].head_output(l_in, gray)
        got = member.head_output(l_in, gray)
    assert torch.allclose(got, want, atol=1e-5)
    assert (member.temperature, member.prior_correction) == (0.6, 0.3)
    assert torch.equal(member.class_weights, nets[index].class_weights)


def test_a_single_network_file_gives_its_network(tmp_path):
    net = members(1)[0]
    export(net, tmp_path / "one.pt")
    member = member_from_exported(tmp_path / "one.pt", 0).eval()
    l_in, gray = inputs(1)
    with torch.inference_mode():
        assert torch.allclose(member(l_in, gray), net(l_in, gray), atol=1e-5)


def test_refuses_a_member_that_does_not_exist_and_a_regression_teacher(ensemble_file, tmp_path):
    with pytest.raises(NotDistillable, match="member 2 does not exist: the file has 2"):
        member_from_exported(ensemble_file[0], 2)
    torch.manual_seed(0)
    regression = Colorizer(TINY).eval()
    export(regression, tmp_path / "regression.pt")
    member = member_from_exported(tmp_path / "regression.pt", 0).eval()  # it reads back
    l_in, gray = inputs(5)
    with torch.inference_mode():
        assert torch.allclose(member(l_in, gray), regression(l_in, gray), atol=1e-5)
    with pytest.raises(NotDistillable, match="regression network"):
        Teacher(tmp_path / "regression.pt")


def test_the_teacher_gives_the_ensembles_pooled_distribution(ensemble_file):
    """Its targets are the normalised geometric mean of the members' distributions: the
    softmax of what the ensemble decodes."""
    path, nets = ensemble_file
    l_in, gray = inputs(2)
    with torch.inference_mode():
        pooled = torch.stack([n.head_output(l_in, gray).log_softmax(1) for n in nets]).mean(0)
        got = Teacher(path).raw(l_in, gray).log_softmax(1)
    assert got.shape == (2, len(nets[0].bin_centers), 112, 112) and got.dtype == torch.float32
    assert torch.allclose(got, pooled.log_softmax(1), atol=1e-4)
    assert torch.allclose(got.exp().sum(1), torch.ones(2, 112, 112), atol=1e-4)


def test_the_loss_is_lowest_at_the_teachers_logits_up_to_a_per_pixel_constant():
    gen = torch.Generator().manual_seed(0)
    teacher_logits = torch.randn(2, 16, 4, 4, generator=gen)
    target = teacher_logits.log_softmax(1)
    entropy = -(target.exp() * target).sum(1).mean()
    shifted = teacher_logits + torch.randn(2, 1, 4, 4, generator=gen) * 5
    assert distillation_loss(shifted, target) == pytest.approx(float(entropy), abs=1e-5)
    other = teacher_logits + torch.randn(2, 16, 4, 4, generator=gen) * 0.5
    assert distillation_loss(other, target) > entropy + 1e-3


def test_a_student_must_share_the_teachers_bins(ensemble_file):
    with pytest.raises(NotDistillable, match="teacher's classification head"):
        Teacher(ensemble_file[0]).check_student(Colorizer(TINY))
    coarse = Colorizer(replace(CLASSIFIER, ab_bin_size=20.0))
    with pytest.raises(NotDistillable, match="bins of the same size"):
        Teacher(ensemble_file[0]).check_student(coarse)


def test_train_with_a_teacher_starts_from_the_member_and_moves_toward_the_teacher(
    ensemble_file, tmp_path
):
    """`colorizer train --init-from F --init-member 1 --teacher F`: the run starts from
    member 1 (its class weights and decoding, not recomputed from the photos) and its
    distillation loss falls; a resume keeps going from the checkpoint."""
    path, nets = ensemble_file
    data = tmp_path / "photos"
    write_dataset(data, 12, seed=0)
    run = quick_train_config(
        data, tmp_path / "run", init_from=path, init_member=1, teacher=path,
        epochs=3, lr=3e-3, max_steps_per_epoch=3, val_fraction=0.0, distill_mixup=0.5,
    )  # fmt: skip
    result = train(run)
    model = result.model.eval()
    assert torch.equal(model.class_weights, nets[1].class_weights)
    assert (model.temperature, model.prior_correction) == (0.6, 0.3)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert log[-1]["train_loss"] < log[0]["train_loss"]

    l_in, gray = inputs(3)
    teacher = Teacher(path)
    target = teacher.raw(l_in, gray).log_softmax(1)
    with torch.inference_mode():
        before = distillation_loss(nets[1].head_output(l_in, gray), target)
        after = distillation_loss(model.head_output(l_in, gray), target)
    assert after < before


def test_distill_mix_outside_zero_to_one_is_refused(ensemble_file, tmp_path):
    data = tmp_path / "photos"
    write_dataset(data, 4, seed=0)
    path = ensemble_file[0]
    run = quick_train_config(data, tmp_path / "run", teacher=path, init_from=path, distill_mix=1.5)
    with pytest.raises(ValueError, match="distill_mix must be in"):
        train(run)


def test_mixup_blends_the_chosen_photos_with_their_neighbour_alike_in_l_and_gray():
    gen = torch.Generator().manual_seed(0)
    l_in = torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1
    gray = torch.rand(6, 1, 5, 5, generator=gen) * 2 - 1
    torch.manual_seed(0)
    mixed_l, mixed_gray = mix_photos(l_in, gray, 0.5)
    assert mixed_l.shape == l_in.shape and mixed_gray.shape == gray.shape
    assert mixed_l.abs().max() <= 1 and mixed_gray.abs().max() <= 1
    kept = [i for i in range(6) if torch.equal(mixed_l[i], l_in[i])]
    assert 0 < len(kept) < 6  # seed 0 blends some photos and keeps others
    for i in set(range(6)) - set(kept):
        j = (i + 1) % 6
        # own weight w from L, then the gray image must be blended with the same w
        w = ((mixed_l[i] - l_in[j]) / (l_in[i] - l_in[j])).flatten()[0]
        assert torch.allclose(mixed_l[i], w * l_in[i] + (1 - w) * l_in[j], atol=1e-5)
        assert torch.allclose(mixed_gray[i], w * gray[i] + (1 - w) * gray[j], atol=1e-5)
        assert torch.equal(mixed_gray[i] == gray[i], torch.zeros_like(gray[i], dtype=bool))
    assert mix_photos(l_in, gray, 0.0) == (l_in, gray)


def test_mixup_needs_a_teacher_only_loss(ensemble_file, tmp_path):
    data = tmp_path / "photos"
    write_dataset(data, 4, seed=0)
    path = ensemble_file[0]
    run = quick_train_config(
        data, tmp_path / "run", teacher=path, init_from=path, distill_mix=0.5, distill_mixup=0.5
    )
    with pytest.raises(ValueError, match="distill_mixup needs distill_mix 1"):
        train(run)


def test_the_decoded_term_adds_the_squared_difference_of_the_decoded_colors(ensemble_file):
    """``--distill-decoded W``: W x mean((decode(student) - decode(teacher))^2) beside the
    cross-entropy, both decoded as the teacher decodes; nothing at the teacher's own output."""
    from training.distill import Distillation, teacher_loss

    teacher = Teacher(ensemble_file[0])
    gen = torch.Generator().manual_seed(0)
    teacher_raw = torch.randn(2, len(teacher.bin_centers), 4, 4, generator=gen)
    raw = teacher_raw + torch.randn(teacher_raw.shape, generator=gen)
    plain = teacher_loss(raw, teacher_raw, Distillation(teacher))
    assert plain == pytest.approx(float(distillation_loss(raw, teacher_raw.log_softmax(1))))
    weighted = teacher_loss(raw, teacher_raw, Distillation(teacher, decoded=100.0))
    gap = (teacher.decoded(raw) - teacher.decoded(teacher_raw)).pow(2).mean()
    assert float(gap) > 0
    assert weighted == pytest.approx(float(plain + 100.0 * gap), rel=1e-5)
    at_teacher = teacher_loss(teacher_raw, teacher_raw, Distillation(teacher, decoded=100.0))
    assert at_teacher == pytest.approx(
        float(distillation_loss(teacher_raw, teacher_raw.log_softmax(1)))
    )
    assert teacher.decoded(teacher_raw).shape == (2, 2, 4, 4)
    # the same colors the exported file decodes (it upsamples them 2x)
    exported = teacher.module.decode(teacher_raw)[:, :, ::2, ::2]
    assert torch.allclose(teacher.decoded(teacher_raw), exported, atol=1e-5)
    with pytest.raises(ValueError, match="distill_decoded must be >= 0"):
        Distillation(teacher, decoded=-1.0)
