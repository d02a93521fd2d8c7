"""The network: shapes, parameter count, configs, backbone weight loading."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.support.models import TINY
from training.model import (
    PRESETS,
    Colorizer,
    ColorizerConfig,
    backbone_weights_classes,
    build_model,
    count_parameters,
    preset,
)


def _inputs(batch: int = 2):
    gen = torch.Generator().manual_seed(0)
    return (
        torch.rand(batch, 1, 224, 224, generator=gen) * 2 - 1,
        torch.rand(batch, 1, 299, 299, generator=gen) * 2 - 1,
    )


def test_forward_backward_shapes_and_range():
    model = Colorizer(TINY)
    l_in, gray = _inputs()
    out = model(l_in, gray)
    assert out.shape == (2, 2, 224, 224)
    assert float(out.abs().max()) <= 1.0
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert model.encoder[0][0].weight.grad.abs().sum() > 0
    assert model.backbone.get_classifier().weight.grad.abs().sum() > 0


def test_encoder_output_is_28x28_with_paper_widths():
    model = Colorizer(PRESETS["full"])
    feats = model.encoder(torch.zeros(1, 1, 224, 224))
    assert feats.shape == (1, 256, 28, 28)


def test_default_config_is_the_paper_network():
    model = Colorizer()
    assert model.config.backbone == "inception_resnet_v2"
    assert model.config.embed_dim == 1001
    assert count_parameters(model) == pytest.approx(62.4e6, rel=0.005)


def test_embedding_changes_the_output():
    """Fusion really uses the backbone: a different gray image changes a*b*."""
    torch.manual_seed(0)
    model = Colorizer(TINY).eval()
    l_in, gray = _inputs(1)
    with torch.no_grad():
        a = model(l_in, gray)
        b = model(l_in, -gray)
    assert float((a - b).abs().max()) > 0


def test_config_round_trips_through_dict():
    cfg = PRESETS["compact"]
    assert ColorizerConfig.from_dict(cfg.to_dict()) == cfg


def test_preset_overrides_and_unknown_preset():
    assert preset("compact", backbone="resnet18").backbone == "resnet18"
    with pytest.raises(ValueError, match="full, compact"):
        preset("huge")


def test_any_timm_backbone(tmp_path):
    model = Colorizer(ColorizerConfig(**{**TINY.to_dict(), "backbone": "resnet10t"}))
    assert model(*_inputs(1)).shape == (1, 2, 224, 224)


def test_backbone_weights_load_from_safetensors_and_state_dict(tmp_path):
    source = timm.create_model(TINY.backbone, pretrained=False, num_classes=TINY.embed_dim)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(st))
    pt = tmp_path / "w.pth"
    torch.save(source.state_dict(), pt)
    for path in (st, pt):
        assert backbone_weights_classes(TINY.backbone, path) == TINY.embed_dim
        model = build_model(TINY, backbone_weights=path)
        for key, value in source.state_dict().items():
            assert torch.equal(model.backbone.state_dict()[key], value)


def test_backbone_weights_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model(TINY, backbone_weights=tmp_path / "missing.safetensors")
    wrong = timm.create_model("resnet10t", pretrained=False, num_classes=TINY.embed_dim)
    path = tmp_path / "resnet.pth"
    torch.save(wrong.state_dict(), path)
    with pytest.raises(
        ValueError, match="does not match backbone 'mobilenetv3_small_050'.*missing"
    ):
        build_model(TINY, backbone_weights=path)
    other_classes = timm.create_model(TINY.backbone, pretrained=False, num_classes=10)
    torch.save(other_classes.state_dict(), path)
    with pytest.raises(ValueError, match="wrong shape"):
        build_model(TINY, backbone_weights=path)
