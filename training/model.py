"""The Deep Koalarization network (Baldassarre et al. 2017) and its config.

    l_224 (B,1,224,224) in [-1,1] --encoder--> (B,256,28,28) ----------------+
    gray_299 (B,1,299,299) in [-1,1] -> x3 channels -> backbone -> (B,E) ----+-> tile 28x28,
        concat (B,256+E,28,28) -> 1x1 conv 256 + ReLU -> decoder -> ab (B,2,224,224) in [-1,1]

The embedding is the backbone's class-logit vector (E = 1001 as in the paper).

Optionally (``fuse_stage``, EfficientNet-family backbones) the fusion also takes one of the
backbone's intermediate feature maps, resized to the encoder's 28x28: pretrained local
features ("this region is foliage") beside the global class vector.
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
    # Index of a backbone stage (timm ``blocks[i]``, EfficientNet family) whose feature map
    # is fused beside the embedding; None fuses the class vector only, as the paper does.
    # For EfficientNet-Lite0 at 224: stage 2 is 40 x 28x28, stage 4 is 112 x 14x14.
    fuse_stage: int | None = None

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
    """Tile the (B, E) embedding over the (B, C, h, w) features, concat, 1x1 conv + ReLU.

    With ``tap_channels`` > 0 a backbone feature map (B, T, h', w') is resized (bilinear)
    to (h, w) and concatenated after the tiled embedding; otherwise ``tap`` is ignored.
    """

    __constants__ = ["fuse_tap"]

    def __init__(
        self, feature_channels: int, embed_dim: int, out_channels: int, tap_channels: int = 0
    ) -> None:
        super().__init__()
        self.fuse_tap = tap_channels > 0
        self.conv = nn.Conv2d(feature_channels + embed_dim + tap_channels, out_channels, 1)

    def forward(
        self, features: torch.Tensor, embedding: torch.Tensor, tap: torch.Tensor
    ) -> torch.Tensor:
        b, _, h, w = features.shape
        tiled = embedding[:, :, None, None].expand(b, embedding.shape[1], h, w)
        parts = [features, tiled.to(features.dtype)]
        if self.fuse_tap:
            tap = tap.to(features.dtype)
            if tap.shape[-2:] != features.shape[-2:]:
                tap = resize_bilinear(tap, h, w)
            parts.append(tap)
        return F.relu(self.conv(torch.cat(parts, dim=1)))


TAPPABLE = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool", "classifier")


class TappedBackbone(nn.Module):
    """A timm EfficientNet-family network that also returns one stage's output.

    forward(x (B, 3, s, s)) -> (logits (B, E), stage ``stage`` output (B, T, s/r, s/r)).
    Holds the network's own children under their own names, so its state dict keys are
    the network's (pretrained weights, checkpoints and slimming see the same backbone).
    Raises ValueError for a network without those parts or a stage out of range.
    """

    __constants__ = ["stage", "drop_rate"]

    def __init__(self, net: nn.Module, stage: int) -> None:
        super().__init__()
        missing = [name for name in TAPPABLE if not hasattr(net, name)]
        if missing:
            raise ValueError(
                f"fuse_stage needs an EfficientNet-family backbone (timm conv_stem, blocks, "
                f"conv_head ...); {type(net).__name__} has no {', '.join(missing)}"
            )
        if not 0 <= stage < len(net.blocks):
            raise ValueError(
                f"fuse_stage must be 0..{len(net.blocks) - 1} for this backbone, got {stage}"
            )
        for name, child in net.named_children():
            self.add_module(name, child)
        self.pretrained_cfg = getattr(net, "pretrained_cfg", {})
        self.stage = stage
        self.drop_rate = float(getattr(net, "drop_rate", 0.0))
        norms = [m for m in net.blocks[stage].modules() if isinstance(m, nn.BatchNorm2d)]
        self.channels = norms[-1].num_features  # the stage's output channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        tap = x
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i == self.stage:
                tap = x
        x = self.global_pool(self.bn2(self.conv_head(x)))
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x), tap


class Decoder(nn.Module):
    """(B, C, 28, 28) -> features (B, C4, 112, 112): conv, up, conv, conv, up, conv."""

    def __init__(self, c_in: int, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        c1, c2, c3, c4 = widths
        self.stage1 = _conv(c_in, c1)
        self.stage2 = nn.Sequential(_conv(c1, c2), _conv(c2, c3))
        self.stage3 = _conv(c3, c4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = upsample_nearest_2x(self.stage1(x))
        x = upsample_nearest_2x(self.stage2(x))
        return self.stage3(x)


class Colorizer(nn.Module):
    """forward(l_224 (B,1,224,224), gray_299 (B,1,299,299)), both in [-1, 1]
    -> a*b* (B, 2, 224, 224) in [-1, 1] (times ModelSpec.ab_scale gives Lab units).

    ``head="regression"`` (the paper): conv 2 + tanh. ``head="classification"``:
    conv Q logits over in-gamut a*b* bins, decoded with the annealed mean.
    """

    # TorchScript: fixed per exported model
    __constants__ = ["classify", "temperature", "prior_correction", "embed_size", "fused"]

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
        net = timm.create_model(config.backbone, pretrained=False, num_classes=config.embed_dim)
        self.fused = config.fuse_stage is not None
        self.backbone = TappedBackbone(net, config.fuse_stage) if self.fused else net
        self.fusion = Fusion(
            config.encoder_channels[-1],
            config.embed_dim,
            config.fusion_channels,
            self.backbone.channels if self.fused else 0,
        )
        self.decoder = Decoder(config.fusion_channels, config.decoder_channels)
        centers = gamut_bin_centers(config.ab_bin_size) if self.classify else torch.zeros(0, 2)
        self.register_buffer("bin_centers", centers)  # (Q, 2) a*b* in [-1, 1]
        self.register_buffer("class_weights", torch.ones(len(centers)))  # (Q,) rebalancing
        out_channels = len(centers) if self.classify else 2
        self.head = nn.Conv2d(config.decoder_channels[-1], out_channels, 3, padding=1)
        for part in (self.encoder, self.fusion, self.decoder):
            part.apply(_he_init)

    def embed_input(self, gray: torch.Tensor) -> torch.Tensor:
        """Gray (B, 1, G, G) in [-1, 1] -> backbone input (B, 3, s, s), see ``backbone_input``."""
        return backbone_input(gray, self.embed_size)

    def embed(self, gray_299: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gray (B, 1, G, G) in [-1, 1] -> (embedding (B, E), tap): tap is the fused stage's
        feature map (B, T, h, w), or the embedding again when no stage is fused (unused)."""
        x = self.embed_input(gray_299)
        if self.fused:
            return self.backbone(x)
        embedding = self.backbone(x)
        return embedding, embedding

    def head_output(self, l_224: torch.Tensor, gray_299: torch.Tensor) -> torch.Tensor:
        """Raw head output at 112x112: (B, 2, 112, 112) pre-tanh, or (B, Q, 112, 112) logits."""
        features = self.encoder(l_224)  # (B, C, 28, 28)
        embedding, tap = self.embed(gray_299)  # (B, E), (B, T, h, w)
        return self.head(self.decoder(self.fusion(features, embedding, tap)))

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """Head output (B, 2|Q, 112, 112) -> a*b* (B, 2, 224, 224) in [-1, 1], out's dtype.

        Classification: prior correction, then the annealed mean at ``temperature``.
        """
        if self.classify:
            return decode_logits(
                out, self.class_weights, self.bin_centers, self.prior_correction, self.temperature
            )
        return upsample_nearest_2x(torch.tanh(out))

    def forward(self, l_224: torch.Tensor, gray_299: torch.Tensor) -> torch.Tensor:
        return self.decode(self.head_output(l_224, gray_299))

    def with_decoding(self, temperature: float, prior_correction: float) -> Colorizer:
        """This network (same weights, in place) decoding with the given settings.

        Raises ValueError for a regression head or a temperature <= 0.
        """
        if not self.classify:
            raise ValueError("decoding settings apply to the classification head only")
        return _set_decoding(self, temperature, prior_correction)


