"""sRGB (D65) <-> CIELAB conversion in torch.

One source of truth for the color math used by training, evaluation and the
handler. Batched over any leading dimensions, any device, float32, and
differentiable (no NaN gradients: every pow/cbrt branch is fed clamped inputs).

Conventions (the same as scikit-image's ``rgb2lab``/``lab2rgb``, D65, 2-degree
observer):

- RGB: (..., 3, H, W) float in [0, 1], gamma-encoded sRGB.
- Lab: (..., 3, H, W) float, L in [0, 100], a/b in about [-128, 127].
"""

from __future__ import annotations

import torch

# Linear sRGB -> XYZ (D65), as in scikit-image.
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)

_SRGB_LINEAR_THRESHOLD = 0.04045  # encoded value below which sRGB is linear
_LINEAR_SRGB_THRESHOLD = 0.0031308  # linear value below which sRGB is linear
_LAB_EPSILON = 0.008856  # (6/29)^3
_LAB_KAPPA_SLOPE = 7.787  # slope of the linear segment of f(t)
_LAB_F_THRESHOLD = 0.2068966  # 6/29, f^-1 switch point
_LAB_OFFSET = 16.0 / 116.0


def _matrix(rows: tuple, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _apply_matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 matrix over the channel dim of (..., 3, H, W)."""
    return torch.einsum("ij,...jhw->...ihw", m, x)


def _check_channels(x: torch.Tensor, name: str) -> None:
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"{name} must have shape (..., 3, H, W), got {tuple(x.shape)}")


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Gamma-encoded sRGB in [0, 1] -> linear RGB in [0, 1] (same shape)."""
    high = ((rgb.clamp(min=_SRGB_LINEAR_THRESHOLD) + 0.055) / 1.055) ** 2.4
    return torch.where(rgb > _SRGB_LINEAR_THRESHOLD, high, rgb / 12.92)


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Linear RGB -> gamma-encoded sRGB (same shape; not clipped)."""
    high = 1.055 * linear.clamp(min=_LINEAR_SRGB_THRESHOLD) ** (1.0 / 2.4) - 0.055
    return torch.where(linear > _LINEAR_SRGB_THRESHOLD, high, linear * 12.92)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    cube_root = t.clamp(min=_LAB_EPSILON) ** (1.0 / 3.0)
    return torch.where(t > _LAB_EPSILON, cube_root, _LAB_KAPPA_SLOPE * t + _LAB_OFFSET)


def _lab_f_inv(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f > _LAB_F_THRESHOLD, f**3, (f - _LAB_OFFSET) / _LAB_KAPPA_SLOPE)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (..., 3, H, W) in [0, 1] -> CIELAB (..., 3, H, W): L [0, 100], a/b ~[-128, 127]."""
    _check_channels(rgb, "rgb")
    xyz = _apply_matrix(_matrix(_XYZ_FROM_RGB, rgb), srgb_to_linear(rgb))
    white = torch.tensor(_WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    fx, fy, fz = _lab_f(xyz / white).unbind(dim=-3)
    lightness = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack((lightness, a, b), dim=-3)


def _lab_to_linear(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CIELAB (..., 3, H, W) -> (unclipped linear RGB (..., 3, H, W), Y (..., 1, H, W))."""
    lightness, a, b = lab.unbind(dim=-3)
    fy = (lightness + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = (fy - b / 200.0).clamp(min=0.0)
    white = torch.tensor(_WHITE_D65, dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    xyz = _lab_f_inv(torch.stack((fx, fy, fz), dim=-3)) * white
    rgb_from_xyz = torch.linalg.inv(_matrix(_XYZ_FROM_RGB, lab).double()).to(lab.dtype)
    return _apply_matrix(rgb_from_xyz, xyz), xyz[..., 1:2, :, :]


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB (..., 3, H, W) -> sRGB (..., 3, H, W) in [0, 1]; out-of-gamut Lab is clipped."""
    _check_channels(lab, "lab")
    linear, _ = _lab_to_linear(lab)
    return linear_to_srgb(linear).clamp(0.0, 1.0)


def lab_to_rgb_keep_lightness(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB (..., 3, H, W) -> sRGB (..., 3, H, W) in [0, 1] whose L is the input's L.

    Clipping each channel of an out-of-gamut color (``lab_to_rgb``) changes its
    lightness. Here such a color moves toward the gray of its own luminance, in linear
    RGB where luminance is linear, just far enough to fit: L stays (for L in [0, 100]),
    chroma shrinks. In-gamut colors are converted exactly as by ``lab_to_rgb``.
    """
    _check_channels(lab, "lab")
    linear, luminance = _lab_to_linear(lab)
    gray = luminance.clamp(0.0, 1.0)  # (..., 1, H, W)
    chroma = linear - gray
    # Largest t <= 1 keeping gray + t * chroma inside [0, 1] on every channel.
    room = torch.where(chroma > 0, 1.0 - gray, gray) / chroma.abs().clamp(min=1e-12)
    scale = room.amin(dim=-3, keepdim=True).clamp(max=1.0)
    return linear_to_srgb(gray + scale * chroma).clamp(0.0, 1.0)


def lightness_to_gray(lightness: torch.Tensor) -> torch.Tensor:
    """L (any shape) in [0, 100] -> gamma-encoded gray in [0, 1]: the sRGB of Lab (L, 0, 0)."""
    y = _lab_f_inv((lightness + 16.0) / 116.0)
    return linear_to_srgb(y).clamp(0.0, 1.0)
