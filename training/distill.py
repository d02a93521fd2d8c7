"""Distillation: train one network to give what an exported file (an ensemble) gives.

Two pieces, both used by `colorizer train`:

- ``member_from_exported``: one member of an exported file, as a trainable ``Colorizer``
  (``--init-from FILE.pt --init-member I``). The file keeps each member's layers before
  its head (``training.inference.Trunk``) and one pooled head whose weights are the
  members' concatenated along the input channels and divided by their count; member I's
  head is its slice times that count. A member's own head bias is not kept (only the
  members' mean is), so the member starts from the mean bias: a per-bin offset that the
  first steps of training absorb.
- ``Teacher``: the exported file, frozen, giving the soft targets: the softmax of its
  pooled head output, the distribution the ensemble decodes (``--teacher FILE.pt``).
  ``distillation_loss`` is the cross-entropy of the student's logits against it.
- ``mix_photos``: mixup of the batch's photos (``--distill-mixup``), inputs the teacher
  never trained on: on its own training photos a teacher gives back what it memorised,
  on blends it shows how it generalises.

The student learns the teacher's logits up to a per-pixel constant, so the teacher's
decoding (temperature, prior correction) carries over; `colorizer tune-decoding` checks it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from serving.runtime.model_spec import load_scripted
from training.ab_bins import adjust_for_prior, annealed_mean
from training.inference import NETWORK_FILE, load_from_file, state_mismatch
from training.model import Colorizer, ColorizerConfig, ColorizerEnsemble, Network, backbone_input

# Each member's modules in the file (``trunks.I.<part>``), named as in a Colorizer.
TRUNK_PARTS = ("encoder", "fusion", "decoder", "backbone")


class NotDistillable(ValueError):
    """The file is not an exported classification network whose members can be read."""


def read_network_config(path: str | Path) -> tuple[ColorizerConfig, int]:
    """The (config, member count) an exported file carries in its ``NETWORK_FILE``."""
    extra = {NETWORK_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[NETWORK_FILE]:
        raise NotDistillable(
            f"{path} carries no {NETWORK_FILE}; files exported since the inference layout do"
        )
    data = json.loads(extra[NETWORK_FILE])
    return ColorizerConfig.from_dict(data["config"]), int(data["members"])


def member_state(
    state: dict[str, torch.Tensor], members: int, index: int
) -> dict[str, torch.Tensor]:
    """A ``Colorizer`` state dict for member ``index`` of an inference-layout state dict.

    Head: weight (Q, M*C, k, k) -> member ``index``'s (Q, C, k, k) slice times M; bias
    (Q,): the members' mean, as stored. A backbone shared by all members
    (``backbone.*`` at the top) is every member's.
    """
    if not 0 <= index < members:
        raise NotDistillable(f"member {index} does not exist: the file has {members}")
    out: dict[str, torch.Tensor] = {}
    prefix = f"trunks.{index}."
    for key, value in state.items():
        if key.startswith(prefix) and key[len(prefix) :].split(".")[0] in TRUNK_PARTS:
            out[key[len(prefix) :]] = value
        elif key.startswith("backbone."):
            out[key] = value
    weight = state["head.weight"]
    width = weight.shape[1] // members
    out["head.weight"] = weight[:, index * width : (index + 1) * width] * members
    out["head.bias"] = state["head.bias"]
    out["bin_centers"] = state["bin_centers"]
    out["class_weights"] = state["class_weights"]
    return out


def members_from_exported(path: str | Path, indices: list[int] | None = None) -> list[Colorizer]:
    """Members ``indices`` (default: all) of the exported file at ``path``, float32, each with
    the file's class weights and (classification) decoding; the file is read once. Raises
    NotDistillable for a member that does not exist or a file whose weights do not fit its
    own config."""
    config, members = read_network_config(path)
    module, _ = load_scripted(path)
    state = {k: v.float() for k, v in module.state_dict().items()}
    nets = []
    for index in range(members) if indices is None else indices:
        model = Colorizer(config)
        mine = member_state(state, members, index)
        mismatch = state_mismatch(model, mine)
        if mismatch:
            raise NotDistillable(f"{path}'s member {index} does not fit its config: {mismatch}")
        nets.append(load_from_file(model, mine, module))
    return nets


def member_from_exported(path: str | Path, index: int = 0) -> Colorizer:
    """Member ``index`` of the exported file at ``path`` (see ``members_from_exported``)."""
    return members_from_exported(path, [index])[0]


def network_from_inference_file(path: str | Path) -> Network:
    """Every member of an exported file, as the network it was exported from (one
    ``Colorizer``, or a ``ColorizerEnsemble``): what re-exporting the file's weights with
    the current code starts from. Its output is the file's: each member gets the members'
    mean head bias, and the pooled head's bias is that mean either way."""
    nets = members_from_exported(path)
    if len(nets) == 1:
        return nets[0]
    return ColorizerEnsemble(nets).with_decoding(nets[0].temperature, nets[0].prior_correction)


