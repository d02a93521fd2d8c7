"""Training checkpoints: model config + weights + optimizer + epoch, in one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.model import Colorizer, ColorizerConfig, ColorizerEnsemble


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
