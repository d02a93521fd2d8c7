"""`python -m training.experiments.test_time`: what test-time views would add to an exported model.

The service runs the network once per photo, on the whole photo squashed to 224x224. This
measures, on a folder of photos and with the metrics of `colorizer evaluate`, what other
ways to run the same exported classification network would score, and what they cost in
network runs:

- ``whole``: the service's path (one run).
- ``flip``: the whole photo and its mirror image, logits averaged (two runs).
- ``crops``: square crops along the long side, so nothing is squashed (training crops
  have aspect ratios 3/4 to 4/3; a 3:2 photo squashed to a square is outside that). Each
  crop's logits land on a canvas with the photo's aspect ratio, blended across the
  overlaps (``ceil(aspect)`` runs; one for photos within ``SQUARE_ENOUGH`` of square).
- ``whole+crops``: both, averaged on the canvas.
- ``whole+crops+flip``: all of the above and their mirror images.

Logits are averaged (a geometric mean of the bin distributions, as ``ColorizerEnsemble``
pools), then decoded like the model does (``decode_logits``). Each view is scored over a
grid of prior corrections at the model's temperature; the best PSNR gain whose colorfulness
ratio reaches the floor is reported for each view, as `colorizer tune-decoding` chooses.
This measures; the service does not run these views.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from serving.runtime.model_spec import ModelSpec, load_scripted
from serving.runtime.pipeline import ColorizePipeline, compose, model_inputs
from training import recipe
from training.decoding import Decoding, NoFeasibleDecoding, choose, summary_rows
from training.evaluate import image_metrics, photo_batches
from training.model import decode_logits

SQUARE_ENOUGH = 1.15  # photos with aspect ratio below this get no crops (the whole view)
RAMP_FRACTION = 0.25  # each crop's weight ramps over this fraction of its side at both ends
CORRECTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
MIN_COLORFULNESS_RATIO = recipe.MIN_COLORFULNESS_RATIO


def crop_starts(long_side: int, short_side: int) -> list[int]:
    """Offsets along the long side of the square crops (side ``short_side``) covering it,
    first and last flush with the ends; [0] when the photo is nearly square."""
    if long_side < SQUARE_ENOUGH * short_side:
        return [0]
    count = math.ceil(long_side / short_side)
    return [round(i * (long_side - short_side) / (count - 1)) for i in range(count)]


def crop_weight(size: int) -> torch.Tensor:
    """(size,) float32 blending weight along a crop: 1 in the middle, ramping down to a
    small positive value at both ends over ``RAMP_FRACTION`` of the side."""
    weight = torch.ones(size)
    ramp = max(1, int(size * RAMP_FRACTION))
    weight[:ramp] = torch.linspace(0.05, 1.0, ramp)
    weight[size - ramp :] = torch.linspace(1.0, 0.05, ramp)
    return weight


PARTS = {  # the (view kind, mirrored) parts each view averages
    "whole": (("whole", False),),
    "flip": (("whole", False), ("whole", True)),
    "crops": (("crops", False),),
    "whole+crops": (("whole", False), ("crops", False)),
    "whole+crops+flip": (("whole", False), ("crops", False), ("whole", True), ("crops", True)),
}
VIEWS = tuple(PARTS)


class Views:
    """The head output of each view of one photo, on one canvas.

    ``run(l, gray)``: the network's head output for (1, 1, S, S) and (1, 1, G, G) inputs
    -> (1, Q, h, h). ``lightness``: the photo's L, (1, H, W) in [0, 100]. Logits of a photo
    of aspect ratio a land on a (Q, h, round(h a)) canvas, or its transpose for a portrait
    photo. Each part is computed once per photo; ``runs(view)`` counts the distinct network
    runs a view needs on its own (a nearly square photo's crops are its whole view).
    """

    def __init__(self, run: Callable, lightness: torch.Tensor, spec: ModelSpec) -> None:
        self.run, self.lightness, self.spec = run, lightness, spec
        # part -> (logits, the network runs it took, named by input and mirroring)
        self._parts: dict[tuple[str, bool], tuple[torch.Tensor, frozenset]] = {}

    def _head(self, lightness: torch.Tensor, flip: bool) -> torch.Tensor:
        """(Q, h, h) head output for L (1, h_i, w_i), mirrored in and back out if ``flip``."""
        if flip:
            lightness = lightness.flip(-1)
        l_in, gray_in = model_inputs(lightness, self.spec)
        out = self.run(l_in[None], gray_in[None])[0].float()
        return out.flip(-1) if flip else out

    def part(self, kind: str, flip: bool) -> torch.Tensor:
        """(Q, h, w) logits of one part: the whole photo squashed as the service does, or
        the square crops along its long side blended on the canvas."""
        key = (kind, flip)
        if key not in self._parts:
            self._parts[key] = self._whole(flip) if kind == "whole" else self._crops(flip)
        return self._parts[key][0]

    def runs(self, view: str) -> int:
        """Distinct network runs of ``view``'s parts (computed by ``logits``)."""
        return len(frozenset().union(*(self._parts[key][1] for key in PARTS[view])))

    def _whole(self, flip: bool) -> tuple[torch.Tensor, frozenset]:
        return self._head(self.lightness, flip), frozenset({("whole", flip)})

    def _crops(self, flip: bool) -> tuple[torch.Tensor, frozenset]:
        _, height, width = self.lightness.shape
        wide = width >= height
        long_side, short_side = max(height, width), min(height, width)
        starts = crop_starts(long_side, short_side)
        if len(starts) == 1:
            self.part("whole", flip)
            return self._parts[("whole", flip)]
        side = self.part("whole", False).shape[-1]
        canvas_long = round(side * long_side / short_side)
        total = torch.zeros(self.part("whole", False).shape[0], side, canvas_long)
        weights = torch.zeros(side, canvas_long)
        for start in starts:
            end = start + short_side
            crop = self.lightness[:, :, start:end] if wide else self.lightness[:, start:end, :]
            out = self._head(crop, flip)  # (Q, side, side), the crop's own orientation
            if not wide:
                out = out.transpose(1, 2)  # into the canvas's (wide) coordinates
            begin = round(start * side / short_side)
            span = min(side, canvas_long - begin)
            weight = crop_weight(side)[None, :span].expand(side, span)
            total[:, :, begin : begin + span] += out[:, :, :span] * weight
            weights[:, begin : begin + span] += weight
        pooled = total / weights
        runs = frozenset(("crop", start, flip) for start in starts)
        return (pooled if wide else pooled.transpose(1, 2)), runs

    def logits(self, view: str) -> torch.Tensor:
        """(Q, h, w) logits of ``view`` (one of ``VIEWS``): its parts' mean on the canvas of
        its largest part."""
        if view not in PARTS:
            raise ValueError(f"unknown view {view!r}; one of {', '.join(VIEWS)}")
        parts = [self.part(kind, flip) for kind, flip in PARTS[view]]
        canvas = max((p.shape[-2:] for p in parts), key=lambda s: s[0] * s[1])
        return torch.stack(
            [F.interpolate(p[None], size=canvas, mode="bilinear")[0] if p.shape[-2:] != canvas
             else p for p in parts]
        ).mean(0)  # fmt: skip


def measure(
    path: str | Path,
    data: str | Path,
    views: tuple[str, ...] = VIEWS,
    corrections: tuple[float, ...] = CORRECTIONS,
    min_colorfulness_ratio: float = MIN_COLORFULNESS_RATIO,
    progress: bool = True,
) -> list[dict]:
    """One row per view: network runs per photo, every correction's summary, and the best
    one reaching the colorfulness floor (``choice``; None when none does). fp32, CPU."""
    module, spec = load_scripted(path)
    if not module.classify:
        raise ValueError(f"{path} has a regression head; test-time views pool bin logits")
    pipeline = ColorizePipeline(module, spec, torch.device("cpu"), torch.float32)
    decodings = [Decoding(module.temperature, c) for c in corrections]
    per_image = {v: {d: [] for d in decodings} for v in views}
    runs = dict.fromkeys(views, 0)
    photos = 0
    for _, truths in photo_batches(data, 1, "views", progress):
        truth = truths[0]
        lightness = pipeline.prepare([truth]).lightness[0]
        photo = Views(_runner(module), lightness, spec)
        for name in views:
            logits = photo.logits(name)[None]
            runs[name] += photo.runs(name)
            for d in decodings:
                ab = decode_logits(logits, module.class_weights, module.bin_centers,
                                   d.prior_correction, d.temperature)[0]  # fmt: skip
                per_image[name][d].append(image_metrics(compose(lightness, ab, spec), truth))
        photos += 1
    rows = []
    for name in views:
        summaries = summary_rows(per_image[name], torch.float32)
        try:
            choice = choose(summaries, min_colorfulness_ratio)
        except NoFeasibleDecoding:
            choice = None
        rows.append(
            {"view": name, "runs_per_photo": runs[name] / photos, "rows": summaries}
            | {"choice": choice}
        )
    return rows


def _runner(module: torch.jit.ScriptModule) -> Callable:
    def run(l_in: torch.Tensor, gray_in: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module.head_output(l_in, gray_in)

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.experiments.test_time", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", type=Path, required=True, help="exported classification model")
    p.add_argument("--data", type=Path, required=True, help="folder of photos")
    p.add_argument(
        "--views", default=",".join(VIEWS), help=f"comma-separated, of {', '.join(VIEWS)}"
    )
    p.add_argument(
        "--min-colorfulness-ratio", type=float, default=MIN_COLORFULNESS_RATIO,
        help=f"floor for each view's best correction (default {MIN_COLORFULNESS_RATIO})",
    )  # fmt: skip
    args = p.parse_args(argv)
    views = tuple(v.strip() for v in args.views.split(",") if v.strip())
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        p.error(f"unknown views {unknown}; choose from {', '.join(VIEWS)}")
    rows = measure(args.model, args.data, views, min_colorfulness_ratio=args.min_colorfulness_ratio)
    floor = args.min_colorfulness_ratio
    print(
        f"{'view':>17} {'runs/photo':>10}  best PSNR gain at colorfulness >= {floor} (correction)"
    )
    base = rows[0]["choice"]
    for row in rows:
        choice = row["choice"]
        if choice is None:
            text = "no correction reaches the floor"
        else:
            gain, ratio = choice["psnr_gain"], choice["colorfulness_ratio"]
            text = f"{gain:+.3f} dB at {ratio:.3f} ({choice['prior_correction']})"
            if base is not None and row is not rows[0]:
                text += f", {choice['psnr_gain'] - base['psnr_gain']:+.3f} dB vs {rows[0]['view']}"
        print(f"{row['view']:>17} {row['runs_per_photo']:>10.2f}  {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
