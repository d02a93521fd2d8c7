"""`colorizer synth`: a learnable synthetic colorization task.

Each image is a textured background with a textured shape on it. The texture
class of a region fixes its hue (a*, b*), so color is a deterministic function of
what the gray image shows *where it shows it*. As in real photos, color varies
more smoothly than luminance: the a*b* map is blurred across region borders
(``AB_BLUR_SIGMA``) while L keeps its sharp edges. A correct pipeline
learns it; one with L/ab misaligned, flipped, wrongly scaled, or with a broken
fusion/export cannot.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from serving.runtime.colorspace import lab_to_rgb

# Texture class -> (a*, b*): chroma 28 at four well-separated hue angles.
CHROMA = 28.0
HUE_DEGREES = (30.0, 120.0, 210.0, 300.0)
CLASS_AB = tuple(
    (CHROMA * math.cos(math.radians(h)), CHROMA * math.sin(math.radians(h))) for h in HUE_DEGREES
)
PERIOD = 16  # texture period in pixels (survives the resize to 224)
SIZE_RANGE = (192, 320)
L_RANGE = (40.0, 65.0)
TEXTURE_AMPLITUDE = 12.0
AB_BLUR_SIGMA = 6.0  # pixels; about the network's a*b* resolution at these sizes


def texture(cls: int, height: int, width: int) -> np.ndarray:
    """Texture (H, W) float in [-1, 1]: 0 flat, 1 horizontal, 2 vertical stripes, 3 checker."""
    yy, xx = np.mgrid[0:height, 0:width]
    horizontal = np.sign(np.sin(2 * np.pi * (yy + 0.5) / PERIOD))
    vertical = np.sign(np.sin(2 * np.pi * (xx + 0.5) / PERIOD))
    patterns = (np.zeros((height, width)), horizontal, vertical, horizontal * vertical)
    return patterns[cls].astype(np.float32)


def shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random ellipse or rectangle covering roughly 10-35% of the image, (H, W) bool."""
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.2, 0.35) * height, rng.uniform(0.2, 0.35) * width
    if rng.random() < 0.5:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)


def make_image(rng: np.random.Generator) -> np.ndarray:
    """One synthetic color image, (H, W, 3) uint8 sRGB."""
    height, width = (int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1)) for _ in range(2))
    classes = rng.permutation(len(CLASS_AB))
    label = np.full((height, width), classes[0])
    label[shape_mask(rng, height, width)] = classes[1]
    lightness = np.zeros((height, width), np.float32)
    a = np.zeros_like(lightness)
    b = np.zeros_like(lightness)
    for cls in np.unique(label):
        region = label == cls
        base = rng.uniform(*L_RANGE)
        lightness[region] = (base + TEXTURE_AMPLITUDE * texture(cls, height, width))[region]
        a[region], b[region] = CLASS_AB[cls]
    ab = torch.from_numpy(np.stack((a, b)))
    kernel = 2 * int(3 * AB_BLUR_SIGMA) + 1
    ab = gaussian_blur(ab, [kernel, kernel], [AB_BLUR_SIGMA, AB_BLUR_SIGMA])
    lab = torch.cat((torch.from_numpy(lightness)[None], ab))
    rgb = lab_to_rgb(lab)
    return (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def write_dataset(out: str | Path, count: int, seed: int = 0) -> list[Path]:
    """Write ``count`` PNG images to ``out``; deterministic for a given seed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = out / f"synth_{seed}_{i:05d}.png"
        Image.fromarray(make_image(rng)).save(path)
        paths.append(path)
    return paths


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        description="Write COUNT PNG images whose colors are a deterministic function of the "
        "texture each region shows (four texture classes, four hues). A correct pipeline "
        "learns it to high PSNR; a broken one cannot.",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to write the images into")
    p.add_argument("--count", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise ValueError("--count must be at least 1")
    paths = write_dataset(args.out, args.count, args.seed)
    print(f"wrote {len(paths)} images to {args.out}")
    return 0
