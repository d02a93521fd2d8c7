"""Quantized a*b* classes for the classification head (Zhang, Isola & Efros 2016).

MSE regression averages plausible colors into gray-brown. Predicting a distribution
over in-gamut a*b* bins, trained with class-rebalanced cross-entropy and decoded
with the annealed mean, keeps rare saturated colors alive.

All a*b* values here are in the network's units: Lab a*b* / ModelSpec.ab_scale.
"""

from __future__ import annotations

import torch

from serving.runtime.colorspace import rgb_to_lab
from serving.runtime.model_spec import ModelSpec

GAMUT_SAMPLES_PER_CHANNEL = 48  # RGB grid used to find the in-gamut bins
REBALANCE_MIX = 0.5  # lambda in Zhang et al.: mix of empirical and uniform priors
SOFT_TARGET_SIGMA = 5.0  # Lab units: Gaussian width of Zhang et al.'s soft encoding


def gamut_bin_centers(bin_size: float, spec: ModelSpec = ModelSpec()) -> torch.Tensor:
    """Centers of the a*b* grid cells (side ``bin_size`` Lab units) that some sRGB color hits.

    Returns (Q, 2) float32 in network units (divided by spec.ab_scale), sorted.
    """
    axis = torch.linspace(0, 1, GAMUT_SAMPLES_PER_CHANNEL)
    rgb = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).reshape(3, -1, 1)
    ab = rgb_to_lab(rgb)[1:, :, 0]  # (2, N) Lab units
    cells = torch.unique(torch.floor(ab / bin_size).T, dim=0)  # (Q, 2) cell indices
    return ((cells + 0.5) * bin_size / spec.ab_scale).float()


def nearest_bin(ab: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """a*b* (B, 2, H, W) -> index of the nearest bin center (B, H, W), int64."""
    b, _, h, w = ab.shape
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2).float()
    return torch.cdist(flat, centers.to(flat)).argmin(dim=1).reshape(b, h, w)


def soft_targets(
    ab: torch.Tensor, centers: torch.Tensor, neighbors: int, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """a*b* (B, 2, H, W) -> each pixel's ``neighbors`` nearest bins and their target mass.

    Returns (indices (B*H*W, K) int64, nearest first; weights (B*H*W, K) float32, each row
    summing to 1), the weights a Gaussian of the distance to each center with width
    ``sigma`` (network units, like ``ab`` and ``centers``): Zhang et al.'s soft encoding
    (K 5, sigma 5 Lab units). K 1 gives the nearest bin with weight 1.
    """
    if not 1 <= neighbors <= len(centers):
        raise ValueError(f"neighbors must be 1..{len(centers)} (the bins), got {neighbors}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2).float()
    dist, idx = torch.cdist(flat, centers.to(flat)).topk(neighbors, dim=1, largest=False)
    weights = torch.softmax(-(dist**2) / (2 * sigma**2), dim=1)
    return idx, weights


def rebalance_weights(counts: torch.Tensor, mix: float = REBALANCE_MIX) -> torch.Tensor:
    """Class weights proportional to 1 / ((1 - mix) * p + mix / Q), with E_p[w] = 1.

    ``counts``: (Q,) how often each bin occurs in the training targets. ``mix`` in (0, 1];
    1.0 gives every class weight 1 (no rebalancing).
    """
    if not 0.0 < mix <= 1.0:
        raise ValueError(f"rebalance mix must be in (0, 1], got {mix}")
    p = counts.double() / counts.sum().clamp(min=1)
    weights = 1.0 / ((1 - mix) * p + mix / len(counts))
    return (weights / (p * weights).sum()).float()


def adjust_for_prior(
    logits: torch.Tensor, class_weights: torch.Tensor, correction: float
) -> torch.Tensor:
    """Logits (B, Q, H, W) minus ``correction`` * log(class weight): post-hoc logit adjustment.

    Training with rebalancing weights w shifts the learned posterior to about w_q p(q | x).
    ``correction`` 1.0 undoes that (more accurate, less colorful); 0.0 keeps it; negative
    values rebalance further (more colorful). Returns float32 logits of the same shape.
    """
    if correction == 0.0:
        return logits.float()
    log_w = torch.log(class_weights.float().clamp(min=1e-12))
    return logits.float() - correction * log_w[None, :, None, None]


def annealed_mean(logits: torch.Tensor, centers: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits (B, Q, H, W) -> a*b* (B, 2, H, W): mean of softmax(logits / T) over bin centers."""
    probs = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", probs, centers.float())
