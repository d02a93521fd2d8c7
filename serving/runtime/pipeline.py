"""The colorize pipeline shared by the handler, `colorizer evaluate` and benchmarks.

photo (any size) -> L at full resolution -> L@224 + gray@299 -> network -> a*b*@224
-> a*b* upsampled to full size -> joined with the ORIGINAL L -> Lab -> RGB.

The stages are separate methods so a server can time each one.

Two ways in and out:

- float RGB tensors (3, H, W) in [0, 1] (training, evaluation): ``prepare`` / ``finish``;
  whole-image tensor math, the definition the tests compare against.
- decoded photos (``imageio.DecodedImage``, 8-bit gray or RGB) -> 8-bit RGB (serving):
  ``prepare`` / ``finish_uint8``. Full-resolution work runs on row strips of about
  ``strip_pixels`` pixels, so its temporaries stay small and in cache; per-pixel functions
  of 8-bit values are tables (``colorspace``). Peak memory grows by about
  ``PEAK_BYTES_PER_PIXEL`` per pixel of the photo, against ~143 for the whole-image
  float path (`colorizer pipeline-bench`; tests/unit/test_pixels_memory.py).

On a GPU (``batched_pixels``) the same per-pixel functions run once per group of photos
laid end to end instead (``pixel_groups``): there a kernel launch costs more than the work
on a small photo's pixels, and results stay on the device for nvJPEG (``finish_images``).
The network is frozen for inference there too (``freeze``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from serving.runtime.colorspace import (
    lab_to_rgb_keep_lightness,
    lab_to_srgb8_keep_lightness,
    lightness_to_gray,
    linear_to_srgb,
    linear_to_srgb8_table,
    luminance_to_lightness,
    rgb_to_lab,
    srgb8_gray_lightness_table,
    srgb8_to_linear_table,
    srgb_to_linear,
)
from serving.runtime.device import pick_device, sync
from serving.runtime.imageio import DecodedImage
from serving.runtime.model_spec import ModelSpec, load_scripted
from serving.runtime.precision import AutoConfig, name_of, resolve

log = logging.getLogger(__name__)

# Pixels per row strip of the full-resolution work. On a CPU, per-kernel overhead beats
# cache residency: finish at 12 MP took 2.3-2.7 s with 16 K-pixel strips, 1.3-1.5 s with
# 64 K, 1.0-1.2 s with 256 K (one busy 2-core EPYC, 1 thread); a strip's temporaries stay
# ~20 MB. A GPU wants few, large kernels: on CUDA this is the pixels of one group of photos
# (64 photos of 0.25 MP make one group; ~96 bytes per pixel of temporaries at the peak).
CPU_STRIP_PIXELS = 1 << 18
CUDA_STRIP_PIXELS = 1 << 24
# Budget for the growth of a worker's peak memory per pixel of one photo on the 8-bit
# path, decode to encoded bytes: measured 8.6 (gray JPEG) and 13.3 (color JPEG) at 40 MP,
# against ~143 before (tests/unit/test_pixels_memory.py holds it). The cpu profile's memory
# arithmetic uses it (k8s/CAPACITY.md).
PEAK_BYTES_PER_PIXEL = 16
# sRGB (D65) luminance weights of linear R, G, B (the Y row of colorspace's matrix).
_LUMA = (0.212671, 0.715160, 0.072169)


def model_inputs(lightness: torch.Tensor, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """L (1, H, W) in [0, 100] -> (l (1, S, S), gray (1, G, G)), both in [-1, 1].

    S = spec.l_size, G = spec.gray_size; bilinear with antialiasing.
    """
    return resize_inputs(lightness, lightness_to_gray(lightness), spec)


def resize_inputs(
    lightness: torch.Tensor, gray: torch.Tensor, spec: ModelSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """L (1, H, W) in [0, 100] + gray (1, H, W) in [0, 1] -> the network's (1, S, S), (1, G, G).

    ``gray`` is the sRGB gray of the same lightness (``lightness_to_gray``).
    """
    l_small, gray_small = resize_raw(lightness, gray, spec)
    return scale_inputs(l_small, gray_small, spec)


def resize_raw(
    lightness: torch.Tensor, gray: torch.Tensor, spec: ModelSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """L (1, H, W) + gray (1, H, W) -> L (1, S, S) in [0, 100], gray (1, G, G) in [0, 1]:
    bilinear with antialiasing, not yet scaled to the network's range."""
    l_small = F.interpolate(
        lightness[None], size=(spec.l_size,) * 2, mode="bilinear", antialias=True
    )
    gray = F.interpolate(gray[None], size=(spec.gray_size,) * 2, mode="bilinear", antialias=True)
    return l_small[0], gray[0]


