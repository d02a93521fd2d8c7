"""The exported form of a trained network: what `colorizer export` scripts into the ``.pt``.

A ``Colorizer`` or ``ColorizerEnsemble`` is laid out for training; this module holds the
same weights laid out for inference:

- it takes the gray image at the backbone's own input size (``embed_size``, 224 for
  EfficientNet-Lite0): the pipeline resizes the photo straight to it, so no resize runs
  inside the network (torch 2.14 has no bfloat16 CPU kernel for the antialiased one, and
  its scripted body names ops that older torch releases lack);
- the members' heads are one convolution: pooling members averages their logits, and a
  head is linear, so mean_m(conv(d_m, W_m) + b_m) = conv(concat_m d_m, concat_m W_m / M)
  + mean_m b_m. The pooled logits differ from the members' mean log-softmax (what the
  ensemble pools) by a per-pixel constant, which the decoding's softmax removes;
- no log-softmax, stack or mean over members runs at all.

On one 2-core AMD EPYC thread this cut the shipped two-network default from 74-85 ms to
55-60 ms per photo, frozen 47-57 ms, at the same output (`colorizer pipeline-bench`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.model import (
    Colorizer,
    ColorizerEnsemble,
    Network,
    decode_logits,
    upsample_nearest_2x,
)

NETWORK_FILE = "colorizer_network.json"  # extra file of an exported .pt: its eager network


def state_mismatch(network: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """None when ``state`` holds exactly ``network``'s weight names; else what differs:
    "lacks [...], has unknown [...]" (the first four names of each)."""
    mine = network.state_dict()
    missing, unknown = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    if not missing and not unknown:
        return None
    return f"lacks {missing[:4]}, has unknown {unknown[:4]}"


def load_from_file(network: Network, state: dict[str, torch.Tensor], module: nn.Module) -> Network:
    """``network`` (in place) with ``state`` loaded and, for a classification network, the
    decoding (temperature, prior correction) of ``module``, the exported file it came from."""
    network.load_state_dict(state)
    if network.classify:
        network.with_decoding(float(module.temperature), float(module.prior_correction))
    return network


class Trunk(nn.Module):
    """One member's layers before its head.

    forward(l (B,1,S,S) in [-1,1], x (B,3,s,s) backbone input in [-1,1], embedding (B,E),
    tap (B,T,h,w)) -> decoder features (B,C,S/2,S/2). With ``own_backbone`` the trunk
    embeds ``x`` itself and ignores ``embedding`` and ``tap``.
    """

    __constants__ = ["own_backbone", "fused"]

    def __init__(self, model: Colorizer | nn.Module, backbone: nn.Module | None) -> None:
        super().__init__()
        self.encoder, self.fusion, self.decoder = model.encoder, model.fusion, model.decoder
        self.own_backbone = backbone is not None
        self.fused = bool(model.fused)
        self.backbone = backbone if backbone is not None else nn.Identity()

    def forward(
        self, l_in: torch.Tensor, x: torch.Tensor, embedding: torch.Tensor, tap: torch.Tensor
    ) -> torch.Tensor:
        if self.own_backbone:
            if self.fused:
                embedding, tap = self.backbone(x)
            else:
                embedding = self.backbone(x)
                tap = embedding
        return self.decoder(self.fusion(self.encoder(l_in), embedding, tap))


def pooled_head(heads: list[nn.Conv2d]) -> nn.Conv2d:
    """One conv over the members' concatenated features that outputs their mean logits.

    Each head maps (B, C, H, W) -> (B, Q, H, W) with the same kernel; the result maps
    (B, M*C, H, W) -> (B, Q, H, W).
    """
    first = heads[0]
    pooled = nn.Conv2d(
        first.in_channels * len(heads),
        first.out_channels,
        first.kernel_size,
        padding=first.padding,
    )
    with torch.no_grad():
        pooled.weight.copy_(torch.cat([h.weight for h in heads], dim=1) / len(heads))
        pooled.bias.copy_(torch.stack([h.bias for h in heads]).mean(dim=0))
    return pooled


class InferenceColorizer(nn.Module):
    """forward(l (B,1,S,S), gray (B,1,s,s)), both in [-1, 1], s the backbone's input size
    -> a*b* (B, 2, S, S) in [-1, 1]. S = 224, output at S/2 upsampled 2x (nearest).

    ``head_output`` -> classification: pooled logits (B, Q, S/2, S/2) to decode with
    ``decode_logits`` and this module's ``class_weights``, ``bin_centers``; regression:
    pre-tanh (B, 2, S/2, S/2). Same attributes as the trained network's for tuning
    (``classify``, ``temperature``, ``prior_correction``).
    """

    __constants__ = [
        "classify", "temperature", "prior_correction", "fused", "shared_backbone"
    ]  # fmt: skip

    def __init__(self, network: Network) -> None:
        super().__init__()
        network = network.eval()
        self.classify = bool(network.classify)
        self.temperature = float(network.temperature)
        self.prior_correction = float(network.prior_correction)
        self.fused = bool(network.fused)
        if isinstance(network, ColorizerEnsemble):
            members: list[nn.Module] = list(network.branches)
            self.shared_backbone = bool(network.shared_backbone)
        else:
            members = [network]
            self.shared_backbone = False
        shared = network.backbone if self.shared_backbone else None
        self.backbone = shared if shared is not None else nn.Identity()
        self.trunks = nn.ModuleList(
            [Trunk(m, None if self.shared_backbone else m.backbone) for m in members]
        )
        self.head = pooled_head([m.head for m in members])
        self.register_buffer("bin_centers", network.bin_centers.detach().clone())
        self.register_buffer("class_weights", network.class_weights.detach().clone())

    @torch.jit.export
    def head_output(self, l_in: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
        """Pooled head output at S/2 (see the class docstring)."""
        return self.head(self.features(l_in, gray))

    def features(self, l_in: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
        """Every member's decoder features, concatenated: (B, M*C, S/2, S/2)."""
        x = gray.expand(-1, 3, -1, -1)  # (B, 3, s, s)
        embedding, tap = x, x  # each trunk embeds x itself unless the backbone is shared
        if self.shared_backbone:
            if self.fused:
                embedding, tap = self.backbone(x)
            else:
                embedding = self.backbone(x)
                tap = embedding
        features: list[torch.Tensor] = []
        for trunk in self.trunks:
            features.append(trunk(l_in, x, embedding, tap))
        return torch.cat(features, dim=1)

    @torch.jit.export
    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """Head output -> a*b* (B, 2, S, S) in [-1, 1], out's dtype."""
        if self.classify:
            return decode_logits(
                out, self.class_weights, self.bin_centers, self.prior_correction, self.temperature
            )
        return upsample_nearest_2x(torch.tanh(out))

    def forward(self, l_in: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
        """``decode(head_output(l_in, gray))``, computed with fewer passes over the logits:
        the temperature and prior correction ride in the head's weights and bias (a
        (Q, C, 3, 3) tensor, not a (B, Q, H, W) one), and the softmax runs over the bins
        as the last dimension of the channels-last logits, with no copy."""
        if not self.classify:
            return self.decode(self.head_output(l_in, gray))
        features = self.features(l_in, gray)
        head_bias = self.head.bias
        assert head_bias is not None  # pooled_head makes one; TorchScript needs to see it
        log_weights = torch.log(self.class_weights.float().clamp(min=1e-12))
        scale = 1.0 / self.temperature
        weight = self.head.weight * scale
        bias = (head_bias - self.prior_correction * log_weights.to(head_bias.dtype)) * scale
        logits = F.conv2d(features, weight, bias, padding=self.head.padding)  # (B, Q, H, W)
        centers = self.bin_centers.float()  # (Q, 2)
        if logits.stride(1) == 1:  # channels-last: each pixel's bins lie side by side
            probs = torch.softmax(logits.permute(0, 2, 3, 1).float(), dim=-1)  # (B, H, W, Q)
            # probs @ centers as a linear layer: a (Q, 2) right-hand side is a slow GEMM
            # shape (4.4 against 1.6 ms per 224 photo, one AMD EPYC thread, fp32)
            ab = F.linear(probs, centers.t().contiguous()).permute(0, 3, 1, 2)
        else:  # NCHW (an fp32 frozen CPU conv gives that): the bins are strided. A copy to
            # bins-last cost more than it saved (network 49.8 against 46.0 ms, fp32, one
            # AMD EPYC thread, 2026-12-06)
            probs = torch.softmax(logits.float(), dim=1)
            ab = torch.einsum("bqhw,qc->bchw", probs, centers)
        return upsample_nearest_2x(ab.to(logits.dtype))


def backbone_size(network: Network, default: int) -> int:
    """The gray input side the exported network takes: the backbone's ``embed_size``, or
    ``default`` (the spec's gray size) for a network that takes the gray image as given."""
    return int(network.embed_size) or default