def backbone_input(gray: torch.Tensor, embed_size: int) -> torch.Tensor:
    """Gray (B, 1, G, G) in [-1, 1] -> backbone input (B, 3, s, s) in [-1, 1].

    s = ``embed_size`` (bilinear, antialiased, computed in float32: torch has no bfloat16 CPU
    kernel for the antialiased resize) or G when it is 0. Training only: an exported network
    takes its gray input at the backbone's size (``training.inference``).
    """
    if embed_size > 0 and gray.shape[-1] != embed_size:
        resized = F.interpolate(
            gray.float(), size=(embed_size, embed_size), mode="bilinear", antialias=True
        )
        gray = resized.to(gray.dtype)
    return gray.expand(-1, 3, -1, -1)


# Resizes inside the network call aten's upsampling ops directly: a scripted
# ``F.interpolate`` serializes its whole body into the TorchScript file, every mode's
# branch included, and a torch without one of those ops (torch 2.11 has no
# ``_upsample_lanczos2d_aa``) then refuses to load the file.
def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W), nearest neighbour; same dtype."""
    return torch.ops.aten.upsample_nearest2d(x, [x.shape[-2] * 2, x.shape[-1] * 2])


def resize_bilinear(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, height, width), bilinear, align_corners False, no antialiasing;
    ``F.interpolate(x, size, mode="bilinear")``'s result. Same dtype."""
    return torch.ops.aten.upsample_bilinear2d(x, [height, width], False)


