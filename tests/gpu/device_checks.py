"""Every GPU check of issue #11 in one run, results as JSON under ``--out``.

On a lent H100/H200 (see run_device_checks.sh, which also sets up what that machine lacks):

    python3 -m tests.gpu.device_checks --out "$OUT"

Here, as a dry run of the same code on the CPU (small sizes, few repeats):

    .venv/bin/python -m tests.gpu.device_checks --device cpu --quick --out runs/device-dry

1. Environment: torch, torchvision, the card, whether nvJPEG is used, whether the shipped
   TorchScript loads there (a file saved by torch 2.14 may not load on the device's older
   torch; then a random-init network of the same preset is exported there and used for
   timing, and the JSON says so).
2. The network alone at batch 1/16/64 (the served dtype, channels_last), as loaded and
   frozen for inference (``torch.jit.freeze`` + ``optimize_for_inference``).
3. The whole in-process pipeline on ~0.25 MP gray JPEGs at the same batches, JPEG and PNG
   out, along two paths measured in the same run:
   - ``served``: what the handler does now (``serving.benchmark.colorize_batch``: nvJPEG
     decode onto the GPU, per-pixel work once per batch, nvJPEG encode);
   - ``per_photo``: what it did before (Pillow decode, per-photo row strips, Pillow encode);
   each with its ratio to the network alone at the same batch, and per-stage times.
4. Faded color JPEGs at batch 64, and 1 MP / 12 MP photos one at a time (the 150 ms goal).
5. Several processes sharing the GPU (TorchServe's workers per GPU), each running the served
   path: aggregate images/s, to choose the gpu profile.
6. The CUDA tests (tests/gpu and the CUDA case of tests/unit/test_pixels_equivalence.py), as
   JUnit XML.
7. ``colorizer pipeline-bench`` per size (0.25, 1, 12 MP): per-stage ms and peak GPU memory.
8. ``served``: TorchServe serving the shipped archive (gpu profile) over REST and gRPC at
   16, 64 and 256 in flight, each against the in-process pipeline at the same batch size
   (3.). Needs Java and TorchServe, which the lent machine lacks: tests/gpu/stage_server.py
   brings them in parts.

The shipped file loads on the lent machine's torch 2.11 since its inference layout
(issue #26); the JSON names it by its sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from serving.benchmark import STAGES, colorize_batch, gray_jpeg
from serving.runtime import nvjpeg
from serving.runtime.device import sync
from serving.runtime.imageio import decode_image, encode_image
from serving.runtime.pipeline import ColorizePipeline

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "model_store" / "default" / "colorizer.pt"
BATCHES = (1, 16, 64, 256)
SERVED_IN_FLIGHT = (16, 64, 256)
SIDE = 512  # ~0.25 MP, the photo size
PROCESSES = (1, 2, 4)


def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        info["torchvision"] = None
    info["nvjpeg"] = nvjpeg.usable(device)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["cpu"] = _cpu_name()
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.machine()


# The networks to time. A TorchScript file does not load on an older torch (the lent machine's
# torch 2.11 lacks an op that 2.14's scripted F.interpolate refers to), so besides the shipped
# file, random-init networks of the same shapes are exported there: speed does not depend
# on the weights.
STAND_INS = {
    # The shipped default's shapes (Makefile default-model; model_store/default/MODEL_CARD.md).
    "default-arch": dict(preset="compact", head="classification",
                         backbone="tf_efficientnet_lite0", embed_size=224, fuse_stage=4),
    # The paper's network (Inception-ResNet-v2 embedding): the 2,750 img/s reference.
    "full": dict(preset="full"),
}  # fmt: skip


def model_file(name: str, workdir: Path) -> tuple[Path | None, str]:
    """-> (TorchScript file, what it is); (None, why) when the shipped file does not load."""
    if name == "shipped":
        digest = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
        try:
            torch.jit.load(str(SHIPPED), map_location="cpu")
            return SHIPPED, f"shipped default, sha256 {digest}"
        except Exception as exc:  # a TorchScript file from a newer torch
            return None, f"shipped file did not load ({type(exc).__name__}: {str(exc)[:160]})"
    from training.export import export
    from training.model import Colorizer, preset

    settings = dict(STAND_INS[name])
    torch.manual_seed(0)
    path = workdir / f"{name}.pt"
    export(Colorizer(preset(settings.pop("preset"), **settings)), path)
    return path, f"random-init {name} network exported here: {STAND_INS[name]}"


def timed(fn, device: torch.device, repeats: int, warmups: int = 2) -> float:
    """Median seconds of ``fn()`` after ``warmups`` calls."""
    for _ in range(warmups):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def network_alone(pipeline: ColorizePipeline, module, batch: int, repeats: int) -> float:
    """Images per second of ``module`` on random inputs already on the device."""
    spec, device = pipeline.spec, pipeline.device
    to = dict(device=device, dtype=pipeline.dtype, memory_format=torch.channels_last)
    l_in = (torch.rand(batch, 1, spec.l_size, spec.l_size) * 2 - 1).to(**to)
    gray = (torch.rand(batch, 1, spec.gray_size, spec.gray_size) * 2 - 1).to(**to)

    @torch.inference_mode()
    def run() -> None:
        module(l_in, gray)

    return batch / timed(run, device, repeats, warmups=3)


def network_graphed(pipeline: ColorizePipeline, batch: int, repeats: int) -> float:
    """Images per second of the served module replayed as one CUDA graph (issue #26's
    first direction: the fixed-size network without per-kernel launch gaps)."""
    spec, device = pipeline.spec, pipeline.device
    to = dict(device=device, dtype=pipeline.dtype, memory_format=torch.channels_last)
    l_in = (torch.rand(batch, 1, spec.l_size, spec.l_size) * 2 - 1).to(**to)
    gray = (torch.rand(batch, 1, spec.gray_size, spec.gray_size) * 2 - 1).to(**to)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(3):  # warm up (and let the profiling executor settle) off the graph
            pipeline.module(l_in, gray)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        pipeline.module(l_in, gray)
    return batch / timed(graph.replay, device, repeats, warmups=3)


def max_difference(pipeline: ColorizePipeline, other) -> float:
    """Largest |pipeline.module - other| over a random batch (the pipeline's dtype)."""
    spec, device = pipeline.spec, pipeline.device
    to = dict(device=device, dtype=pipeline.dtype, memory_format=torch.channels_last)
    l_in = (torch.rand(4, 1, spec.l_size, spec.l_size) * 2 - 1).to(**to)
    gray = (torch.rand(4, 1, spec.gray_size, spec.gray_size) * 2 - 1).to(**to)
    with torch.inference_mode():
        for _ in range(3):  # past the profiling executor's first runs
            a, b = pipeline.module(l_in, gray).float(), other(l_in, gray).float()
    return float((a - b).abs().max())


def per_photo_batch(pipeline: ColorizePipeline, datas: list[bytes], fmt: str, marks: list):
    """The handler's path before issue #11: Pillow decode, per-photo row strips, copy back,
    Pillow encode (``pipeline`` built with ``batched_pixels=False``)."""
    images = [decode_image(d, 10**9) for d in datas]
    marks.append(time.perf_counter())
    batch = pipeline.prepare(images)
    sync(pipeline.device)
    marks.append(time.perf_counter())
    ab = pipeline.infer(batch)
    sync(pipeline.device)
    marks.append(time.perf_counter())
    rgb = pipeline.finish_uint8(batch, ab)
    marks.append(time.perf_counter())
    for out, image in zip(rgb, images, strict=True):
        encode_image(out, image.alpha, fmt, 90)
    marks.append(time.perf_counter())


def whole(pipeline: ColorizePipeline, path: str, datas: list[bytes], fmt: str, repeats: int):
    """-> (images/s of one batch along ``path``, median ms per stage)."""
    stages: dict[str, list[float]] = {}

    def run() -> None:
        marks = [time.perf_counter()]
        if path == "served":
            colorize_batch(pipeline, datas, fmt, 90, marks)
        else:
            per_photo_batch(pipeline, datas, fmt, marks)
        for name, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True):
            stages.setdefault(name, []).append((b - a) * 1e3)

    seconds = timed(run, pipeline.device, repeats)
    return len(datas) / seconds, {k: round(statistics.median(v), 2) for k, v in stages.items()}


