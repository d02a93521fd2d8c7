"""`colorizer train-bench`: training-step throughput in fp32 vs bf16 on this machine.

Both precisions run in alternating rounds within one process, so the printed ratio
holds even on a noisy machine; absolute images/s are for the record only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from serving.runtime.device import pick_dtype
from serving.runtime.model_spec import ModelSpec
from training.export import random_inputs
from training.model import PRESETS, Colorizer, preset
from training.train import HeadOutput, train_step


def step_rate(model: Colorizer, dtype: torch.dtype, batch: int, steps: int) -> float:
    """Images/s of ``steps`` Adam steps on random inputs (B, 1, 224/299) in ``dtype`` autocast."""
    view = HeadOutput(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    l_in, gray = random_inputs(ModelSpec(), batch, seed=0)
    data = (l_in, gray, torch.zeros(batch, 2, 224, 224))
    device = torch.device("cpu")
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, view, optimizer, data, device, dtype)
    return batch * steps / (time.perf_counter() - start)


def benchmark(preset_name: str, batch: int, steps: int, rounds: int) -> dict:
    """Alternate fp32 and bf16 rounds (after one warm-up each); median images/s and ratio."""
    torch.manual_seed(0)
    model = Colorizer(preset(preset_name)).to(memory_format=torch.channels_last).train()
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rates: dict[str, list[float]] = {name: [] for name in dtypes}
    for dtype in dtypes.values():
        step_rate(model, dtype, batch, 1)  # warm-up
    for _ in range(rounds):
        for name, dtype in dtypes.items():
            rates[name].append(step_rate(model, dtype, batch, steps))
    median = {name: statistics.median(r) for name, r in rates.items()}
    return {
        "preset": preset_name,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "auto_precision": str(pick_dtype(torch.device("cpu"))).removeprefix("torch."),
        "fp32_img_s": median["fp32"],
        "bf16_img_s": median["bf16"],
        "bf16_over_fp32": median["bf16"] / median["fp32"],
        "rounds": rates,
    }


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-bench",
        description="Time Adam steps of the network on random inputs, alternating fp32 and "
        "bf16 autocast rounds, and print median images/s and the bf16/fp32 ratio.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="compact", help="network size")
    p.add_argument("--batch-size", type=int, default=16, help="images per step")
    p.add_argument("--steps", type=int, default=3, help="steps per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds per precision")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = benchmark(args.preset, args.batch_size, args.steps, args.rounds)
    print(json.dumps(result, indent=2))
    return 0
