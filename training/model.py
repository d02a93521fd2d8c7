"""The Deep Koalarization network (Baldassarre et al. 2017) and its config.

    l_224 (B,1,224,224) in [-1,1] --encoder--> (B,256,28,28) ----------------+
    gray_299 (B,1,299,299) in [-1,1] -> x3 channels -> backbone -> (B,E) ----+-> tile 28x28,
        concat (B,256+E,28,28) -> 1x1 conv 256 + ReLU -> decoder -> ab (B,2,224,224) in [-1,1]

The embedding is the backbone's class-logit vector (E = 1001 as in the paper).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from training.ab_bins import adjust_for_prior, annealed_mean, gamut_bin_centers
from training.pretrained import backbone_state_dict, check_matches, warn_if_other_backbone

HEADS = ("regression", "classification")


@dataclass(frozen=True)
class ColorizerConfig:
    """Network shape. Defaults are the paper's network (~62.4 M parameters)."""

    backbone: str = "inception_resnet_v2"
    embed_dim: int = 1001  # backbone classes; 1000 when loading timm ImageNet weights
    encoder_channels: tuple[int, ...] = (64, 128, 128, 256, 256, 512, 512, 256)
    encoder_strides: tuple[int, ...] = (2, 1, 2, 1, 2, 1, 1, 1)
    fusion_channels: int = 256
    # conv, up, conv, conv, up, conv, (head), up
    decoder_channels: tuple[int, int, int, int] = (128, 64, 64, 32)
    head: str = "regression"  # "regression": conv 2 + tanh, MSE (the paper); or "classification"
    ab_bin_size: float = 10.0  # classification: a*b* grid cell, Lab units
    temperature: float = 0.38  # classification: annealed-mean temperature (Zhang et al.)
    prior_correction: float = 0.0  # classification: post-hoc logit adjustment, see ab_bins
    # Backbone input side: the gray image (299, the paper's Inception size) is resized to
    # this inside the network when set. EfficientNet-Lite0's ImageNet weights were made at
    # 224; at 299 its class scores flatten (hammer photo: p 0.45 at 224, 0.08 at 299).
    embed_size: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ColorizerConfig:
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})


PRESETS: dict[str, ColorizerConfig] = {
    "full": ColorizerConfig(),
    # A quarter of the widths and a small backbone: trains on a CPU.
    "compact": ColorizerConfig(
        backbone="mobilenetv3_small_100",
        embed_dim=1000,
        encoder_channels=(16, 32, 32, 64, 64, 128, 128, 64),
        fusion_channels=64,
        decoder_channels=(32, 16, 16, 8),
    ),
}


def preset(name: str, **overrides) -> ColorizerConfig:
    """A named config ('full' or 'compact') with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU(inplace=True))


def _he_init(module: nn.Module) -> None:
    """He (Kaiming) init for ReLU convs: keeps activations alive through the plain conv stack."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        nn.init.zeros_(module.bias)


class Encoder(nn.Sequential):
    """(B, 1, 224, 224) -> (B, C_last, 28, 28): eight 3x3 conv + ReLU."""

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...]) -> None:
        if len(channels) != len(strides):
            raise ValueError("encoder_channels and encoder_strides must have the same length")
        c_ins = (1,) + tuple(channels[:-1])
        super().__init__(
            *(_conv(i, o, s) for i, o, s in zip(c_ins, channels, strides, strict=True))
        )


