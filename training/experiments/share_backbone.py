"""One backbone for every member of an exported ensemble (an experiment, not shipped).

`python -m training.experiments.share_backbone ENSEMBLE.pt --out DIR --data D --val-data V`.
HISTORY.md ("Shared backbone") has what it measured.

The ensemble's members were fine-tuned each with its own copy of the ImageNet backbone,
so the exported file stores and runs the backbone once per member (the biggest single
cost of a member on a CPU). This keeps member ``--backbone-member``'s backbone
for all of them and re-fits every other member's layers after the backbone (encoder,
fusion, decoder, head) to it:

1. For each other member I, under ``OUT/member-I/``: ``teacher.pt``, member I alone as
   it was (its own backbone), and ``init.pt``, member I on the shared backbone.
2. ``colorizer train`` on each: from ``init.pt`` with the backbone frozen
   (``--backbone-lr-scale 0``), distilled from ``teacher.pt`` (its per-pixel bin
   distributions, on mixed-up photos): the member learns to give what it gave before,
   from the shared backbone's features. Checkpoints per epoch; a rerun resumes.
3. ``OUT/shared.pt``: the re-fitted members and the backbone member, exported as one
   ensemble that stores and runs the backbone once (float16 weights), decoded as the
   input file was. Tune its decoding with ``colorizer tune-decoding --model``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.distill import members_from_exported
from training.export import export
from training.model import Colorizer, ColorizerEnsemble, shares_backbone
from training.train import TrainConfig, train


class NotShareable(ValueError):
    """The file cannot be turned into a shared-backbone ensemble (see the message)."""


@dataclass(frozen=True)
class ShareConfig:
    """What a share run does; the training options are `colorizer train`'s."""

    source: Path  # exported ensemble (inference layout)
    out: Path  # run folder
    data: Path  # training photos
    val_data: Path  # validation photos
    backbone_member: int = 1
    epochs: int = 12
    lr: float = 1e-4
    batch_size: int = 16
    distill_mixup: float = 0.5
    seed: int = 0
    workers: int = 1
    precision: str = "auto"
    max_steps_per_epoch: int | None = None  # quick runs (tests)
    progress: bool = True


def member_dir(cfg: ShareConfig, index: int) -> Path:
    return cfg.out / f"member-{index}"


def on_backbone(member: Colorizer, donor: Colorizer) -> Colorizer:
    """``member`` with ``donor``'s backbone weights and BatchNorm statistics (in place)."""
    member.backbone.load_state_dict(donor.backbone.state_dict())
    return member


def write_member_files(cfg: ShareConfig) -> list[int]:
    """Write teacher.pt and init.pt for every member but the backbone member; the indices
    of the members to re-fit. Raises NotShareable for a single network or a bad index."""
    members = members_from_exported(cfg.source)
    if len(members) < 2:
        raise NotShareable(f"{cfg.source} holds one network: nothing to share")
    if not 0 <= cfg.backbone_member < len(members):
        raise NotShareable(
            f"--backbone-member {cfg.backbone_member}: {cfg.source} has members "
            f"0..{len(members) - 1}"
        )
    donor = members[cfg.backbone_member]
    refit = [i for i in range(len(members)) if i != cfg.backbone_member]
    for i in refit:
        folder = member_dir(cfg, i)
        if not (folder / "init.pt").exists():
            # float32, so that the backbone stays bit-identical to the donor's as read
            export(members[i], folder / "teacher.pt")
            export(on_backbone(members[i], donor), folder / "init.pt")
    return refit


def member_train_config(cfg: ShareConfig, index: int) -> TrainConfig:
    """`colorizer train` for member ``index``: frozen shared backbone, its old self as the
    teacher; resumes from last.pt when an earlier run stopped before --epochs."""
    folder = member_dir(cfg, index)
    last = folder / "last.pt"
    return TrainConfig(
        data=cfg.data,
        val_data=cfg.val_data,
        out=folder,
        init_from=folder / "init.pt",
        init_member=0,
        teacher=folder / "teacher.pt",
        distill_mixup=cfg.distill_mixup,
        backbone_lr_scale=0.0,
        backbone_bn="frozen",
        epochs=cfg.epochs,
        lr=cfg.lr,
        lr_schedule="cosine",
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        workers=cfg.workers,
        precision=cfg.precision,
        max_steps_per_epoch=cfg.max_steps_per_epoch,
        progress=cfg.progress,
        resume=last if last.exists() else None,
    )


def trained_epochs(folder: Path) -> int:
    """Epochs a member's run has finished (0 without a checkpoint)."""
    last = folder / "last.pt"
    return load_checkpoint(last)["epoch"] + 1 if last.exists() else 0


def shared_ensemble(cfg: ShareConfig, refit: list[int]) -> ColorizerEnsemble:
    """The re-fitted members (their last.pt) and the backbone member, in the file's order,
    as one ensemble decoded as the file was. Raises NotShareable when the backbones differ
    (a run that did not freeze it)."""
    members = members_from_exported(cfg.source)
    nets = [
        model_from_checkpoint(member_dir(cfg, i) / "last.pt") if i in refit else m
        for i, m in enumerate(members)
    ]
    if not shares_backbone(nets):
        raise NotShareable("the re-fitted members' backbones differ from the backbone member's")
    first = members[0]
    return ColorizerEnsemble(nets).with_decoding(first.temperature, first.prior_correction)


def share(cfg: ShareConfig) -> Path:
    """Steps 1-3 of the module docstring; the path of the shared ensemble."""
    refit = write_member_files(cfg)
    for i in refit:
        if trained_epochs(member_dir(cfg, i)) < cfg.epochs:
            train(member_train_config(cfg, i))
    out = cfg.out / "shared.pt"
    diff = export(shared_ensemble(cfg, refit), out, half=True)
    print(f"wrote {out} (export parity {diff:.3g})")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.experiments.share_backbone",
        description=__doc__.split("\n\n")[2].replace("\n", " "),
    )
    p.add_argument("source", type=Path, help="exported ensemble (`colorizer export`)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--data", type=Path, required=True, help="training photos")
    p.add_argument("--val-data", type=Path, required=True, help="validation photos")
    defaults = ShareConfig(Path(), Path(), Path(), Path())
    p.add_argument(
        "--backbone-member",
        type=int,
        default=defaults.backbone_member,
        help="the member whose backbone all share (0 is the first)",
    )
    for name in ("epochs", "lr", "batch_size", "distill_mixup", "seed", "workers"):
        value = getattr(defaults, name)
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=type(value),
            default=value,
            help=f"each re-fit's `colorizer train --{name.replace('_', '-')}`",
        )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    share(
        ShareConfig(
            args.source,
            args.out,
            args.data,
            args.val_data,
            args.backbone_member,
            args.epochs,
            args.lr,
            args.batch_size,
            args.distill_mixup,
            args.seed,
            args.workers,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