def scale_inputs(
    l_small: torch.Tensor, gray_small: torch.Tensor, spec: ModelSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """``resize_raw``'s outputs, one photo or a batch (any leading dims) -> [-1, 1] each."""
    l_in = (l_small - spec.l_center) / spec.l_scale
    return l_in.clamp(-1, 1), (gray_small * 2.0 - 1.0).clamp(-1, 1)


def compose(lightness: torch.Tensor, ab_small: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Original L (1, H, W) + network a*b* (2, s, s) in [-1, 1] -> RGB (3, H, W) in [0, 1].

    The output keeps the original L: colors outside the sRGB gamut are desaturated, not
    clipped (clipping changed L by up to ~3 units on saturated photos).
    """
    height, width = lightness.shape[-2:]
    ab = F.interpolate(ab_small[None].float(), size=(height, width), mode="bilinear")[0]
    return lab_to_rgb_keep_lightness(torch.cat((lightness, ab * spec.ab_scale), dim=0))


def _strips(height: int, width: int, strip_pixels: int) -> list[tuple[int, int]]:
    """Row ranges [y0, y1) of about ``strip_pixels`` pixels each, covering ``height`` rows."""
    rows = max(1, strip_pixels // max(width, 1))
    return [(y0, min(y0 + rows, height)) for y0 in range(0, height, rows)]


def pixel_groups(pixel_counts: list[int], limit: int) -> list[list[int]]:
    """Consecutive photo indices grouped so that each group holds at most ``limit`` pixels;
    a photo larger than ``limit`` forms a group of its own."""
    groups: list[list[int]] = []
    total = limit + 1
    for index, count in enumerate(pixel_counts):
        if total + count > limit:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += count
    return groups


def _source_rows(size_in: int, size_out: int, device: torch.device):
    """Bilinear (align_corners=False) source rows of each output row, as F.interpolate does.

    -> (i0 (size_out,) int32, i1 (size_out,) int32, weight of i1 (size_out, 1) float32).
    """
    scale = size_in / size_out
    src = (torch.arange(size_out, device=device, dtype=torch.float32) + 0.5) * scale - 0.5
    src = src.clamp(min=0.0)
    i0 = src.floor().to(torch.int32).clamp(max=size_in - 1)
    i1 = (i0 + 1).clamp(max=size_in - 1)
    return i0, i1, (src - i0).unsqueeze(1)


class _Tables:
    """The 8-bit lookup tables on one device (built once per pipeline)."""

    def __init__(self, device: torch.device) -> None:
        self.gray_lightness = srgb8_gray_lightness_table(device)  # (256,) float32
        self.linear = srgb8_to_linear_table(device)  # (256,) float32
        self.srgb8 = linear_to_srgb8_table(device)  # (65536,) uint8

    @staticmethod
    def look_up(table: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> None:
        """out[...] = table[index]: ``index`` uint8 (any shape), ``out`` float32 of its shape,
        contiguous, on the table's device. On a CPU numpy's take indexes with the uint8
        values directly (half the time of widening them for ``index_select``)."""
        if table.device.type == "cpu":
            np.take(table.numpy(), index.numpy(), out=out.numpy())
        else:
            torch.index_select(table, 0, index.reshape(-1).to(torch.int32), out=out.view(-1))


@dataclass
class Prepared:
    """A batch ready for the network.

    - ``lightness``: per image (1, H_i, W_i) float32 L in [0, 100] on the pipeline's device
    - ``l_in``: (B, 1, S, S) and ``gray_in``: (B, 1, G, G) in the network's dtype, in [-1, 1]
    """

    lightness: list[torch.Tensor]
    l_in: torch.Tensor
    gray_in: torch.Tensor


def should_freeze(module: torch.nn.Module, freeze: bool | None = None) -> bool:
    """``freeze`` when given; by default, freeze only a scripted network: `colorizer
    tune-decoding` runs the eager one from a checkpoint, which ``torch.jit.freeze`` refuses."""
    return isinstance(module, torch.jit.ScriptModule) if freeze is None else freeze


def probe_photo(side: int = 256) -> torch.Tensor:
    """A fixed synthetic photo for probe runs: RGB (3, side, side) float32 in [0, 1], a
    smooth gray gradient with some texture."""
    ramp = torch.linspace(0.0, 1.0, side)
    gray = 0.5 * ramp[None, :] + 0.3 * ramp[:, None] + 0.1 * torch.sin(ramp[None, :] * 40.0)
    return gray.clamp(0.0, 1.0).expand(3, side, side).contiguous()


class ColorizePipeline:
    """A loaded TorchScript colorizer on one device, with its spec."""

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        spec: ModelSpec,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        strip_pixels: int | None = None,
        batched_pixels: bool | None = None,
        freeze: bool | None = None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.precision_reason = f"{dtype} given"  # ``load`` says how it was chosen
        module = module.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
        # Frozen for inference (weights as constants, conv+BN folded): on an H200 the paper's
        # network went from 2,905 to 4,034 img/s at batch 64 and 1,149 to 2,324 at 16
        # (tests/gpu/RESULTS.md); on one AMD EPYC thread the shipped default's network from
        # 56-59 to 47-50 ms in fp32 (`colorizer pipeline-bench --precision fp32
        # --baseline-model <the same file> --baseline-precision fp32 --baseline-freeze no`).
        self.module = module.eval()
        self.frozen = False
        if should_freeze(module, freeze):
            self.freeze()
        default_strip = CUDA_STRIP_PIXELS if device.type == "cuda" else CPU_STRIP_PIXELS
        self.strip_pixels = strip_pixels or default_strip
        # Per-pixel work on decoded photos: for the whole batch at once (a few large kernels
        # per batch, ``_prepare_batched``/``_finish_batched``) on a GPU; per photo in row
        # strips (cache-sized temporaries, least memory) on a CPU.
        self.batched_pixels = device.type == "cuda" if batched_pixels is None else batched_pixels
        self.tables = _Tables(device)

    def freeze(self) -> None:
        """Freeze the scripted network for inference (weights as constants, conv+BN folded)."""
        self.module = torch.jit.optimize_for_inference(torch.jit.freeze(self.module))
        self.frozen = True

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        precision: str = "auto",
        auto_config: AutoConfig = AutoConfig(),
        probe_batch: int = 1,
        **options,
    ) -> ColorizePipeline:
        """Load an exported ``.pt``; device None -> CUDA if available, else CPU. ``precision``:
        'auto' (measured, ``serving.runtime.precision``, on ``probe_batch`` copies of a probe
        photo: the batch size the network will run at), 'fp32' or 'bf16'; raises
        ``PrecisionUnusable`` when the one named cannot run the model. ``options``: the
        constructor's ``strip_pixels``, ``batched_pixels`` and ``freeze``."""
        device = pick_device(device)
        built: dict[torch.dtype, ColorizePipeline] = {}
        freeze = options.pop("freeze", None)

        def probe(dtype: torch.dtype):
            module, spec = load_scripted(path, device)
            pipeline = cls(module, spec, device, dtype, freeze=False, **options)
            batch = pipeline.prepare([probe_photo()] * probe_batch)
            pipeline.infer(batch)  # before freezing: a frozen network that cannot run a
            # precision may crash the process (an old file's bf16 resize) instead of raising
            if should_freeze(module, freeze):
                pipeline.freeze()
            built[dtype] = pipeline

            def run() -> torch.Tensor:
                ab = pipeline.infer(batch)
                sync(device)  # the time of the work, not of queueing it
                return ab

            return run

        choice = resolve(precision, device, probe, auto_config)
        pipeline = built[choice.dtype]
        built.clear()
        pipeline.precision_reason = choice.reason
        log.info("colorizer loaded on %s in %s%s; %s", device, name_of(choice.dtype),
                 ", frozen" if pipeline.frozen else "", choice.reason)  # fmt: skip
        return pipeline

    def lightness_and_gray(self, image: DecodedImage) -> tuple[torch.Tensor, torch.Tensor]:
        """A decoded photo -> (L (1, H, W) in [0, 100], gray (1, H, W) in [0, 1]), float32.

        8-bit gray: both from 256-entry tables. 8-bit RGB: luminance from a table per
        channel. High-bit gray (float): the float functions. Never builds float RGB.
        """
        pixels = image.pixels_tensor().to(self.device)
        height, width = pixels.shape[:2]
        lightness = torch.empty(1, height, width, device=self.device)
        gray = torch.empty(1, height, width, device=self.device)
        for y0, y1 in _strips(height, width, self.strip_pixels):
            self.pixel_lightness(pixels[y0:y1], lightness[0, y0:y1], gray[0, y0:y1])
        return lightness, gray

    def pixel_lightness(self, pixels: torch.Tensor, lightness: torch.Tensor, gray: torch.Tensor):
        """Per-pixel L and gray of decoded pixels, written into ``lightness`` and ``gray``.

        - ``pixels``: (R, W) uint8 gray, (R, W, 3) uint8 RGB or (R, W) float32 gray in
          [0, 1], on the pipeline's device (any strides)
        - ``lightness``: (R, W) float32, L in [0, 100]; ``gray``: (R, W) float32 in [0, 1];
          both contiguous, written in place
        """
        if pixels.dtype == torch.uint8 and pixels.dim() == 2:
            self.tables.look_up(self.tables.gray_lightness, pixels, lightness)
            torch.div(pixels, 255.0, out=gray)
            return
        if pixels.dtype == torch.uint8:  # (R, W, 3) RGB
            linear = torch.empty(pixels.shape, device=self.device)
            self.tables.look_up(self.tables.linear, pixels.contiguous(), linear)
            y = linear @ torch.tensor(_LUMA, device=self.device)
        else:  # (R, W) float gray in [0, 1]
            y = srgb_to_linear(pixels.float())
        lightness.copy_(luminance_to_lightness(y))
        gray.copy_(linear_to_srgb(y.clamp(0.0, 1.0)).clamp(0.0, 1.0))

    def _prepare_batched(self, images: list[DecodedImage]) -> Prepared:
        """``prepare`` for decoded photos, the per-pixel work done once per group of photos
        (``pixel_groups``) and per kind of pixels instead of once per photo: on a GPU a
        kernel launch costs more than the work on a 0.25 MP photo's pixels."""
        pixels = [image.pixels_tensor().to(self.device, non_blocking=True) for image in images]
        count = len(pixels)
        lightness: list[torch.Tensor] = [torch.empty(0)] * count
        l_small: list[torch.Tensor] = [torch.empty(0)] * count
        gray_small: list[torch.Tensor] = [torch.empty(0)] * count
        sizes = [tuple(p.shape[:2]) for p in pixels]
        for group in pixel_groups([h * w for h, w in sizes], self.strip_pixels):
            kinds: dict[tuple, list[int]] = {}
            for i in group:
                kinds.setdefault((pixels[i].dtype, pixels[i].dim()), []).append(i)
            for members in kinds.values():
                flat = torch.cat([pixels[i].reshape(-1, *pixels[i].shape[2:]) for i in members])
                lum_flat = torch.empty(1, flat.shape[0], device=self.device)
                gray_flat = torch.empty(1, flat.shape[0], device=self.device)
                self.pixel_lightness(flat[None], lum_flat, gray_flat)
                offset = 0
                for i in members:
                    height, width = sizes[i]
                    end = offset + height * width
                    lum = lum_flat[:, offset:end].view(1, height, width)
                    gray = gray_flat[:, offset:end].view(1, height, width)
                    l_small[i], gray_small[i] = resize_raw(lum, gray, self.spec)
                    lightness[i] = lum
                    offset = end
        l_in, gray_in = scale_inputs(torch.stack(l_small), torch.stack(gray_small), self.spec)
        to_net = dict(dtype=self.dtype, memory_format=torch.channels_last)
        return Prepared(lightness=lightness, l_in=l_in.to(**to_net), gray_in=gray_in.to(**to_net))

    @torch.inference_mode()
    def prepare(self, images: list[torch.Tensor | DecodedImage]) -> Prepared:
        """A batch of photos -> network inputs.

        Each photo is either a ``DecodedImage`` (the serving path) or an RGB tensor
        (3, H_i, W_i) float in [0, 1] on any device.
        """
        if self.batched_pixels and images and all(isinstance(i, DecodedImage) for i in images):
            return self._prepare_batched(images)
        lightness, l_batch, gray_batch = [], [], []
        for image in images:
            if isinstance(image, DecodedImage):
                lum, gray = self.lightness_and_gray(image)
                l_in, gray_in = resize_inputs(lum, gray, self.spec)
                del gray
            else:
                lum = rgb_to_lab(image.to(self.device, torch.float32))[:1]
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
        """-> RGB per image, (3, H_i, W_i) float32 in [0, 1] on the CPU (whole-image math)."""
        return [
            compose(lum, ab_i, self.spec).cpu()
            for lum, ab_i in zip(batch.lightness, ab, strict=True)
        ]

    @torch.inference_mode()
    def finish_uint8(self, batch: Prepared, ab: torch.Tensor) -> list[np.ndarray]:
        """-> RGB per image, (3, H_i, W_i) uint8 planes on the CPU; ``finish`` within one level."""
        return [rgb.cpu().numpy() for rgb in self.finish_images(batch, ab)]

    @torch.inference_mode()
    def finish_images(self, batch: Prepared, ab: torch.Tensor) -> list[torch.Tensor]:
        """-> RGB per image, (3, H_i, W_i) uint8, contiguous, on the pipeline's device (a GPU
        encoder takes them there); ``finish`` within one level."""
        ab = ab.float() * self.spec.ab_scale  # (B, 2, s, s), the whole batch at once
        if self.batched_pixels:
            return self._finish_batched(batch.lightness, ab)
        return [
            self._finish_strips(lum, ab_i) for lum, ab_i in zip(batch.lightness, ab, strict=True)
        ]

    def _finish_strips(self, lum: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """L (1, H, W) + a*b* (2, s, s) unscaled -> (3, H, W) uint8, row strip by row strip.

        a*b* is upsampled separably: across the width once ((2, s, W), small), then down
        the rows strip by strip, each strip going straight to 8-bit sRGB.
        """
        size = ab.shape[-2]
        height, width = lum.shape[-2:]
        ab_wide = F.interpolate(ab[None], size=(size, width), mode="bilinear")[0]
        i0, i1, weight = _source_rows(size, height, self.device)
        out = torch.empty(3, height, width, dtype=torch.uint8, device=self.device)
        for y0, y1 in _strips(height, width, self.strip_pixels):
            top = torch.index_select(ab_wide, 1, i0[y0:y1])
            bottom = torch.index_select(ab_wide, 1, i1[y0:y1])
            ab_strip = torch.lerp(top, bottom, weight[y0:y1])  # (2, R, W)
            lab_to_srgb8_keep_lightness(lum[0, y0:y1], ab_strip, out[:, y0:y1], self.tables.srgb8)
        return out

    def _finish_batched(
        self, lightness: list[torch.Tensor], ab: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per photo L (1, H_i, W_i) + a*b* (B, 2, s, s) unscaled -> (3, H_i, W_i) uint8 each.

        Only the upsampling is per photo; the Lab -> 8-bit sRGB math runs once per group of
        photos (``pixel_groups``) on their pixels laid end to end.
        """
        sizes = [tuple(lum.shape[-2:]) for lum in lightness]
        results: list[torch.Tensor] = [torch.empty(0)] * len(sizes)
        for group in pixel_groups([h * w for h, w in sizes], self.strip_pixels):
            total = sum(sizes[i][0] * sizes[i][1] for i in group)
            lum = torch.cat([lightness[i].reshape(-1) for i in group])
            ab_full = torch.empty(2, total, device=self.device)
            out = torch.empty(3, total, dtype=torch.uint8, device=self.device)
            spans, offset = [], 0
            for i in group:
                height, width = sizes[i]
                end = offset + height * width
                up = F.interpolate(ab[i : i + 1], size=(height, width), mode="bilinear")
                ab_full[:, offset:end].view(2, height, width).copy_(up[0])
                spans.append((i, offset, end))
                offset = end
            lab_to_srgb8_keep_lightness(
                lum.view(1, total), ab_full.view(2, 1, total), out.view(3, 1, total),
                self.tables.srgb8,
            )  # fmt: skip
            for i, start, end in spans:
                results[i] = out[:, start:end].reshape(3, *sizes[i]).contiguous()
        return results

    @torch.inference_mode()
    def colorize(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """RGB (3, H_i, W_i) in [0, 1] -> colorized RGB at the same sizes (luminance kept)."""
        if not images:
            return []
        batch = self.prepare(images)
        return self.finish(batch, self.infer(batch))