def _process_worker(model: str, device: str, precision: str, batch: int, seconds: float, ready, go):
    """One process like one TorchServe worker: load, warm up, then colorize batches of the
    same photos for ``seconds`` once every process is ready; -> (images, start, end)."""
    pipeline = ColorizePipeline.load(model, device, precision)
    datas = [gray_jpeg(SIDE, SIDE, seed=i) for i in range(batch)]
    for _ in range(3):
        colorize_batch(pipeline, datas)
    ready.wait()
    go.wait()
    start = time.perf_counter()
    images = 0
    while time.perf_counter() - start < seconds:
        colorize_batch(pipeline, datas)
        images += batch
    return images, start, time.perf_counter()


def shared_gpu(model: Path, args: argparse.Namespace, processes: int, batch: int) -> dict:
    """Images/s of ``processes`` served-path loops sharing the device, all started together."""
    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    ready, go = manager.Barrier(processes + 1), manager.Barrier(processes + 1)
    work = (str(model), args.device, args.precision, batch, args.seconds, ready, go)
    with ctx.Pool(processes) as pool:
        pending = pool.starmap_async(_process_worker, [work] * processes)
        ready.wait(timeout=300)
        go.wait(timeout=60)
        spans = pending.get(timeout=300)
    images = sum(n for n, _, _ in spans)
    elapsed = max(e for _, _, e in spans) - min(s for _, s, _ in spans)
    return {"processes": processes, "batch": batch, "img_s": round(images / elapsed, 1)}


