"""The service keeps the photo's lightness: luminance-preserving gamut mapping."""

import torch

from serving.runtime.colorspace import lab_to_rgb, lab_to_rgb_keep_lightness, rgb_to_lab
from serving.runtime.model_spec import ModelSpec
from serving.runtime.pipeline import compose


def _random_lab(seed: int, n: int = 256, chroma: float = 128.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack(
        (
            torch.rand(n, n, generator=gen) * 100,
            (torch.rand(n, n, generator=gen) * 2 - 1) * chroma,
            (torch.rand(n, n, generator=gen) * 2 - 1) * chroma,
        )
    )


def test_in_gamut_colors_convert_like_lab_to_rgb():
    lab = rgb_to_lab(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(lab_to_rgb_keep_lightness(lab), lab_to_rgb(lab), atol=1e-5)


def test_out_of_gamut_colors_keep_their_lightness():
    lab = _random_lab(1)
    kept = lab_to_rgb_keep_lightness(lab)
    clipped = lab_to_rgb(lab)
    assert float(kept.min()) >= 0.0 and float(kept.max()) <= 1.0
    assert float((rgb_to_lab(kept)[0] - lab[0]).abs().max()) < 0.05
    assert float((rgb_to_lab(clipped)[0] - lab[0]).abs().mean()) > 1.0  # what clipping did


def test_gradients_stay_finite():
    lab = _random_lab(2, n=32, chroma=300.0).requires_grad_(True)
    lab_to_rgb_keep_lightness(lab).sum().backward()
    assert torch.isfinite(lab.grad).all()


def test_compose_keeps_the_original_lightness():
    spec = ModelSpec()
    lightness = torch.rand(1, 37, 53) * 100
    ab_small = torch.rand(2, spec.l_size, spec.l_size) * 2 - 1  # saturated, often out of gamut
    rgb = compose(lightness, ab_small, spec)
    assert rgb.shape == (3, 37, 53)
    assert float((rgb_to_lab(rgb)[0] - lightness[0]).abs().max()) < 0.05
