"""The shipped default's recipe, in one place: `make default-model` runs it, the tuner's
colorfulness floor defaults to it, and the sweep tooling (training/experiments/) starts
from it.

    python -m training.recipe args    # the `colorizer train` options, shell-quoted
    python -m training.recipe floor   # the colorfulness floor the decoding is tuned at
    python -m training.recipe input-size  # the side (px) the exported default runs at
"""

from __future__ import annotations

import argparse
import shlex
import sys

TRAIN_PHOTOS = "training/datasets/photos/train"
VAL_PHOTOS = "training/datasets/photos/val"

# The decoding is tuned to reach this colorfulness ratio (colorfulness / the truth's) on val:
# issue #13's floor (model card, "Why these choices").
MIN_COLORFULNESS_RATIO = 0.60

# `colorizer train` options of each member (model_store/default/MODEL_CARD.md, "Reproduce").
DEFAULT_RECIPE: tuple[str, ...] = (
    "--data", TRAIN_PHOTOS, "--val-data", VAL_PHOTOS,
    "--preset", "compact", "--head", "classification", "--rebalance-mix", "0.8",
    "--backbone-weights", "efficientnet-lite0", "--fuse-stage", "4",
    "--backbone-lr-scale", "0.1", "--backbone-bn", "frozen",
    "--epochs", "60", "--lr-schedule", "cosine", "--batch-size", "16", "--lr", "1e-3",
    "--seed", "0", "--workers", "1",
)  # fmt: skip
# The exported default runs at this side instead of the 224 it trained at: 0.62 of the
# compute, at no measurable loss on val (model card, "Input size").
INPUT_SIZE = 176

# The second member trains against Zhang et al.'s soft targets instead of the nearest bin.
SOFT_MEMBER: tuple[str, ...] = ("--target-bins", "5")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.recipe", description=__doc__)
    p.add_argument("what", choices=("args", "floor", "input-size"))
    args = p.parse_args(argv)
    answers = {
        "args": shlex.join(DEFAULT_RECIPE),
        "floor": MIN_COLORFULNESS_RATIO,
        "input-size": INPUT_SIZE,
    }
    print(answers[args.what])
    return 0


if __name__ == "__main__":
    sys.exit(main())
