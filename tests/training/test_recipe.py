"""The default's recipe is written once (training/recipe.py): `make default-model`, the
tuner's floor and the sweep tooling all read it."""

from __future__ import annotations

import argparse
import subprocess

from tests.support.paths import REPO
from training import decoding, recipe
from training.experiments import device_sweep
from training.options import add_options, config_from_args
from training.train import TrainConfig


def train_config(args: list[str]):
    """``colorizer train``'s config for ``args``, parsed by its own options."""
    parser = argparse.ArgumentParser()
    add_options(parser, TrainConfig)
    return config_from_args(TrainConfig, parser.parse_args(args))


def test_the_sweeps_default_recipe_is_the_shipped_one():
    """fuse4-finetune-s0 (the sweep base plus its overrides) trains exactly the recipe."""
    swept = [*device_sweep.BASE, *device_sweep.RECIPES["fuse4-finetune-s0"]]
    data = ["--data", recipe.TRAIN_PHOTOS, "--val-data", recipe.VAL_PHOTOS, "--workers", "1"]
    assert train_config([*data, *swept]) == train_config(list(recipe.DEFAULT_RECIPE))
    soft = [*device_sweep.BASE, *device_sweep.RECIPES["fuse4-finetune-soft5-s0"]]
    both = [*recipe.DEFAULT_RECIPE, *recipe.SOFT_MEMBER]
    assert train_config([*data, *soft]) == train_config(both)


def test_every_floor_is_the_recipe_s():
    assert decoding.MIN_COLORFULNESS_RATIO == recipe.MIN_COLORFULNESS_RATIO
    assert device_sweep.MIN_COLORFULNESS == recipe.MIN_COLORFULNESS_RATIO


def test_make_default_model_runs_the_recipe():
    """The Makefile target's commands, as make would run them (-n: print, run nothing)."""
    printed = subprocess.run(
        ["make", "-n", "default-model", "PY=python3"], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert printed.count("-m training.recipe args") == 2
    assert "--min-colorfulness-ratio $(python3 -m training.recipe floor)" in printed
