"""Training checkpoints: model config + weights + optimizer + epoch, in one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.model import Colorizer, ColorizerConfig, ColorizerEnsemble, build_model


def save_checkpoint(
    path: str | Path,
    model: Colorizer,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Atomically write {config, model, optimizer, epoch, extra} to ``path``."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "config": model.config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "epoch": epoch,
            "extra": extra or {},
        },
        tmp,
    )
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    for key in ("config", "model", "epoch"):
        if key not in ckpt:
            raise ValueError(f"{path} is not a colorizer checkpoint (no {key!r})")
    return ckpt


def model_from_checkpoint(path: str | Path) -> Colorizer:
    """Rebuild the network of a checkpoint with its weights (eval mode)."""
    ckpt = load_checkpoint(path)
    model = Colorizer(ColorizerConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def models_from_checkpoints(paths: list[str | Path]) -> Colorizer | ColorizerEnsemble:
    """One checkpoint's network, or several pooled as one ``ColorizerEnsemble`` (eval mode).

    Raises ValueError (see ``training.model.check_ensemble``) when several cannot share a
    backbone.
    """
    if not paths:
        raise ValueError("no checkpoint given")
    if len(paths) == 1:
        return model_from_checkpoint(paths[0])
    return ColorizerEnsemble([model_from_checkpoint(p) for p in paths]).eval()


# Tensors at least this large may travel in fp16 (slim_checkpoint(half=True)).
HALF_MIN_NUMEL = 4096


def backbone_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The keys of a Colorizer state dict that belong to the embedding backbone."""
    return [k for k in state if k.startswith("backbone.")]


def backbone_as_loaded(ckpt: dict[str, Any]) -> bool:
    """True when the checkpoint's backbone is bit-identical to its ImageNet weights as loaded.

    That holds for runs trained with ``--backbone-lr-scale 0`` (weights and BatchNorm
    statistics frozen); such a backbone can be left out of a slim checkpoint and reloaded
    from the weights package. False when the run had no ``--backbone-weights``.
    """
    spec = ckpt.get("extra", {}).get("train_config", {}).get("backbone_weights")
    if spec is None:
        return False
    fresh = build_model(ColorizerConfig.from_dict(ckpt["config"]), spec).state_dict()
    return all(torch.equal(fresh[k], ckpt["model"][k]) for k in backbone_keys(fresh))


def slim_checkpoint(ckpt: dict[str, Any], half: bool = False) -> dict[str, Any]:
    """A checkpoint small enough to carry: no optimizer state, no backbone when it is the
    weights package's unchanged (``backbone_as_loaded``), and with ``half`` every floating
    tensor of at least HALF_MIN_NUMEL elements in fp16 (a lossy copy: the restored network
    is then the one to evaluate and ship, not the trained one).

    ``restore_checkpoint`` turns it back into a checkpoint every command reads.
    """
    state = dict(ckpt["model"])
    omitted = None
    if backbone_as_loaded(ckpt):
        omitted = ckpt["extra"]["train_config"]["backbone_weights"]
        for key in backbone_keys(state):
            del state[key]
    small = {
        "config": ckpt["config"],
        "model": state,
        "epoch": ckpt["epoch"],
        "extra": ckpt.get("extra", {}),
        "backbone_from": omitted,
        "halved": [],
    }
    return half_precision(small) if half else small


def half_precision(slim: dict[str, Any]) -> dict[str, Any]:
    """A ``slim_checkpoint`` with every floating tensor of at least HALF_MIN_NUMEL elements
    in fp16 (listed in ``halved``); ``restore_checkpoint`` casts them back to fp32."""
    state = dict(slim["model"])
    halved = list(slim["halved"])
    for key, t in state.items():
        if t.is_floating_point() and t.numel() >= HALF_MIN_NUMEL and key not in halved:
            state[key] = t.half()
            halved.append(key)
    return {**slim, "model": state, "halved": halved}


def restore_checkpoint(slim: dict[str, Any]) -> dict[str, Any]:
    """The full checkpoint (optimizer None) of a ``slim_checkpoint``; a left-out backbone
    is reloaded from its weights package. Raises ValueError for missing or unknown keys."""
    config = ColorizerConfig.from_dict(slim["config"])
    model = (
        build_model(config, slim["backbone_from"]) if slim["backbone_from"] else Colorizer(config)
    )
    full = model.state_dict()
    missing = sorted(
        set(full) - set(slim["model"]) - set(backbone_keys(full) if slim["backbone_from"] else [])
    )
    unexpected = sorted(set(slim["model"]) - set(full))
    if missing or unexpected:
        raise ValueError(
            f"slim checkpoint does not fit its config: lacks {missing[:5]}, "
            f"has unknown {unexpected[:5]}"
        )
    for key, t in slim["model"].items():
        full[key] = t.to(full[key].dtype)
    model.load_state_dict(full)
    return {
        "config": slim["config"],
        "model": model.state_dict(),
        "optimizer": None,
        "epoch": slim["epoch"],
        "extra": slim["extra"],
    }
