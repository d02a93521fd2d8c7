"""--fuse-stage: a pretrained backbone stage's feature map fused beside the class vector."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from training.export import PARITY_TOLERANCE, export_spec, random_inputs, script_model
from training.model import (
    Colorizer,
    ColorizerConfig,
    ColorizerEnsemble,
    TappedBackbone,
    build_model,
    preset,
)
from training.train import TrainConfig, model_config

LITE0 = "efficientnet-lite0"
# Lite0 at 224: (stage, channels, side) of timm blocks[stage]'s output
STAGES = [(2, 40, 28), (4, 112, 14), (5, 192, 7)]


def fused_config(stage: int | None) -> ColorizerConfig:
    return preset(
        "compact",
        backbone="tf_efficientnet_lite0",
        embed_size=224,
        head="classification",
        fuse_stage=stage,
    )


def inputs(seed: int = 0, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(batch, 1, 224, 224, generator=g) * 2 - 1,
        torch.rand(batch, 1, 299, 299, generator=g) * 2 - 1,
    )


@pytest.mark.parametrize(("stage", "channels", "side"), STAGES)
def test_tapped_backbone_is_the_network_plus_its_stage_output(stage, channels, side):
    torch.manual_seed(0)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    seen = {}
    net.blocks[stage].register_forward_hook(lambda m, i, out: seen.setdefault("out", out))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = net(x)
        tapped = TappedBackbone(net, stage).eval()
        got_logits, tap = tapped(x)
    assert list(tapped.state_dict()) == list(net.state_dict())
    assert tapped.channels == channels and tap.shape == (2, channels, side, side)
    torch.testing.assert_close(got_logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(tap, seen["out"], rtol=0, atol=0)


def test_fused_network_loads_the_package_weights_and_uses_the_tap():
    torch.manual_seed(0)
    plain = build_model(fused_config(None), LITE0)
    fused = build_model(fused_config(4), LITE0).eval()
    for key, value in plain.backbone.state_dict().items():
        assert torch.equal(fused.backbone.state_dict()[key], value), key
    c = plain.config.encoder_channels[-1] + plain.config.embed_dim
    assert fused.fusion.conv.in_channels == c + 112 == plain.fusion.conv.in_channels + 112
    l_in, gray = inputs()
    with torch.no_grad():
        before = fused.head_output(l_in, gray)
        fused.fusion.conv.weight[:, c:].zero_()  # cut the tap off
        after = fused.head_output(l_in, gray)
    assert (before - after).abs().max() > 1e-3


@pytest.mark.parametrize("stage", [None, 4])
def test_scripted_fused_network_and_ensemble_match_eager(stage):
    torch.manual_seed(0)
    members = [build_model(fused_config(stage), LITE0).eval() for _ in range(2)]
    for net in (members[0], ColorizerEnsemble(members).eval()):
        scripted = script_model(net)
        l_in, gray = random_inputs(export_spec(net), 2, seed=0)  # gray at the backbone's size
        with torch.no_grad():
            got, want = scripted(l_in, gray), net(l_in, gray)
            torch.testing.assert_close(got, want, rtol=0, atol=PARITY_TOLERANCE)


def test_config_round_trip_and_old_configs_fuse_nothing():
    cfg = fused_config(4)
    assert ColorizerConfig.from_dict(cfg.to_dict()) == cfg
    old = fused_config(None).to_dict()
    del old["fuse_stage"]  # a checkpoint written before the option existed
    assert ColorizerConfig.from_dict(old).fuse_stage is None
    told = TrainConfig(data=Path("."), backbone_weights=LITE0, fuse_stage=4)
    assert model_config(told).fuse_stage == 4
    assert model_config(TrainConfig(data=Path("."))).fuse_stage is None


def test_backbones_without_stages_and_stages_out_of_range_are_refused():
    with pytest.raises(ValueError, match="EfficientNet-family backbone.*ResNet has no conv_stem"):
        Colorizer(preset("compact", backbone="resnet18", fuse_stage=2))
    with pytest.raises(ValueError, match=r"fuse_stage must be 0\.\.6 for this backbone, got 7"):
        Colorizer(fused_config(7))
