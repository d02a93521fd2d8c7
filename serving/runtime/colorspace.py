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

import functools

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
_GAMUT_MIN_CHROMA = 1e-12  # smallest |chroma| the keep-lightness gamut test divides by


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
    room = torch.where(chroma > 0, 1.0 - gray, gray) / chroma.abs().clamp(min=_GAMUT_MIN_CHROMA)
    scale = room.amin(dim=-3, keepdim=True).clamp(max=1.0)
    return linear_to_srgb(gray + scale * chroma).clamp(0.0, 1.0)


def lightness_to_gray(lightness: torch.Tensor) -> torch.Tensor:
    """L (any shape) in [0, 100] -> gamma-encoded gray in [0, 1]: the sRGB of Lab (L, 0, 0)."""
    y = _lab_f_inv((lightness + 16.0) / 116.0)
    return linear_to_srgb(y).clamp(0.0, 1.0)


# --- 8-bit fast paths: the same math on one plane at a time, for the serving pipeline. ---
#
# A photo's pixels are 8-bit, so per-pixel functions of one 8-bit value are 256-entry
# tables, and the last step (linear RGB -> gamma-encoded 8-bit) is a table over a fine
# quantization of the linear value. The serving pipeline calls these on row strips, so
# temporaries stay small; they agree with the float functions above to well under one
# 8-bit level (tests/unit/test_pixels_equivalence.py).

LINEAR_LEVELS = 1 << 16  # quantization of linear RGB before the 8-bit sRGB table


def srgb8_to_linear_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """(256,) float32: linear RGB of each 8-bit sRGB level (``srgb_to_linear(v / 255)``)."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    return srgb_to_linear(levels).to(device=device, dtype=torch.float32)


def srgb8_gray_lightness_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """(256,) float32: CIELAB L in [0, 100] of each 8-bit gray level (v, v, v)."""
    levels = (torch.arange(256, dtype=torch.float64) / 255.0).expand(3, 1, 256)
    return rgb_to_lab(levels)[0, 0].to(device=device, dtype=torch.float32)


def linear_to_srgb8_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """(LINEAR_LEVELS,) uint8: 8-bit sRGB of linear value i / (LINEAR_LEVELS - 1)."""
    linear = torch.arange(LINEAR_LEVELS, dtype=torch.float64) / (LINEAR_LEVELS - 1)
    return (linear_to_srgb(linear).clamp(0, 1) * 255.0).round().to(device, torch.uint8)


def luminance_to_lightness(y: torch.Tensor) -> torch.Tensor:
    """Relative luminance Y (any shape, float) -> CIELAB L in [0, 100]."""
    return 116.0 * _lab_f(y) - 16.0


def _lab_f_inv_smooth(f: torch.Tensor) -> torch.Tensor:
    """``_lab_f_inv`` without a branch: the linear segment is the tangent of f^3 at 6/29, so
    f^3 = tangent + (f - 6/29)^2 (f + 12/29), and that last term is added only above 6/29."""
    above = (f - _LAB_F_THRESHOLD).clamp_(min=0.0)
    tangent = (f - _LAB_OFFSET).div_(_LAB_KAPPA_SLOPE)
    return tangent.addcmul_(above.mul_(above), f + 2.0 * _LAB_F_THRESHOLD)


@functools.cache
def _rgb_from_xyz_over_white() -> tuple[tuple[float, ...], ...]:
    """XYZ -> linear RGB with the white point folded in: applied to (X/Xn, Y/Yn, Z/Zn)."""
    inverse = torch.linalg.inv(torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64))
    return tuple(map(tuple, inverse * torch.tensor(_WHITE_D65, dtype=torch.float64)))


def lab_to_srgb8_keep_lightness(
    lightness: torch.Tensor, ab: torch.Tensor, out: torch.Tensor, srgb8: torch.Tensor
) -> None:
    """``lab_to_rgb_keep_lightness`` for one strip, written as 8-bit sRGB into ``out``.

    - ``lightness``: (R, W) float32 L in [0, 100]
    - ``ab``: (2, R, W) float32 a*, b* (modified in place: used as scratch)
    - ``out``: (3, R, W) uint8 planes, each plane contiguous (e.g. rows of a (3, H, W) image)
    - ``srgb8``: ``linear_to_srgb8_table()`` on the same device

    Planar and branch-free on purpose: interleaving to (R, W, 3) and boolean masks /
    ``where`` are the slow kernels on a CPU. The largest t <= 1 keeping gray + t * chroma in
    [0, 1] on every channel needs only the extreme channels: t = min((1 - gray) / max(c),
    gray / -min(c)), each side ignored (>= 1) when no channel points that way.
    """
    rows, width = lightness.shape
    xyz = torch.empty(3, rows, width, dtype=lightness.dtype, device=lightness.device)
    fy = torch.add(lightness, 16.0, out=xyz[1]).div_(116.0)
    torch.div(ab[0], 500.0, out=xyz[0]).add_(fy)
    torch.div(ab[1], -200.0, out=xyz[2]).add_(fy).clamp_(min=0.0)
    xyz = _lab_f_inv_smooth(xyz)  # X/Xn, Y, Z/Zn
    gray = xyz[1].clamp(0.0, 1.0)  # Y: the luminance, kept
    matrix = torch.tensor(_rgb_from_xyz_over_white(), dtype=xyz.dtype, device=xyz.device)
    chroma = (matrix @ xyz.view(3, -1)).view(3, rows, width).sub_(gray)  # linear RGB - gray
    lowest, highest = torch.aminmax(chroma, dim=0)  # (R, W) each
    # A side with no channel pointing its way divides by _GAMUT_MIN_CHROMA: >= 1, so
    # unconstrained. At gray 0 or 1 it is 0 instead, but there every channel's chroma is 0
    # (Y = gray), so the scale does not matter.
    up = torch.rsub(gray, 1.0).div_(highest.clamp_(min=_GAMUT_MIN_CHROMA))
    down = gray.div(lowest.neg_().clamp_(min=_GAMUT_MIN_CHROMA))
    # Table index: round((gray + scale * chroma) * top), clipped to the table.
    top = LINEAR_LEVELS - 1
    scale = torch.minimum(up, down, out=up).clamp_(max=1.0).mul_(top)
    linear = chroma.mul_(scale).add_(gray.mul_(top).add_(0.5)).clamp_(0.0, top)
    index = linear.to(torch.int32)  # truncates: the 0.5 above rounds
    for channel in range(3):
        torch.index_select(srgb8, 0, index[channel].view(-1), out=out[channel].view(-1))
