"""`colorizer tune-decoding`: choose the classification head's decoding on validation photos.

The classification head predicts a distribution over a*b* bins; how it becomes one color
is set by two numbers fixed at export: the annealed-mean ``temperature`` (Zhang et al.
2016) and the ``prior_correction`` (post-hoc logit adjustment against the training-time
class rebalancing, see ``training.ab_bins.adjust_for_prior``). This command runs the
network once per photo, decodes the cached logits with every candidate pair, scores each
with the same metrics as `colorizer evaluate` at the photo's original resolution, and
picks the highest PSNR gain among the pairs whose colorfulness ratio reaches the floor.

The choice is made and scored on the same photos, so its scores flatter it. The tuner
also reports a leave-one-out estimate (``held_out``): every photo scored with the decoding
chosen on all the other photos, as a new photo would be.

Writes OUT (JSON): every candidate's summary, the choice (which `colorizer export
--decoding OUT` applies) and the held-out estimate.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from serving.runtime.device import pick_device, pick_dtype
from serving.runtime.model_spec import ModelSpec, load_scripted
from serving.runtime.pipeline import ColorizePipeline
from training import recipe
from training.checkpoint import models_from_checkpoints
from training.evaluate import add_inference_options, image_metrics, photo_batches, summarize
from training.model import Network, decode_logits

MIN_COLORFULNESS_RATIO = recipe.MIN_COLORFULNESS_RATIO  # the default model's floor
DEFAULT_TEMPERATURES = (0.2, 0.3, 0.38, 0.5, 0.7, 1.0)
DEFAULT_CORRECTIONS = (-0.5, -0.25, 0.0, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Decoding:
    """One decoding setting of the classification head."""

    temperature: float
    prior_correction: float


class NoFeasibleDecoding(ValueError):
    """No candidate reached the colorfulness floor."""


def choose(rows: list[dict], min_colorfulness_ratio: float) -> dict:
    """The row with the highest psnr_gain among those with colorfulness_ratio >= the floor.

    ``rows``: summaries with keys temperature, prior_correction, psnr_gain,
    colorfulness_ratio. Raises NoFeasibleDecoding when none reaches the floor.
    """
    feasible = [r for r in rows if r["colorfulness_ratio"] >= min_colorfulness_ratio]
    if not feasible:
        best = max(r["colorfulness_ratio"] for r in rows)
        raise NoFeasibleDecoding(
            f"no decoding reaches colorfulness ratio {min_colorfulness_ratio} "
            f"(the most colorful candidate has {best:.3f}); try lower temperatures or "
            "negative prior corrections"
        )
    return max(feasible, key=lambda r: r["psnr_gain"])


def score_photos(
    model: Network | torch.jit.ScriptModule,
    data: str | Path,
    candidates: list[Decoding],
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 8,
    progress: bool = True,
    spec: ModelSpec = ModelSpec(),
) -> dict[Decoding, list[dict]]:
    """Every candidate's per-photo metrics (``image_metrics``) on the photos under ``data``,
    in the same photo order for each candidate.

    ``model``: a classification network, eager or exported (TorchScript); its own decoding
    settings are neither used nor changed. The network trunk runs once per batch; only the
    decoding (``decode_logits``) is repeated.
    """
    if not model.classify:
        raise ValueError("tune-decoding needs a classification-head checkpoint or model")
    # Not frozen: the network runs as ``model.head_output`` below, never as the pipeline's
    # forward, so a frozen copy (the default for a TorchScript file on CUDA) would be waste.
    pipeline = ColorizePipeline(model, spec, device, dtype, freeze=False)
    per_image: dict[Decoding, list[dict]] = {c: [] for c in candidates}
    for _, truths in photo_batches(data, batch_size, "tune", progress):
        batch = pipeline.prepare(truths)
        with torch.inference_mode():
            raw = model.head_output(batch.l_in, batch.gray_in)
            for cand in candidates:
                ab = decode_logits(
                    raw, model.class_weights, model.bin_centers, cand.prior_correction,
                    cand.temperature,
                ).float()  # fmt: skip
                for truth, colorized in zip(truths, pipeline.finish(batch, ab), strict=True):
                    per_image[cand].append(image_metrics(colorized, truth))
    return per_image


def summary_rows(per_image: dict[Decoding, list[dict]], dtype: torch.dtype) -> list[dict]:
    """One summary (``summarize``) per candidate, with its temperature and prior correction."""
    return [
        {"temperature": c.temperature, "prior_correction": c.prior_correction}
        | summarize(rows, dtype)
        for c, rows in per_image.items()
    ]


def leave_one_out(
    per_image: dict[Decoding, list[dict]], min_colorfulness_ratio: float, dtype: torch.dtype
) -> dict:
    """What the tuner's choice scores on photos it was not chosen on.

    For each photo i, ``choose`` picks a decoding on all photos but i; photo i is scored
    with that decoding. Returns the summary (``summarize``) of those scores, with the
    decodings picked and how many photos each scored. Raises NoFeasibleDecoding when some
    photo's left-out set has no decoding that reaches the floor, and ValueError with
    fewer than two photos.
    """
    count = len(next(iter(per_image.values()), []))
    if count < 2:
        raise ValueError(f"leave-one-out needs at least two photos, got {count}")
    held_out: list[dict] = []
    picked: Counter[Decoding] = Counter()
    for i in range(count):
        others = {c: rows[:i] + rows[i + 1 :] for c, rows in per_image.items()}
        choice = choose(summary_rows(others, dtype), min_colorfulness_ratio)
        decoding = Decoding(choice["temperature"], choice["prior_correction"])
        held_out.append(per_image[decoding][i])
        picked[decoding] += 1
    choices = [
        {"temperature": d.temperature, "prior_correction": d.prior_correction, "photos": n}
        for d, n in picked.most_common()
    ]
    return {"method": "leave-one-out"} | summarize(held_out, dtype) | {"choices": choices}


def read_choice(path: str | Path) -> Decoding:
    """The chosen setting from a file written by `colorizer tune-decoding`."""
    data = json.loads(Path(path).read_text())
    try:
        choice = data["choice"]
        return Decoding(float(choice["temperature"]), float(choice["prior_correction"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a tune-decoding result (no valid 'choice')") from exc


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune-decoding",
        description="Score every (temperature, prior correction) pair on DATA with the metrics "
        "of `colorizer evaluate`; choose the highest PSNR gain whose colorfulness ratio reaches "
        "--min-colorfulness-ratio; write all scores and the choice to --out (JSON).",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        nargs="*",
        help="classification checkpoint from `train`; several (trained with the same frozen "
        "backbone) are scored as one ensemble",
    )
    p.add_argument(
        "--model",
        type=Path,
        help="instead of checkpoints: an exported classification model (`colorizer export`), "
        "e.g. to re-score a shipped file; its own decoding is ignored",
    )
    p.add_argument("--data", type=Path, required=True, help="folder of validation photos")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument(
        "--temperatures",
        type=_floats,
        default=DEFAULT_TEMPERATURES,
        help="comma-separated annealed-mean temperatures, each > 0",
    )
    p.add_argument(
        "--corrections",
        type=_floats,
        default=DEFAULT_CORRECTIONS,
        help="comma-separated prior corrections (0 keeps the rebalancing, 1 undoes it); "
        "write --corrections=-0.5,0 when the list starts with a minus sign",
    )
    p.add_argument(
        "--min-colorfulness-ratio",
        type=float,
        default=MIN_COLORFULNESS_RATIO,
        help=f"floor on colorfulness / ground truth's (default {MIN_COLORFULNESS_RATIO})",
    )
    add_inference_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if any(t <= 0 for t in args.temperatures):
        raise ValueError(f"temperatures must be > 0, got {args.temperatures}")
    if bool(args.checkpoint) == bool(args.model):
        raise ValueError("give classification checkpoints or --model FILE.pt (one of the two)")
    device = pick_device(args.device)
    if args.model:
        model, spec = load_scripted(args.model)
        source: dict = {"model": str(args.model)}
    else:
        model, spec = models_from_checkpoints(args.checkpoint), ModelSpec()
        paths = [str(c) for c in args.checkpoint]
        source = {"checkpoint": paths[0] if len(paths) == 1 else paths}
    candidates = [Decoding(t, c) for t in args.temperatures for c in args.corrections]
    dtype = pick_dtype(device, args.precision)
    per_image = score_photos(
        model, args.data, candidates, device, dtype, args.batch_size, spec=spec
    )
    rows = summary_rows(per_image, dtype)
    print(f"{'temperature':>11} {'correction':>10} {'psnr_gain':>9} {'color_ratio':>11}")
    for r in rows:
        print(
            f"{r['temperature']:>11.3g} {r['prior_correction']:>10.3g} "
            f"{r['psnr_gain']:>9.3f} {r['colorfulness_ratio']:>11.3f}"
        )
    result = source | {"data": str(args.data)}
    result |= {"min_colorfulness_ratio": args.min_colorfulness_ratio, "rows": rows}
    try:
        result["choice"] = choose(rows, args.min_colorfulness_ratio)
        result["held_out"] = held_out_or_reason(per_image, args.min_colorfulness_ratio, dtype)
    finally:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    choice, held = result["choice"], result["held_out"]
    print(
        f"choice: temperature {choice['temperature']}, prior correction "
        f"{choice['prior_correction']}: PSNR gain {choice['psnr_gain']:.3f} dB, "
        f"colorfulness ratio {choice['colorfulness_ratio']:.3f}; wrote {args.out}"
    )
    if "error" in held:
        print(f"held out (leave-one-out): not estimated: {held['error']}")
    else:
        print(
            f"held out (leave-one-out, each photo decoded as chosen on the other "
            f"{held['images'] - 1}): PSNR gain {held['psnr_gain']:.3f} dB, colorfulness ratio "
            f"{held['colorfulness_ratio']:.3f}"
        )
    return 0


def held_out_or_reason(
    per_image: dict[Decoding, list[dict]], min_colorfulness_ratio: float, dtype: torch.dtype
) -> dict:
    """``leave_one_out``, or {"method", "error"} saying why it could not be estimated."""
    try:
        return leave_one_out(per_image, min_colorfulness_ratio, dtype)
    except ValueError as exc:  # NoFeasibleDecoding included
        return {"method": "leave-one-out", "error": str(exc)}
