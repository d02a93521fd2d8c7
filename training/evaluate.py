"""`colorizer evaluate`: colorize every photo of a folder at its ORIGINAL resolution with the
service's own pipeline, and report PSNR (vs the gray baseline), colorfulness and L fidelity.

Writes REPORT_DIR/metrics.json, REPORT_DIR/per_image.jsonl and REPORT_DIR/grid.png
(rows of gray | colorized | ground truth). With ``--against OTHER_REPORT_DIR`` also
REPORT_DIR/paired.json: this model's PSNR minus the other report's, photo by photo, with
its standard error: whether a change (another file, another input size) moved quality by
more than the photos' own spread.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from serving.runtime.colorspace import lab_to_rgb, rgb_to_lab
from serving.runtime.constants import PRECISIONS
from serving.runtime.imageio import decode_image, to_uint8_hwc
from serving.runtime.pipeline import ColorizePipeline
from training.data import find_images

PSNR_CAP_DB = 100.0
GRID_THUMB_HEIGHT = 192


def quantize(rgb: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float [0, 1] -> the same rounded to 8-bit levels (what the service returns)."""
    return (rgb.clamp(0, 1) * 255).round() / 255


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of two RGB images in [0, 1] (capped at 100 dB for identical images)."""
    mse = float(F.mse_loss(pred, target))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(1.0 / mse))


def colorfulness(rgb: torch.Tensor) -> float:
    """Hasler & Suesstrunk (2003) colorfulness of (3, H, W) RGB in [0, 1], on the 0-255 scale."""
    r, g, b = (rgb * 255.0).double().unbind(0)
    rg, yb = r - g, 0.5 * (r + g) - b
    sigma = math.sqrt(float(rg.std(correction=0)) ** 2 + float(yb.std(correction=0)) ** 2)
    mu = math.sqrt(float(rg.mean()) ** 2 + float(yb.mean()) ** 2)
    return sigma + 0.3 * mu


def gray_baseline(rgb: torch.Tensor) -> torch.Tensor:
    """The a* = b* = 0 image with the same L, (3, H, W) in [0, 1]."""
    lab = rgb_to_lab(rgb)
    lab[1:] = 0
    return lab_to_rgb(lab)


def image_metrics(colorized: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    out = quantize(colorized)
    gray = quantize(gray_baseline(truth))
    return {
        "psnr": psnr(out, truth),
        "psnr_gray": psnr(gray, truth),
        "colorfulness": colorfulness(out),
        "colorfulness_gt": colorfulness(truth),
        "l_mae": float((rgb_to_lab(out)[0] - rgb_to_lab(truth)[0]).abs().mean()),
    }


def summarize(per_image: list[dict[str, float]], dtype: torch.dtype) -> dict:
    """Per-image metrics -> their means, psnr_gain, colorfulness_ratio and the precision."""
    keys = ("psnr", "psnr_gray", "colorfulness", "colorfulness_gt", "l_mae")
    summary: dict = {"images": len(per_image)}
    summary.update({k: sum(r[k] for r in per_image) / len(per_image) for k in keys})
    summary["psnr_gain"] = summary["psnr"] - summary["psnr_gray"]
    summary["colorfulness_ratio"] = summary["colorfulness"] / max(summary["colorfulness_gt"], 1e-9)
    summary["precision"] = str(dtype).removeprefix("torch.")
    return summary


def _thumb(rgb: torch.Tensor) -> Image.Image:
    img = Image.fromarray(to_uint8_hwc(rgb))
    width = max(1, round(img.width * GRID_THUMB_HEIGHT / img.height))
    return img.resize((width, GRID_THUMB_HEIGHT), Image.Resampling.LANCZOS)


def save_grid(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], path: Path) -> None:
    """Write rows of gray | colorized | ground truth thumbnails as one PNG."""
    thumbs = [[_thumb(x) for x in row] for row in rows]
    gap = 4
    width = max(sum(t.width for t in row) + gap * 2 for row in thumbs)
    grid = Image.new("RGB", (width, len(thumbs) * (GRID_THUMB_HEIGHT + gap)), "white")
    for i, row in enumerate(thumbs):
        x = 0
        for t in row:
            grid.paste(t, (x, i * (GRID_THUMB_HEIGHT + gap)))
            x += t.width + gap
    grid.save(path)


def photo_batches(
    data: str | Path, batch_size: int, desc: str, progress: bool = True
) -> Iterator[tuple[list[Path], list[torch.Tensor]]]:
    """Every photo under ``data``, in batches: (paths, RGB (3, H_i, W_i) float [0, 1]).

    Photos keep their full size (no pixel limit). Raises ValueError when there are none.
    """
    files = find_images(data)
    if not files:
        raise ValueError(f"no photos under {data}")
    for start in tqdm(range(0, len(files), batch_size), desc=desc, disable=not progress):
        chunk = files[start : start + batch_size]
        yield chunk, [decode_image(p.read_bytes(), max_pixels=10**9).rgb for p in chunk]


def evaluate(
    pipeline: ColorizePipeline,
    data: str | Path,
    out: str | Path,
    batch_size: int = 8,
    grid_rows: int = 12,
    progress: bool = True,
) -> dict:
    """Evaluate every photo under ``data``; write the report into ``out``; return the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_image, grid = [], []
    for chunk, truths in photo_batches(data, batch_size, "evaluate", progress):
        for path, truth, colorized in zip(chunk, truths, pipeline.colorize(truths), strict=True):
            per_image.append({"file": path.name, **image_metrics(colorized, truth)})
            if len(grid) < grid_rows:
                grid.append((quantize(gray_baseline(truth)), quantize(colorized), truth))
    summary = summarize(per_image, pipeline.dtype)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "per_image.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in per_image)
    save_grid(grid, out / "grid.png")
    return summary