def decode_logits(
    logits: torch.Tensor,
    class_weights: torch.Tensor,
    bin_centers: torch.Tensor,
    prior_correction: float,
    temperature: float,
) -> torch.Tensor:
    """Logits (B, Q, 112, 112) -> a*b* (B, 2, 224, 224) in [-1, 1], logits' dtype.

    The prior correction (see ``adjust_for_prior``), then the annealed mean at
    ``temperature`` over ``bin_centers`` (Q, 2), then nearest 2x upsampling.
    """
    adjusted = adjust_for_prior(logits, class_weights, prior_correction)
    ab = annealed_mean(adjusted, bin_centers, temperature).to(logits.dtype)
    return upsample_nearest_2x(ab)


def _set_decoding(module, temperature: float, prior_correction: float):
    """Set a classification network's decoding (config and TorchScript constants), in place."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    module.config = replace(
        module.config, temperature=float(temperature), prior_correction=float(prior_correction)
    )
    module.temperature = module.config.temperature
    module.prior_correction = module.config.prior_correction
    return module


class ColorBranch(nn.Module):
    """One trained network's own layers around an embedding.

    forward(l_224 (B,1,224,224) in [-1,1], x (B,3,s,s) backbone input (see
    ``backbone_input``), embedding (B,E), tap (see ``Colorizer.embed``)) -> logits
    (B,Q,112,112). With ``backbone`` (a member fine-tuned with its own backbone) the branch
    embeds ``x`` itself and ignores ``embedding`` and ``tap``; without, it uses them (one
    frozen backbone shared by every member).
    """

    __constants__ = ["own_backbone", "fused"]

    def __init__(self, model: Colorizer, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder, self.fusion = model.encoder, model.fusion
        self.decoder, self.head = model.decoder, model.head
        self.own_backbone = backbone is not None
        self.fused = model.fused
        self.backbone = backbone if backbone is not None else nn.Identity()

    def forward(
        self, l_224: torch.Tensor, x: torch.Tensor, embedding: torch.Tensor, tap: torch.Tensor
    ) -> torch.Tensor:
        if self.own_backbone:
            if self.fused:
                embedding, tap = self.backbone(x)
            else:
                embedding = self.backbone(x)
                tap = embedding
        return self.head(self.decoder(self.fusion(self.encoder(l_224), embedding, tap)))


class ColorizerEnsemble(nn.Module):
    """Several classification networks of one shape, run as one; their per-pixel bin
    distributions are pooled by averaging log-probabilities (a geometric mean), then
    decoded like one ``Colorizer``.

    Members trained with one frozen backbone (seeds of a frozen recipe) share it: the
    backbone is stored and run once, then each member's encoder, fusion, decoder and head.
    Members whose backbones differ (fine-tuned) each keep and run their own
    (``shared_backbone`` False): the ensemble then costs every member's whole network.

    Same interface as ``Colorizer`` (forward, head_output, decode, with_decoding, config),
    so tuning, export and serving treat it as one network.
    """

    __constants__ = [
        "classify", "temperature", "prior_correction", "embed_size", "fused", "shared_backbone"
    ]  # fmt: skip

    def __init__(self, members: list[Colorizer]) -> None:
        super().__init__()
        check_ensemble(members)
        first = members[0]
        self.shared_backbone = shares_backbone(members)
        self.config = first.config
        self.classify = True
        self.temperature = first.temperature
        self.prior_correction = first.prior_correction
        self.embed_size = first.embed_size
        self.fused = first.fused
        self.backbone = first.backbone if self.shared_backbone else nn.Identity()
        self.branches = nn.ModuleList(
            [ColorBranch(m, None if self.shared_backbone else m.backbone) for m in members]
        )
        self.register_buffer("bin_centers", first.bin_centers.clone())
        self.register_buffer("class_weights", first.class_weights.clone())

    def head_output(self, l_224: torch.Tensor, gray_299: torch.Tensor) -> torch.Tensor:
        """Pooled log-probabilities (B, Q, 112, 112), the members' mean log-softmax."""
        x = backbone_input(gray_299, self.embed_size)
        embedding, tap = x, x  # each branch embeds x itself unless the backbone is shared
        if self.shared_backbone:
            if self.fused:
                embedding, tap = self.backbone(x)
            else:
                embedding = self.backbone(x)
                tap = embedding
        log_probs: list[torch.Tensor] = []
        for branch in self.branches:
            log_probs.append(torch.log_softmax(branch(l_224, x, embedding, tap), dim=1))
        return torch.stack(log_probs).mean(dim=0)

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """Pooled log-probabilities -> a*b* (B, 2, 224, 224) in [-1, 1], see ``decode_logits``."""
        return decode_logits(
            out, self.class_weights, self.bin_centers, self.prior_correction, self.temperature
        )

    def forward(self, l_224: torch.Tensor, gray_299: torch.Tensor) -> torch.Tensor:
        return self.decode(self.head_output(l_224, gray_299))

    def with_decoding(self, temperature: float, prior_correction: float) -> ColorizerEnsemble:
        """This ensemble (in place) decoding with the given settings; ValueError if T <= 0."""
        return _set_decoding(self, temperature, prior_correction)


