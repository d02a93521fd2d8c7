"""Every GPU check of issue #11 in one run, results as JSON under ``--out``.

On a lent H100/H200 (see run_device_checks.sh, which also sets up what that machine lacks):

    python3 -m tests.gpu.device_checks --out "$OUT"

Here, as a dry run of the same code on the CPU (small sizes, few repeats):

    .venv/bin/python -m tests.gpu.device_checks --device cpu --quick --out runs/device-dry

1. Environment: torch, device name, whether the shipped TorchScript loads there (a file saved
   by torch 2.14 may not load on the device's older torch; then a random-init network of the
   same preset is exported there and used for timing, and the JSON says so).
2. The network alone at batch 1/16/64 (the served dtype, channels_last).
3. The whole in-process pipeline at the same batches on ~0.25 MP gray JPEGs (decode ->
   prepare -> network -> finish_uint8 -> encode), JPEG and PNG out, with the ratio to the
   network alone; then `colorizer pipeline-bench` per size (0.25, 1, 12 MP) for per-stage
   milliseconds and memory.
4. The CUDA tests (tests/gpu: the handler on CUDA with batches, a 12 MP photo, a bad photo in
   a batch; CUDA vs CPU outputs), as JUnit XML.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from serving.benchmark import gray_jpeg
from serving.runtime.imageio import decode_image, encode_image
from serving.runtime.pipeline import ColorizePipeline

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "model_store" / "default" / "colorizer.pt"
BATCHES = (1, 16, 64)


def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def load_model(
    device: torch.device, precision: str, workdir: Path
) -> tuple[ColorizePipeline, dict]:
    """The shipped model, or (when this torch cannot load it) a random-init stand-in."""
    try:
        return ColorizePipeline.load(SHIPPED, device, precision), {"model": "shipped default"}
    except Exception as exc:  # a TorchScript file from a newer torch
        from tests.support.models import export_test_model

        stand_in = export_test_model(workdir / "compact.pt", "compact")
        note = f"shipped file did not load here ({type(exc).__name__}: {str(exc)[:200]}); "
        note += "timed a random-init compact network exported on this machine"
        return ColorizePipeline.load(stand_in, device, precision), {"model": note}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` after two warm-up calls."""
    for _ in range(2):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def network_alone(pipeline: ColorizePipeline, batch: int, repeats: int) -> float:
    """Images per second of the network on random inputs already on the device."""
    spec, device = pipeline.spec, pipeline.device
    to = dict(device=device, dtype=pipeline.dtype, memory_format=torch.channels_last)
    l_in = (torch.rand(batch, 1, spec.l_size, spec.l_size) * 2 - 1).to(**to)
    gray = (torch.rand(batch, 1, spec.gray_size, spec.gray_size) * 2 - 1).to(**to)

    @torch.inference_mode()
    def run() -> None:
        pipeline.module(l_in, gray)

    return batch / timed(run, device, repeats)


def whole_pipeline(pipeline: ColorizePipeline, photos: list[bytes], fmt: str, repeats: int):
    """Images per second of decode -> prepare -> network -> finish_uint8 -> encode, and the
    median milliseconds of each stage for the batch."""
    device, stages = pipeline.device, {}

    def run() -> None:
        marks = [time.perf_counter()]
        images = [decode_image(p) for p in photos]
        marks.append(time.perf_counter())
        batch = pipeline.prepare(images)
        sync(device)
        marks.append(time.perf_counter())
        ab = pipeline.infer(batch)
        sync(device)
        marks.append(time.perf_counter())
        rgb = pipeline.finish_uint8(batch, ab)
        marks.append(time.perf_counter())
        for out, image in zip(rgb, images, strict=True):
            encode_image(out, image.alpha, fmt, 90)
        marks.append(time.perf_counter())
        names = ("decode", "prepare", "network", "finish", "encode")
        for name, a, b in zip(names, marks, marks[1:], strict=False):
            stages.setdefault(name, []).append((b - a) * 1e3)

    seconds = timed(run, device, repeats)
    return len(photos) / seconds, {k: round(statistics.median(v), 2) for k, v in stages.items()}


def run_pytest(out: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu",
           f"--junitxml={out / 'gpu-tests.xml'}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    (out / "gpu-tests.log").write_text(done.stdout + done.stderr)
    return {
        "returncode": done.returncode,
        "summary": (done.stdout.strip().splitlines() or [""])[-1],
    }


def run_pipeline_bench(args: argparse.Namespace, model: Path | None) -> dict:
    target = args.out / "pipeline-bench.json"
    cmd = [sys.executable, "-m", "serving.cli", "pipeline-bench", "--device", args.device,
           "--sizes", args.sizes, "--repeats", str(args.repeats), "--parallel", "0",
           "--json", str(target)]  # fmt: skip
    if model is not None:
        cmd += ["--model", str(model)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    (args.out / "pipeline-bench.log").write_text(done.stdout + done.stderr)
    return {"returncode": done.returncode, "json": target.name}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON and logs")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--quick", action="store_true", help="batches 1,4 and small sizes (dry run)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    batches = (1, 4) if args.quick else BATCHES
    args.sizes = "0.25,1" if args.quick else "0.25,1,12"
    results: dict = {"environment": environment(device)}
    pipeline, results["model"] = load_model(device, args.precision, args.out)
    results["dtype"] = str(pipeline.dtype).removeprefix("torch.")
    photos = [gray_jpeg(512, 512, seed=i) for i in range(max(batches))]
    rows = []
    for batch in batches:
        net = network_alone(pipeline, batch, args.repeats)
        for fmt in ("jpeg", "png"):
            whole, stages = whole_pipeline(pipeline, photos[:batch], fmt, args.repeats)
            rows.append({"batch": batch, "format": fmt, "network_img_s": round(net, 1),
                         "pipeline_img_s": round(whole, 1), "ratio": round(whole / net, 3),
                         "stage_ms": stages})  # fmt: skip
    results["batches_512px"] = rows
    shipped_loaded = results["model"]["model"] == "shipped default"
    results["pipeline_bench"] = run_pipeline_bench(
        args, None if shipped_loaded else args.out / "compact.pt"
    )
    results["gpu_tests"] = run_pytest(args.out)
    (args.out / "device_checks.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["environment"]), results["model"]["model"][:120], sep="\n")
    print(f"{'batch':>5} {'fmt':>4} {'network/s':>10} {'pipeline/s':>11} {'ratio':>6}")
    for r in rows:
        print(f"{r['batch']:>5} {r['format']:>4} {r['network_img_s']:>10} "
              f"{r['pipeline_img_s']:>11} {r['ratio']:>6}")  # fmt: skip
    print("pipeline-bench rc", results["pipeline_bench"]["returncode"])
    print("gpu tests:", results["gpu_tests"]["summary"])
    return 0 if results["gpu_tests"]["returncode"] in (0, 5) else 1


if __name__ == "__main__":
    sys.exit(main())
