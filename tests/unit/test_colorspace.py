"""Color math against scikit-image's rgb2lab / lab2rgb as the oracle."""

import numpy as np
import pytest
import torch
from skimage.color import lab2rgb, rgb2lab

from serving.runtime.colorspace import lab_to_rgb, lightness_to_gray, rgb_to_lab

N_COLORS = 100_000


def _random_colors(n: int, seed: int = 0) -> torch.Tensor:
    """(3, n, 1) random sRGB colors plus the 8 gamut corners."""
    gen = torch.Generator().manual_seed(seed)
    corners = torch.tensor(
        [[(i >> k) & 1 for k in (2, 1, 0)] for i in range(8)], dtype=torch.float32
    )
    colors = torch.cat((torch.rand(n, 3, generator=gen), corners))
    return colors.T.reshape(3, -1, 1)


def _as_hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).double().numpy()


def test_rgb_to_lab_matches_skimage_on_100k_colors_and_corners():
    rgb = _random_colors(N_COLORS)
    ours = _as_hwc(rgb_to_lab(rgb))
    ref = rgb2lab(_as_hwc(rgb))
    err = np.abs(ours - ref).max(axis=(0, 1))
    assert err.max() <= 0.05, f"max |dL|, |da|, |db| = {err}"


def test_lab_to_rgb_matches_skimage_on_in_gamut_lab():
    lab_ref = rgb2lab(_as_hwc(_random_colors(N_COLORS, seed=1)))
    lab = torch.from_numpy(lab_ref).float().permute(2, 0, 1)
    ours = _as_hwc(lab_to_rgb(lab))
    ref = lab2rgb(lab_ref)
    assert np.abs(ours - ref).max() <= 0.5 / 255


def test_round_trip_error_below_half_a_level():
    rgb = _random_colors(N_COLORS, seed=2)
    back = lab_to_rgb(rgb_to_lab(rgb))
    assert float((back - rgb).abs().max()) <= 0.5 / 255


def test_out_of_gamut_lab_is_clipped_never_nan():
    gen = torch.Generator().manual_seed(3)
    lab = torch.stack(
        (
            torch.rand(200, 200, generator=gen) * 140 - 20,  # L beyond [0, 100] too
            torch.rand(200, 200, generator=gen) * 600 - 300,
            torch.rand(200, 200, generator=gen) * 600 - 300,
        )
    ).requires_grad_(True)
    rgb = lab_to_rgb(lab)
    assert not torch.isnan(rgb).any()
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    rgb.sum().backward()
    assert not torch.isnan(lab.grad).any()


def test_batched_leading_dims_and_gradients():
    rgb = torch.rand(2, 4, 3, 8, 9, requires_grad=True)
    lab = rgb_to_lab(rgb)
    assert lab.shape == rgb.shape
    single = rgb_to_lab(rgb[1, 2].detach())
    assert torch.allclose(lab[1, 2], single, atol=1e-5)
    lab.sum().backward()
    assert rgb.grad is not None and not torch.isnan(rgb.grad).any()


def test_black_and_white_points():
    lab = rgb_to_lab(torch.tensor([0.0, 1.0]).expand(3, 2).reshape(3, 1, 2).contiguous())
    assert lab[0, 0, 0] == pytest.approx(0.0, abs=1e-3)
    assert lab[0, 0, 1] == pytest.approx(100.0, abs=1e-3)
    assert float(lab[1:].abs().max()) < 0.05


def test_lightness_to_gray_equals_lab_to_rgb_of_neutral_color():
    lightness = torch.linspace(0, 100, 101).reshape(1, 1, 101)
    neutral = lab_to_rgb(torch.cat((lightness, torch.zeros(2, 1, 101))))
    gray = lightness_to_gray(lightness)
    assert float((neutral - gray).abs().max()) < 1e-3


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        rgb_to_lab(torch.rand(4, 8, 8))