def check_ensemble(members: list[Colorizer]) -> None:
    """Raise ValueError unless ``members`` can pool their bins: at least two classification
    networks with the same config (decoding aside) and the same bins and class weights."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two networks, got {len(members)}")
    first = members[0]
    if not first.classify:
        raise ValueError("ensembles pool the classification head's bins; got a regression head")
    shape = replace(first.config, temperature=0.0, prior_correction=0.0)
    for i, m in enumerate(members[1:], start=1):
        if replace(m.config, temperature=0.0, prior_correction=0.0) != shape:
            raise ValueError(f"network {i} has another config than network 0: {m.config}")
        if not torch.equal(m.class_weights, first.class_weights):
            raise ValueError(f"network {i} was trained with other class weights than network 0")


def shares_backbone(members: list[Colorizer]) -> bool:
    """Whether every member's backbone weights are bit-identical to the first's (a frozen
    pretrained backbone), so an ensemble can store and run it once."""
    reference = members[0].backbone.state_dict()
    return all(
        all(torch.equal(reference[k], v) for k, v in m.backbone.state_dict().items())
        for m in members[1:]
    )


Network = Colorizer | ColorizerEnsemble  # what tuning and export take


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
    "ColorizerEnsemble",
    "Network",
    "PRESETS",
    "preset",
    "build_model",
    "count_parameters",
    "load_backbone_weights",
    "backbone_weights_classes",
]