class Fusion(nn.Module):
    """Tile the (B, E) embedding over the (B, C, h, w) features, concat, 1x1 conv + ReLU."""

    def __init__(self, feature_channels: int, embed_dim: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(feature_channels + embed_dim, out_channels, 1)

    def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        tiled = embedding[:, :, None, None].expand(b, embedding.shape[1], h, w)
        return F.relu(self.conv(torch.cat((features, tiled.to(features.dtype)), dim=1)))


class Decoder(nn.Module):
    """(B, C, 28, 28) -> features (B, C4, 112, 112): conv, up, conv, conv, up, conv."""

    def __init__(self, c_in: int, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        c1, c2, c3, c4 = widths
        self.stage1 = _conv(c_in, c1)
        self.stage2 = nn.Sequential(_conv(c1, c2), _conv(c2, c3))
        self.stage3 = _conv(c3, c4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.stage1(x), scale_factor=2.0, mode="nearest")
        x = F.interpolate(self.stage2(x), scale_factor=2.0, mode="nearest")
        return self.stage3(x)


class Colorizer(nn.Module):
    """forward(l_224 (B,1,224,224), gray_299 (B,1,299,299)), both in [-1, 1]
    -> a*b* (B, 2, 224, 224) in [-1, 1] (times ModelSpec.ab_scale gives Lab units).

    ``head="regression"`` (the paper): conv 2 + tanh. ``head="classification"``:
    conv Q logits over in-gamut a*b* bins, decoded with the annealed mean.
    """

    # TorchScript: fixed per exported model
    __constants__ = ["classify", "temperature", "prior_correction", "embed_size"]

    def __init__(self, config: ColorizerConfig = ColorizerConfig()) -> None:
        super().__init__()
        if config.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {config.head!r}")
        self.config = config
        self.classify = config.head == "classification"
        self.temperature = config.temperature
        self.prior_correction = config.prior_correction
        self.embed_size = config.embed_size or 0  # 0: feed the gray image as given
        self.encoder = Encoder(config.encoder_channels, config.encoder_strides)
        self.backbone = timm.create_model(
            config.backbone, pretrained=False, num_classes=config.embed_dim
        )
        self.fusion = Fusion(config.encoder_channels[-1], config.embed_dim, config.fusion_channels)
        self.decoder = Decoder(config.fusion_channels, config.decoder_channels)
        centers = gamut_bin_centers(config.ab_bin_size) if self.classify else torch.zeros(0, 2)
        self.register_buffer("bin_centers", centers)  # (Q, 2) a*b* in [-1, 1]
        self.register_buffer("class_weights", torch.ones(len(centers)))  # (Q,) rebalancing
        out_channels = len(centers) if self.classify else 2
        self.head = nn.Conv2d(config.decoder_channels[-1], out_channels, 3, padding=1)
        for part in (self.encoder, self.fusion, self.decoder):
            part.apply(_he_init)

    def embed_input(self, gray: torch.Tensor) -> torch.Tensor:
        """Gray (B, 1, G, G) in [-1, 1] -> backbone input (B, 3, s, s) in [-1, 1].

        s = config.embed_size (bilinear, antialiased) or G when unset.
        """
        if self.embed_size > 0 and gray.shape[-1] != self.embed_size:
            gray = F.interpolate(
                gray, size=(self.embed_size, self.embed_size), mode="bilinear", antialias=True
            )
        return gray.expand(-1, 3, -1, -1)

    def head_output(self, l_224: torch.Tensor, gray_299: torch.Tensor) -> torch.Tensor:
        """Raw head output at 112x112: (B, 2, 112, 112) pre-tanh, or (B, Q, 112, 112) logits."""
        features = self.encoder(l_224)  # (B, C, 28, 28)
        embedding = self.backbone(self.embed_input(gray_299))  # (B, E)
        return self.head(self.decoder(self.fusion(features, embedding)))

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """Head output (B, 2|Q, 112, 112) -> a*b* (B, 2, 224, 224) in [-1, 1], out's dtype.

        Classification: prior correction, then the annealed mean at ``temperature``.
        """
        if self.classify:
            logits = adjust_for_prior(out, self.class_weights, self.prior_correction)
            ab = annealed_mean(logits, self.bin_centers, self.temperature).to(out.dtype)
        else:
            ab = torch.tanh(out)
        return F.interpolate(ab, scale_factor=2.0, mode="nearest")

    def forward(self, l_224: torch.Tensor, gray_299: torch.Tensor) -> torch.Tensor:
        return self.decode(self.head_output(l_224, gray_299))

    def with_decoding(self, temperature: float, prior_correction: float) -> Colorizer:
        """This network (same weights, in place) decoding with the given settings.

        Raises ValueError for a regression head or a temperature <= 0.
        """
        if not self.classify:
            raise ValueError("decoding settings apply to the classification head only")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.config = replace(
            self.config, temperature=float(temperature), prior_correction=float(prior_correction)
        )
        self.temperature = self.config.temperature
        self.prior_correction = self.config.prior_correction
        return self


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def backbone_weights_classes(backbone: str, weights: str | Path) -> int:
    """Number of classes in backbone weights (a file or a package spelling, see pretrained)."""
    module = timm.create_model(backbone, pretrained=False)
    head = module.pretrained_cfg.get("classifier")
    state = backbone_state_dict(weights, module)
    key = f"{head}.weight"
    if key not in state:
        raise ValueError(
            f"{weights} has no classifier weight {key!r}; is it a {backbone} checkpoint?"
        )
    return int(state[key].shape[0])


def load_backbone_weights(model: Colorizer, weights: str | Path) -> None:
    """Load ImageNet weights into the backbone: a local .safetensors / state-dict file, or
    an installed weights package by name (``efficientnet-lite0``); efficientnet_pytorch
    naming is converted to timm's.

    Never downloads. Raises FileNotFoundError / ModuleNotFoundError, or ValueError naming
    missing, unexpected and mis-shaped keys.
    """
    state = backbone_state_dict(weights, model.backbone)
    check_matches(
        state,
        model.backbone,
        f"{weights} does not match backbone {model.config.backbone!r}",
        model.config.embed_dim,
    )
    warn_if_other_backbone(weights, model.config.backbone)
    model.backbone.load_state_dict(state)


def build_model(config: ColorizerConfig, backbone_weights: str | Path | None = None) -> Colorizer:
    """Build the network; optionally load local backbone weights."""
    model = Colorizer(config)
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
    return model


__all__ = [
    "ColorizerConfig",
    "Colorizer",
    "PRESETS",
    "preset",
    "build_model",
    "count_parameters",
    "load_backbone_weights",
    "backbone_weights_classes",
]