class Teacher:
    """An exported classification file, in float32 on ``device`` (the training's), as soft
    targets."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        module, spec = load_scripted(path, device)
        if not bool(module.classify):
            raise NotDistillable(f"{path} is a regression network; a teacher needs bins")
        self.path = Path(path)
        self.device = torch.device(device)
        self.gray_size = spec.gray_size
        self.bin_centers = module.bin_centers.detach().cpu().clone()
        self.class_weights = module.class_weights.detach().cpu().clone()
        self.temperature = float(module.temperature)
        self.prior_correction = float(module.prior_correction)
        self.module = module

    @torch.inference_mode()
    def raw(self, l_in: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
        """(l (B,1,224,224), gray (B,1,G,G)), both in [-1, 1] -> the teacher's pooled head
        output (B, Q, 112, 112) float32 on the teacher's device. The gray image is resized to
        the teacher's input side as the training network resizes it for its backbone
        (``backbone_input``)."""
        teacher_gray = backbone_input(gray.to(self.device), self.gray_size)[:, :1]
        return self.module.head_output(l_in.to(self.device).float(), teacher_gray.float()).float()

    def decoded(self, raw: torch.Tensor) -> torch.Tensor:
        """Head output (B, Q, H, W) -> a*b* (B, 2, H, W) in [-1, 1], float32, decoded as the
        teacher decodes (its prior correction and annealed-mean temperature); differentiable,
        so a student's head output decodes the same way."""
        adjusted = adjust_for_prior(raw, self.class_weights.to(raw.device), self.prior_correction)
        return annealed_mean(adjusted, self.bin_centers.to(raw.device), self.temperature)

    def check_student(self, model: Colorizer) -> None:
        """NotDistillable unless ``model`` has a classification head over the same bins."""
        if not model.classify or not torch.equal(model.bin_centers.cpu(), self.bin_centers):
            raise NotDistillable(
                f"the student must have the teacher's classification head ({len(self.bin_centers)} "
                "a*b* bins of the same size); train it with --head classification"
            )


def distillation_loss(raw: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the cross-entropy of the student's logits against the teacher's
    distribution: raw (B, Q, H, W) logits, teacher_log_probs (B, Q, H, W) -> scalar float32.
    Its minimum, the teacher's entropy, is reached when the logits equal the teacher's up to
    a per-pixel constant."""
    log_p = F.log_softmax(raw.float(), dim=1)
    return -(teacher_log_probs.exp() * log_p).sum(dim=1).mean()


def mix_photos(
    l_in: torch.Tensor, gray: torch.Tensor, fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup for distillation: inputs the teacher never trained on, whose targets it still
    gives (the truth of a blend has no meaning, so only a teacher-only loss may use it).

    l (B,1,S,S), gray (B,1,G,G), both in [-1, 1] -> the same shapes and range: each photo,
    with probability ``fraction``, is blended with the next photo of the batch (cyclically),
    its own weight uniform in [0, 1], the same for its L and its gray image; the others
    are returned as they are. Draws from torch's global generator.
    """
    b = l_in.shape[0]
    if fraction <= 0 or b < 2:
        return l_in, gray
    chosen = torch.rand(b) < fraction
    own = torch.where(chosen, torch.rand(b), torch.ones(b)).view(b, 1, 1, 1)
    partner = torch.roll(torch.arange(b), -1)
    return (
        own * l_in + (1 - own) * l_in[partner],
        own * gray + (1 - own) * gray[partner],
    )


@dataclass
class Distillation:
    """How a training run learns from a teacher (`colorizer train --teacher`).

    ``mix``: the teacher's share of the loss, the rest the truth's; ``mixup``: the fraction
    of each batch's photos blended first (``mix_photos``), which needs ``mix`` 1;
    ``decoded``: the weight of the mean squared difference of the decoded a*b* (student's
    and teacher's, both decoded as the teacher decodes), beside the cross-entropy.
    Raises ValueError for mix or mixup outside [0, 1], a negative ``decoded``, or mixup
    beside the truth's loss.
    """

    teacher: Teacher
    mix: float = 1.0
    mixup: float = 0.0
    decoded: float = 0.0

    def __post_init__(self) -> None:
        for name in ("mix", "mixup"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"distill_{name} must be in [0, 1], got {value}")
        if self.decoded < 0:
            raise ValueError(f"distill_decoded must be >= 0, got {self.decoded}")
        if self.mixup > 0 and self.mix < 1:
            raise ValueError(
                "distill_mixup needs distill_mix 1: a blend of two photos has no true colors "
                "to learn, only the teacher's"
            )


def teacher_loss(
    raw: torch.Tensor, teacher_raw: torch.Tensor, distillation: Distillation
) -> torch.Tensor:
    """The student's loss against the teacher: ``distillation_loss`` on the distributions,
    plus ``distillation.decoded`` x the mean squared difference of the decoded a*b*.
    raw, teacher_raw: head outputs (B, Q, H, W) -> scalar float32."""
    loss = distillation_loss(raw, F.log_softmax(teacher_raw, dim=1))
    if distillation.decoded > 0:
        teacher = distillation.teacher
        gap = teacher.decoded(raw.float()) - teacher.decoded(teacher_raw)
        loss = loss + distillation.decoded * gap.pow(2).mean()
    return loss
