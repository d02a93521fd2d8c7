"""Test models: a tiny random-init variant of the network keeps tests fast."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from training.model import Colorizer, ColorizerConfig
from training.train import TrainConfig

TINY = ColorizerConfig(
    backbone="mobilenetv3_small_050",
    embed_dim=16,
    encoder_channels=(4, 8, 8, 8, 8, 8, 8, 8),
    fusion_channels=8,
    decoder_channels=(8, 4, 4, 4),
)


def export_test_model(path: Path, preset_name: str = "compact") -> Path:
    """An untrained but valid exported model: ``compact`` preset, or ``tiny`` for unit tests.

    Exported once per path: later calls reuse the file.
    """
    if path.is_file():
        return path
    from training.export import export
    from training.model import Colorizer, preset

    torch.manual_seed(0)
    config = TINY if preset_name == "tiny" else preset(preset_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    export(Colorizer(config), path)
    return path


def quick_train_config(data: Path, out: Path, **overrides) -> TrainConfig:
    """A training run of a few steps on CPU in fp32: what the training tests vary from."""
    base = dict(
        data=data,
        out=out,
        val_fraction=0.25,
        epochs=2,
        batch_size=2,
        workers=0,
        precision="fp32",
        max_steps_per_epoch=2,
        progress=False,
    )
    return TrainConfig(**{**base, **overrides})


class _ResizesInside(torch.nn.Module):
    """A network of the exported interface that resizes its gray input inside, as files
    exported before the inference layout did: torch has no bfloat16 CPU kernel for the
    antialiased resize, so it runs in fp32 only. forward(l (B,1,224,224), gray (B,1,299,299))
    -> a*b* (B, 2, 224, 224) in [-1, 1]."""

    def forward(self, l_in: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
        small = torch.nn.functional.interpolate(
            gray, size=(224, 224), mode="bilinear", antialias=True
        )
        return torch.tanh(torch.cat((l_in, small), dim=1) * 0.1)


def export_fp32_only_model(path: Path) -> Path:
    """A valid exported file whose network cannot run in bfloat16 (``_ResizesInside``)."""
    from serving.runtime.model_spec import ModelSpec, save_scripted

    path.parent.mkdir(parents=True, exist_ok=True)
    save_scripted(torch.jit.script(_ResizesInside()), ModelSpec(), path)
    return path


CLASSIFIER = replace(TINY, head="classification")


def classifier_members(count: int) -> list[Colorizer]:
    """Networks with their own random backbones and heads, uneven class weights (as
    rebalancing gives) and one shared head bias (the file keeps only the members' mean)."""
    nets = []
    for seed in range(count):
        torch.manual_seed(seed)
        net = Colorizer(CLASSIFIER).eval()
        net.class_weights.copy_(torch.linspace(0.2, 5.0, len(net.class_weights)))
        net.head.bias.data.copy_(torch.linspace(-1.0, 1.0, len(net.class_weights)))
        nets.append(net.with_decoding(0.6, 0.3))
    return nets


def random_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(l (2,1,224,224), gray (2,1,299,299)), uniform in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    l_in = torch.rand(2, 1, 224, 224, generator=gen) * 2 - 1
    return l_in, torch.rand(2, 1, 299, 299, generator=gen) * 2 - 1
