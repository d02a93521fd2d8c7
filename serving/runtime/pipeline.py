"""The colorize pipeline shared by the handler, `colorizer evaluate` and benchmarks.

photo (any size) -> L at full resolution -> L@224 + gray@299 -> network -> a*b*@224
-> a*b* upsampled to full size -> joined with the ORIGINAL L -> Lab -> RGB.

The stages are separate methods so a server can time each one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from serving.runtime.colorspace import lab_to_rgb_keep_lightness, lightness_to_gray, rgb_to_lab
from serving.runtime.device import pick_device, pick_dtype
from serving.runtime.model_spec import ModelSpec, load_scripted

log = logging.getLogger(__name__)


def model_inputs(lightness: torch.Tensor, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """L (1, H, W) in [0, 100] -> (l (1, S, S), gray (1, G, G)), both in [-1, 1].

    S = spec.l_size, G = spec.gray_size; bilinear with antialiasing.
    """
    full = lightness[None]  # (1, 1, H, W)
    l_small = F.interpolate(full, size=(spec.l_size,) * 2, mode="bilinear", antialias=True)
    l_in = (l_small[0] - spec.l_center) / spec.l_scale
    gray = F.interpolate(
        lightness_to_gray(full), size=(spec.gray_size,) * 2, mode="bilinear", antialias=True
    )
    return l_in.clamp(-1, 1), (gray[0] * 2.0 - 1.0).clamp(-1, 1)


def compose(lightness: torch.Tensor, ab_small: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Original L (1, H, W) + network a*b* (2, s, s) in [-1, 1] -> RGB (3, H, W) in [0, 1].

    The output keeps the original L: colors outside the sRGB gamut are desaturated, not
    clipped (clipping changed L by up to ~3 units on saturated photos).
    """
    height, width = lightness.shape[-2:]
    ab = F.interpolate(ab_small[None].float(), size=(height, width), mode="bilinear")[0]
    return lab_to_rgb_keep_lightness(torch.cat((lightness, ab * spec.ab_scale), dim=0))


@dataclass
class Prepared:
    """A batch ready for the network.

    - ``lightness``: per image (1, H_i, W_i) float32 L in [0, 100] on the pipeline's device
    - ``l_in``: (B, 1, S, S) and ``gray_in``: (B, 1, G, G) in the network's dtype, in [-1, 1]
    """

    lightness: list[torch.Tensor]
    l_in: torch.Tensor
    gray_in: torch.Tensor


class ColorizePipeline:
    """A loaded TorchScript colorizer on one device, with its spec."""

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        spec: ModelSpec,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.module = module.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
        self.module.eval()

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, precision: str = "auto"
    ) -> ColorizePipeline:
        """Load an exported ``.pt``; device None -> CUDA if available, else CPU."""
        device = pick_device(device)
        dtype = pick_dtype(device, precision)
        module, spec = load_scripted(path, device)
        log.info("colorizer loaded on %s in %s", device, str(dtype).removeprefix("torch."))
        return cls(module, spec, device, dtype)

    @torch.inference_mode()
    def prepare(self, images: list[torch.Tensor]) -> Prepared:
        """RGB images, each (3, H_i, W_i) float in [0, 1] (any device) -> a network batch."""
        lightness, l_batch, gray_batch = [], [], []
        for rgb in images:
            lum = rgb_to_lab(rgb.to(self.device, torch.float32))[:1]
            l_in, gray_in = model_inputs(lum, self.spec)
            lightness.append(lum)
            l_batch.append(l_in)
            gray_batch.append(gray_in)
        to_net = dict(dtype=self.dtype, memory_format=torch.channels_last)
        return Prepared(
            lightness=lightness,
            l_in=torch.stack(l_batch).to(**to_net),
            gray_in=torch.stack(gray_batch).to(**to_net),
        )

    @torch.inference_mode()
    def infer(self, batch: Prepared) -> torch.Tensor:
        """Network forward: -> a*b* (B, 2, S, S) float32 in [-1, 1]."""
        return self.module(batch.l_in, batch.gray_in).float()

    @torch.inference_mode()
    def finish(self, batch: Prepared, ab: torch.Tensor) -> list[torch.Tensor]:
        """-> RGB per image, (3, H_i, W_i) float32 in [0, 1] on the CPU."""
        return [
            compose(lum, ab_i, self.spec).cpu()
            for lum, ab_i in zip(batch.lightness, ab, strict=True)
        ]

    @torch.inference_mode()
    def colorize(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """RGB (3, H_i, W_i) in [0, 1] -> colorized RGB at the same sizes (luminance kept)."""
        if not images:
            return []
        batch = self.prepare(images)
        return self.finish(batch, self.infer(batch))