def read_per_image(report: str | Path) -> dict[str, dict[str, float]]:
    """A report folder's per_image.jsonl as {file name: its metrics}."""
    path = Path(report) / "per_image.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a folder `colorizer evaluate` wrote")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["file"]: row for row in rows}


def paired_difference(
    per_image: dict[str, dict[str, float]], other: dict[str, dict[str, float]]
) -> dict[str, float]:
    """PSNR (dB) of ``per_image`` minus ``other``'s on each photo both scored: mean,
    standard error of the mean, photos better / worse, and the colorfulness ratio's change
    (mean colorfulness over mean truth colorfulness, as ``summarize`` computes it).

    Raises ValueError when the two share fewer than two photos (by file name).
    """
    shared = sorted(set(per_image) & set(other))
    if len(shared) < 2:
        raise ValueError(
            f"the reports share {len(shared)} photo(s) by file name; compare two reports of "
            "the same folder"
        )
    diffs = [per_image[f]["psnr"] - other[f]["psnr"] for f in shared]

    truth = sum(other[f]["colorfulness_gt"] for f in shared)

    def ratio(rows: dict[str, dict[str, float]]) -> float:
        return sum(rows[f]["colorfulness"] for f in shared) / truth

    return {
        "images": len(shared),
        "psnr_diff_mean": statistics.fmean(diffs),
        "psnr_diff_sem": statistics.stdev(diffs) / math.sqrt(len(diffs)),
        "better": sum(d > 0 for d in diffs),
        "worse": sum(d < 0 for d in diffs),
        # None where every photo's truth is gray (no ratio to compare)
        "colorfulness_ratio_diff": ratio(per_image) - ratio(other) if truth > 0 else None,
    }


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        description="Colorize every photo of DATA at its original resolution with the service's "
        "pipeline; write REPORT_DIR/metrics.json (images, psnr, psnr_gray, colorfulness, "
        "colorfulness_gt, l_mae), per_image.jsonl and grid.png (gray | colorized | truth).",
    )
    p.add_argument("--model", type=Path, required=True, help="TorchScript file from `export`")
    p.add_argument("--data", type=Path, required=True, help="folder of color photos")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--grid-rows", type=int, default=12, help="photos shown in grid.png")
    p.add_argument(
        "--against",
        type=Path,
        help="another report folder of the same photos: also write paired.json, this "
        "model's PSNR minus that one's photo by photo (mean, standard error, better/worse)",
    )
    add_inference_options(p)
    p.set_defaults(func=run)


def add_inference_options(p: argparse.ArgumentParser) -> None:
    """--batch-size, --device and --precision, as evaluate and tune-decoding take them."""
    p.add_argument("--batch-size", type=int, default=8, help="photos per network batch")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: evaluate measures it at load as the service does (the fastest precision "
        "that gives fp32's colors); tune-decoding takes bf16 on CUDA or an AMX CPU, else fp32",
    )


def run(args: argparse.Namespace) -> int:
    other = read_per_image(args.against) if args.against else None  # refuse before the work
    pipeline = ColorizePipeline.load(args.model, device=args.device, precision=args.precision)
    summary = evaluate(pipeline, args.data, args.out, args.batch_size, args.grid_rows)
    print(json.dumps(summary, indent=2))
    if other is not None:
        paired = paired_difference(read_per_image(args.out), other)
        (args.out / "paired.json").write_text(json.dumps(paired, indent=2) + "\n")
        print(
            f"against {args.against}: PSNR {paired['psnr_diff_mean']:+.3f} dB "
            f"(standard error {paired['psnr_diff_sem']:.3f}) over {paired['images']} photos, "
            f"{paired['better']} better, {paired['worse']} worse; colorfulness ratio "
            f"{paired['colorfulness_ratio_diff'] or 0:+.3f}"
        )
    return 0