def run_pytest(out: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
           "tests/gpu", "tests/unit/test_pixels_equivalence.py",
           f"--junitxml={out / 'gpu-tests.xml'}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    (out / "gpu-tests.log").write_text(done.stdout + done.stderr)
    return {
        "returncode": done.returncode,
        "summary": (done.stdout.strip().splitlines() or [""])[-1],
    }


def run_pipeline_bench(args: argparse.Namespace, model: Path) -> dict:
    target = args.out / "pipeline-bench.json"
    cmd = [sys.executable, "-m", "serving.cli", "pipeline-bench", "--device", args.device,
           "--sizes", args.sizes, "--repeats", "3", "--parallel", "0",
           "--reference-max-mp", "0", "--model", str(model), "--json", str(target)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    (args.out / "pipeline-bench.log").write_text(done.stdout + done.stderr)
    return {"returncode": done.returncode, "json": target.name}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON and logs")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--quick", action="store_true", help="small batches and sizes (dry run)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=6.0, help="per shared-GPU measurement")
    p.add_argument("--skip", default="", help="comma-separated sections to skip")
    names = ", ".join(STAND_INS)
    p.add_argument("--models", default="shipped,default-arch,full",
                   help=f"networks to time: shipped and/or the stand-ins {names}")  # fmt: skip
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    quick = args.quick
    batches = (1, 4) if quick else BATCHES
    args.sizes = "0.25,1" if quick else "0.25,1,12"
    skip = set(args.skip.split(","))
    results: dict = {"environment": environment(device), "errors": {}, "models": {}}
    target = args.out / "device_checks.json"

    def section(name: str, fn, into: dict | None = None, field: str | None = None) -> None:
        """Run one section; keep going on failure; write the JSON after each."""
        if name in skip or (field or name) in skip:
            return
        start = time.perf_counter()
        try:
            (results if into is None else into)[field or name] = fn()
        except Exception:
            results["errors"][name] = traceback.format_exc()[-3000:]
            print(f"section {name} failed:\n{results['errors'][name]}", flush=True)
        print(f"section {name}: {time.perf_counter() - start:.1f} s", flush=True)
        target.write_text(json.dumps(results, indent=1))

    section("routing", lambda: routing(device))
    chosen = None  # the first network that loads: the shipped one, else its shapes
    for name in args.models.split(","):
        model, note = model_file(name, Path(tempfile.mkdtemp()))
        found = results["models"].setdefault(name, {"model": note})
        if model is not None:
            chosen = chosen or model

            def sink(field: str, fn, found=found, name=name) -> None:
                section(f"{name}/{field}", fn, into=found, field=field)

            measure_model(model, found, args, batches, sink)
    section("shared_gpu", lambda: shared_gpu_rows(chosen, args, batches, quick))
    section("gpu_tests", lambda: run_pytest(args.out))
    section("pipeline_bench", lambda: run_pipeline_bench(args, chosen))
    in_process = results["models"].get("shipped", {}).get("pipeline_512px", [])
    section("served", lambda: served_rows(chosen, args, in_process))
    print_summary(results)
    return 0 if not results["errors"] else 1


def measure_model(model: Path, results: dict, args, batches, sink) -> None:
    """Network alone, the whole pipeline before/now, 1 and 12 MP photos, for one network."""
    device = torch.device(args.device)
    pipes = {  # now, and as the handler ran before issue #11 (not frozen, per-photo work)
        "served": ColorizePipeline.load(model, device, args.precision),
        "per_photo": ColorizePipeline.load(
            model, device, args.precision, batched_pixels=False, freeze=False
        ),
    }
    results["dtype"] = str(pipes["served"].dtype).removeprefix("torch.")
    photos = [gray_jpeg(SIDE, SIDE, seed=i) for i in range(max(batches))]

    def networks() -> dict:
        """The served (frozen on CUDA) module and the module as exported, same inputs."""
        served, exported = pipes["served"], pipes["per_photo"]
        rows = []
        for batch in batches:
            now = network_alone(served, served.module, batch, args.repeats)
            before = network_alone(served, exported.module, batch, args.repeats)
            row = {"batch": batch, "loaded_img_s": round(now, 1),
                   "exported_img_s": round(before, 1)}  # fmt: skip
            if device.type == "cuda":
                try:
                    row["cuda_graph_img_s"] = round(network_graphed(served, batch, args.repeats), 1)
                except Exception as exc:  # not every scripted graph can be captured
                    row["cuda_graph_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            rows.append(row)
        return {"rows": rows, "served_frozen": served.frozen,
                "max_abs_diff": max_difference(served, exported.module)}  # fmt: skip

    sink("network", networks)
    net = {r["batch"]: r["loaded_img_s"] for r in results.get("network", {}).get("rows", [])}

    def pipelines() -> list:
        rows = []
        for batch in batches:
            for fmt in ("jpeg", "png") if batch == batches[0] else ("jpeg",):
                for path, pipeline in pipes.items():
                    img_s, stages = whole(pipeline, path, photos[:batch], fmt, args.repeats)
                    ratio = round(img_s / net[batch], 3) if net else None
                    rows.append({"batch": batch, "format": fmt, "path": path,
                                 "img_s": round(img_s, 1), "stage_ms": stages,
                                 "over_network": ratio})  # fmt: skip
        return rows

    sink("pipeline_512px", pipelines)

    def faded_color() -> dict:
        batch = max(batches)
        datas = [gray_jpeg(SIDE, SIDE, seed=i, color=True) for i in range(batch)]
        img_s, stages = whole(pipes["served"], "served", datas, "jpeg", args.repeats)
        return {"batch": batch, "img_s": round(img_s, 1), "stage_ms": stages}

    sink("faded_color_512px", faded_color)

    def large() -> list:
        rows = []
        for width, height in ((1155, 866), (4000, 3000)) if not args.quick else ((1155, 866),):
            data = gray_jpeg(width, height)
            for path, pipeline in pipes.items():
                img_s, stages = whole(pipeline, path, [data], "jpeg", 3)
                rows.append({"size": f"{width}x{height}", "path": path,
                             "ms": round(1e3 / img_s, 1), "stage_ms": stages})  # fmt: skip
        return rows

    sink("large_photos", large)
    pipes.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def served_rows(model: Path, args, in_process: list[dict]) -> dict:
    """A real TorchServe on this machine serving ``model`` (gpu profile; cpu for a dry run),
    REST and gRPC at each in-flight count, against the in-process pipeline at that batch."""
    import shutil

    from serving.benchmark import served_throughput
    from serving.cli import main as cli
    from serving.launcher.archive import build_archive
    from tests.support.torchserve import serve_argv

    if shutil.which("java") is None:
        raise RuntimeError("no java on PATH: stage TorchServe with tests/gpu/stage_server.py")
    root = Path(tempfile.mkdtemp())
    profile = "gpu" if args.device.startswith("cuda") else "cpu"
    build_archive(model, root / "store", profile=profile)
    argv = serve_argv(root / "store", root / "state")
    url = f"http://127.0.0.1:{argv[argv.index('--http-port') + 1]}"
    grpc_target = f"127.0.0.1:{argv[argv.index('--grpc-port') + 1]}"
    if cli(argv) != 0:
        raise RuntimeError(f"colorizer serve failed; logs under {root / 'state'}")
    photo = gray_jpeg(SIDE, SIDE, seed=0)
    alone = {r["batch"]: r["img_s"] for r in in_process if r["path"] == "served"}
    rows = []
    try:
        for conc in (2, 4) if args.quick else SERVED_IN_FLIGHT:
            for protocol, target in (("rest", url), ("grpc", grpc_target)):
                requests = max(4 * conc, 64)
                img_s, _ = served_throughput(protocol, target, photo, requests, conc, None)
                base = alone.get(conc)
                ratio = round(img_s / base, 3) if base else None
                rows.append({"protocol": protocol, "in_flight": conc, "img_s": round(img_s, 1),
                             "in_process_img_s": base, "over_in_process": ratio})  # fmt: skip
                print(f"served {protocol} {conc} in flight: {img_s:.1f} img/s", flush=True)
    finally:
        cli(["stop", "--state-dir", str(root / "state")])
    return {"profile": profile, "size": SIDE, "rows": rows}


def routing(device: torch.device) -> dict:
    """Where each kind of photo is decoded and encoded on this device."""
    from serving.runtime.imageio import decode_images, encode_images

    datas = {"gray_jpeg": gray_jpeg(64, 48), "color_jpeg": gray_jpeg(64, 48, color=True)}
    decoded = decode_images(list(datas.values()), 10**8, device)
    found = {k: str(i.pixels_tensor().device) for k, i in zip(datas, decoded, strict=True)}
    rgb = torch.zeros(3, 48, 64, dtype=torch.uint8, device=device) + 99
    (jpeg,) = encode_images([rgb], [None], ["jpeg"], [90])
    found["encoded_jpeg_bytes"] = len(jpeg) if isinstance(jpeg, bytes) else repr(jpeg)
    if nvjpeg.usable(device):  # any error nvJPEG raises, which decode_images would hide
        for name, channels in (("gray_jpeg", 1), ("color_jpeg", 3)):
            try:
                nvjpeg.decode([datas[name]], channels, device)
            except Exception as exc:
                found[f"{name}_nvjpeg_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return found


def shared_gpu_rows(model: Path, args, batches, quick: bool) -> list:
    counts = (1, 2) if quick else PROCESSES
    rows = [shared_gpu(model, args, n, max(batches)) for n in counts]
    return rows + ([] if quick else [shared_gpu(model, args, 4, 16)])


def print_summary(results: dict) -> None:
    print(json.dumps(results["environment"]))
    print("routing:", results.get("routing"))
    for name, found in results["models"].items():
        print(f"== {name}: {found['model'][:150]} ({found.get('dtype', '?')})")
        for r in found.get("network", {}).get("rows", []):
            graphed = r.get("cuda_graph_img_s", r.get("cuda_graph_error"))
            print(f"network batch {r['batch']:>3}: {r['loaded_img_s']:>8} img/s as served "
                  f"({r['exported_img_s']} as exported, {graphed} as a CUDA graph)")  # fmt: skip
        print(f"{'batch':>5} {'fmt':>4} {'path':>9} {'img/s':>8} {'/network':>9}  stage ms")
        for r in found.get("pipeline_512px", []):
            print(f"{r['batch']:>5} {r['format']:>4} {r['path']:>9} {r['img_s']:>8} "
                  f"{r['over_network']!s:>9}  {r['stage_ms']}")  # fmt: skip
        if "faded_color_512px" in found:
            print("faded color:", found["faded_color_512px"])
        for r in found.get("large_photos", []):
            print(f"{r['size']:>10} {r['path']:>9} {r['ms']:>8} ms  {r['stage_ms']}")
    for r in results.get("shared_gpu", []):
        print(f"{r['processes']} processes x batch {r['batch']}: {r['img_s']} img/s")
    for r in results.get("served", {}).get("rows", []):
        print(
            f"served {r['protocol']:>4} {r['in_flight']:>3} in flight: {r['img_s']:>8} img/s, "
            f"in-process at that batch {r['in_process_img_s']}, ratio {r['over_in_process']}"
        )
    print("gpu tests:", results.get("gpu_tests"))
    print("pipeline-bench:", results.get("pipeline_bench"))
    print("errors in:", list(results["errors"]) or "none")


if __name__ == "__main__":
    sys.exit(main())
