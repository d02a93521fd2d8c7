"""`colorizer pipeline-bench`: where a request's time and memory go, as ratios from one run.

1. In-process pipeline, per photo size (default 0.25, 1, 12 and 40 MP; synthetic gray
   JPEG, JPEG out): milliseconds per stage (decode, prepare, network, finish, encode) and
   peak RSS growth (CUDA: peak allocated GPU memory too). Each size runs in a fresh
   subprocess, so one size's freed memory never hides the next one's peak. With
   ``--reference-max-mp`` the whole-image float path (the pipeline before row strips and
   8-bit tables: float RGB from decode, full-resolution Lab, ``finish``) runs beside it on
   the same photos, and the ratios reference / new come from the same run.
2. In-process throughput at 512x512 with ``--parallel`` pipelines at once (one process
   each, ``--threads`` torch threads): what the cores can do without a server.
3. With ``--served``: a running service's throughput over REST and gRPC at each
   ``--concurrency`` on the same photo, and served / in-process (in-process measured
   before and after the served runs; their mean).
4. With ``--server-state`` (the state folder of a `colorizer serve` on this machine): the
   same ratio from CPU time instead of wall time. On C dedicated cores a run takes at
   least (CPU seconds of all processes) / C and at least the busiest single-threaded
   worker's CPU seconds; images over that bound is what the server (or the in-process
   pipelines) would reach on dedicated cores. A profile that leaves a worker idle shows
   in it; the load other users put on a shared machine mostly does not.

With ``--baseline-model`` every size also runs another exported file (e.g. an earlier
default, in its earlier configuration: ``--baseline-precision fp32 --baseline-freeze no``),
each size's two runs back to back, and prints baseline / new per stage. Each row also
gives the network's achieved GFLOP/s (FLOPs counted once per file with
``torch.utils.flop_counter``).

With ``--write-doc FILE`` (serving/BENCHMARKS.md) the run's tables also go into FILE as this
machine's section, between ``<!-- bench:BEGIN KEY -->`` and ``<!-- bench:END KEY -->``: the
same machine's earlier section is replaced in place, a new machine's is appended after the
last generated section, and the rest of FILE is kept byte for byte. Its heading names the
machine (CPU model, cores, AMX; or the CUDA device), torch version and date; the line under
it, the command.

Timings on a shared machine are noisy: read the ratios, which come from one run.
Run it with the threads the server uses, e.g. ``OMP_NUM_THREADS=1 colorizer pipeline-bench``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from serving.runtime.constants import PRECISIONS
from serving.runtime.constants import STAGES as SERVICE_STAGES

DEFAULT_MODEL = Path("model_store/default/colorizer.pt")
DEFAULT_SIZES = (0.25, 1.0, 12.0, 40.0)
# The report's names for constants.STAGES (decode, preprocess, inference, postprocess, encode).
STAGES = ("decode", "prepare", "network", "finish", "encode")
SERVED_SIZE = 512
GIB = 1 << 30
# --write-doc: each machine's generated section sits between these two lines (KEY: Machine.key).
DOC_BEGIN = "<!-- bench:BEGIN {key} -->"
DOC_END = "<!-- bench:END {key} -->"
# Environment the recorded command line starts with, where set: it changes the timings.
COMMAND_ENV = ("OMP_NUM_THREADS",)
CPUINFO = Path("/proc/cpuinfo")


def photo_shape(megapixels: float) -> tuple[int, int]:
    """(width, height) of a 4:3 photo of about ``megapixels`` (1 MP -> 1155x866; 0.25 and 1 MP
    are square as in the issue: 512x512, 1024x1024)."""
    if megapixels <= 1.05:
        side = round((megapixels * 1e6) ** 0.5 / 64) * 64
        return side, side
    width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    return width, round(width * 3 / 4)


def gray_jpeg(width: int, height: int, seed: int = 0, color: bool = False) -> bytes:
    """A synthetic gray (or faded color) JPEG, quality 90, that compresses like a photo,
    built row block by row block so a 40 MP one costs the benchmark little memory."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.new("RGB" if color else "L", (width, height))
    xx = np.arange(width, dtype=np.float32)[None] / width
    for y0 in range(0, height, 512):
        yy = np.arange(y0, min(y0 + 512, height), dtype=np.float32)[:, None] / height
        rows = 0.45 + 0.35 * np.sin(8 * xx * yy + 3 * xx) + rng.normal(0, 0.02, (len(yy), width))
        if color:  # a faded tint that varies across the photo
            rows = np.stack((rows, rows * (0.9 + 0.1 * xx), rows * (0.8 + 0.2 * yy)), axis=-1)
        block = Image.fromarray((np.clip(rows, 0, 1) * 255).astype(np.uint8))
        img.paste(block, (0, y0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# --- One size in a fresh process ------------------------------------------------------


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (VmHWM); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def colorize_batch(pipeline, datas: list[bytes], fmt: str = "jpeg", quality: int = 90, marks=None):
    """The served request path for one batch (``serving.runtime.service.colorize_requests``,
    what the handler runs), without TorchServe -> bytes per photo.

    ``marks``: a list holding the start time; it gets one more ``time.perf_counter()``-based
    mark per stage (decode, prepare, network, finish, encode), each stage's device work
    finished. Raises RuntimeError when a photo fails.
    """
    from serving.runtime.service import PhotoRequest, colorize_requests

    requests = [PhotoRequest(data, format=fmt, quality=str(quality)) for data in datas]
    report = colorize_requests(pipeline, requests, 10**9)
    failed = [answer for answer in report.answers if answer.status != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} photo(s) failed: {failed[0].body[:300]!r}")
    if marks is not None:
        for stage in SERVICE_STAGES:
            marks.append(marks[-1] + report.seconds[stage])
    return [answer.body for answer in report.answers]


def _run_once(pipeline, data: bytes, path: str, sync) -> dict[str, float]:
    """Colorize ``data`` once along ``path`` ("new" or "reference"); seconds per stage."""
    from PIL import Image

    from serving.runtime.imageio import decode_image, to_uint8_hwc

    if path == "new":
        marks = [time.perf_counter()]
        colorize_batch(pipeline, [data], marks=marks)
        times = {stage: b - a for stage, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}
        times["whole"] = marks[-1] - marks[0]
        return times
    times = {}  # the whole-image float path, as before the row strips
    start = time.perf_counter()
    source = decode_image(data, max_pixels=10**9).rgb
    times["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    batch = pipeline.prepare([source])
    del source
    sync()
    times["prepare"] = time.perf_counter() - start
    start = time.perf_counter()
    ab = pipeline.infer(batch)
    sync()
    times["network"] = time.perf_counter() - start
    start = time.perf_counter()
    (pixels,) = pipeline.finish(batch, ab)
    del batch
    sync()
    times["finish"] = time.perf_counter() - start
    start = time.perf_counter()
    # float (3, H, W) -> (H, W, 3) uint8 -> Pillow
    Image.fromarray(to_uint8_hwc(pixels)).save(io.BytesIO(), format="JPEG", quality=90)
    times["encode"] = time.perf_counter() - start
    times["whole"] = sum(times[s] for s in STAGES)
    return times


def network_flops(model: Path, device) -> float:
    """FLOPs of one forward of the exported network at batch 1 (fp32, not frozen)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from serving.runtime.model_spec import load_scripted

    module, spec = load_scripted(model, device)
    l_in = torch.zeros(1, 1, spec.l_size, spec.l_size, device=device)
    gray = torch.zeros(1, 1, spec.gray_size, spec.gray_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(l_in, gray)
    return float(counter.get_total_flops())


FREEZE = {"auto": None, "yes": True, "no": False}


def measure_size(args: argparse.Namespace) -> dict:
    """Child process: one photo size along one path; -> medians, peak memory."""
    import torch

    from serving.runtime.device import sync as device_sync
    from serving.runtime.pipeline import ColorizePipeline

    torch.set_num_threads(args.threads)
    pipeline = ColorizePipeline.load(
        args.model, args.device, args.precision, freeze=FREEZE[args.freeze]
    )
    cuda = pipeline.device.type == "cuda"

    def sync() -> None:
        device_sync(pipeline.device)

    data = Path(args.photo).read_bytes()
    warm = gray_jpeg(320, 240, seed=1)
    for _ in range(2):  # TorchScript specializes on its second call
        _run_once(pipeline, warm, args.path, sync)
    if cuda:
        torch.cuda.reset_peak_memory_stats(pipeline.device)
    base = _rss_bytes("VmRSS")
    reset = _reset_peak_rss()
    runs = [_run_once(pipeline, data, args.path, sync)]
    peak = _rss_bytes("VmHWM") if reset else 0
    for _ in range(args.repeats - 1):
        runs.append(_run_once(pipeline, data, args.path, sync))
    result = {
        "path": args.path,
        "model": str(args.model),
        "device": str(pipeline.device),
        "dtype": str(pipeline.dtype).removeprefix("torch."),
        "frozen": pipeline.frozen,
        "threads": torch.get_num_threads(),
        "ms": {k: 1e3 * statistics.median(r[k] for r in runs) for k in (*STAGES, "whole")},
        "peak_rss_growth_bytes": peak - base if reset else None,
        "network_gflop": network_flops(args.model, pipeline.device) / 1e9,
    }
    if cuda:
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(pipeline.device)
    return result


def _child(args: argparse.Namespace, photo: Path, path: str, baseline: bool = False) -> dict:
    model, precision, freeze = (
        (args.baseline_model, args.baseline_precision, args.baseline_freeze)
        if baseline
        else (args.model, args.precision, args.freeze)
    )
    cmd = [
        sys.executable,
        "-m",
        "serving.benchmark",
        "--child",
        "--photo",
        str(photo),
        "--path",
        path,
        "--model",
        str(model),
        "--device",
        args.device,
        "--precision",
        precision,
        "--freeze",
        freeze,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if baseline:
        result["path"] = "baseline"
    return result


# --- Throughput: in-process pipelines and a served model ---------------------------------


def _pipeline_worker(model: str, device: str, precision: str, threads: int, data: bytes, n: int):
    """One in-process pipeline colorizing ``data`` ``n`` times after warm-up; -> (start, end)."""
    import torch

    from serving.runtime.pipeline import ColorizePipeline

    torch.set_num_threads(threads)
    pipeline = ColorizePipeline.load(model, device, precision)

    def once() -> None:
        colorize_batch(pipeline, [data])

    for _ in range(3):
        once()
    start, cpu = time.time(), time.process_time()
    for _ in range(n):
        once()
    return start, time.time(), time.process_time() - cpu


def times_faster(new_ms: dict[str, float], other_ms: dict[str, float]) -> dict[str, float]:
    """Per stage and for the whole request: the other file's milliseconds over the new one's
    (above 1: the new one is faster). Issue #33's speed goal reads ``whole`` >= 3."""
    return {k: other_ms[k] / new_ms[k] for k in (*STAGES, "whole")}


def served_over_in_process(served_img_s: float, in_process_img_s: float) -> float:
    """Served throughput over the in-process pipelines' (``results["in_process_img_s"]``,
    the mean of the runs before and after the served ones: the load of a shared machine
    drifts). Issue #33's served goal reads it >= 0.9."""
    return served_img_s / in_process_img_s


def in_process_throughput(args: argparse.Namespace, data: bytes) -> tuple[float, float, float]:
    """(images/s of ``--parallel`` pipelines in separate processes on the same photo, the
    images/s they would reach on dedicated cores from their CPU time, as for a server,
    their CPU ms per image)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    work = (str(args.model), args.device, args.precision, args.threads, data, args.requests)
    with ctx.Pool(args.parallel) as pool:
        spans = pool.starmap(_pipeline_worker, [work] * args.parallel)
    # Count only the time all of them ran together-ish: first start to last end.
    elapsed = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    images = args.parallel * args.requests
    cpu = [c for _, _, c in spans]
    dedicated = images / max(sum(cpu) / (os.cpu_count() or 1), max(cpu))
    return images / elapsed, dedicated, 1e3 * sum(cpu) / images


# Who spends a served photo's CPU time: TorchServe's workers, the rest of TorchServe (its
# Java frontend and launcher), and the front before it (serving/front/).
ROLES = ("worker", "torchserve", "front-http", "front-grpc")


def process_role(cmdline: str, front: str | None = None) -> str:
    """The ``ROLES`` entry of a server process: ``front`` (the front process's name, for
    the processes `colorizer serve` started before TorchServe) or, under TorchServe, a
    worker or the rest."""
    if front is not None:
        return front
    return "worker" if "model_service_worker" in cmdline else "torchserve"


def server_cpu_seconds(state_dir: Path | None) -> dict[int, tuple[str, float]] | None:
    """CPU seconds used so far by each process of the server `colorizer serve --state-dir`
    started (TorchServe, its workers, and the front's processes with their children):
    pid -> (role, seconds), role one of ``ROLES``; None without a state folder."""
    if state_dir is None:
        return None
    import psutil

    data = json.loads((state_dir / "server.json").read_text())
    roots = [(data["launcher_pid"], None)]
    roots += [(front["pid"], front["name"]) for front in data.get("front", [])]
    used = {}
    for pid, front in roots:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                times = proc.cpu_times()
                role = process_role(" ".join(proc.cmdline()), front)
            except psutil.NoSuchProcess:
                continue
            used[proc.pid] = (role, times.user + times.system)
    return used


def cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds each role spent between two ``server_cpu_seconds`` readings (a process
    that started in between counts from 0); every role of ``ROLES`` is present."""
    spent = dict.fromkeys(ROLES, 0.0)
    for pid, (role, seconds) in after.items():
        spent[role] = spent.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return spent


def dedicated_cores_img_s(before: dict, after: dict, images: int) -> tuple[float, float]:
    """(server CPU seconds per image, images/s the server would reach on dedicated cores).

    On ``os.cpu_count()`` dedicated cores the run takes at least the server's CPU time over
    the cores, and at least the busiest single-threaded worker's CPU time: a profile that
    leaves one worker idle shows here as well as in wall time, and a shared machine's load
    does not.
    """
    spent = {pid: after[pid][1] - before.get(pid, ("", 0.0))[1] for pid in after}
    total = sum(spent.values())
    busiest = max((spent[pid] for pid in after if after[pid][0] == "worker"), default=0.0)
    return total / images, images / max(total / (os.cpu_count() or 1), busiest)


def served_throughput(
    protocol: str, target: str, data: bytes, requests: int, conc: int, state_dir: Path | None
) -> tuple[float, dict | None]:
    """-> (images/s of a running service with ``conc`` in flight (JPEG out), None without
    ``state_dir``, else {"dedicated": ``dedicated_cores_img_s``, "cpu_ms_per_img": CPU ms
    per image of each role (``cpu_by_role``) and of this load generator ("client")}).
    """
    from serving.client.sdk import ColorizerClient

    url, grpc_target = (target, None) if protocol == "rest" else (None, target)
    with ColorizerClient(url, grpc_target, pool_size=conc) as client:
        with ThreadPoolExecutor(max_workers=conc) as pool:
            list(pool.map(lambda _: client.colorize(data, "jpeg"), range(2 * conc)))  # warm
            cpu, client_cpu = server_cpu_seconds(state_dir), time.process_time()
            start = time.perf_counter()
            list(pool.map(lambda _: client.colorize(data, "jpeg"), range(requests)))
            elapsed = time.perf_counter() - start
            cpu_after, client_cpu = server_cpu_seconds(state_dir), time.process_time() - client_cpu
    if cpu is None:
        return requests / elapsed, None
    per_img = {role: 1e3 * s / requests for role, s in cpu_by_role(cpu, cpu_after).items()}
    per_img["client"] = 1e3 * client_cpu / requests
    return requests / elapsed, {
        "dedicated": dedicated_cores_img_s(cpu, cpu_after, requests),
        "cpu_ms_per_img": per_img,
    }


# --- Report ---------------------------------------------------------------------------


def _fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / GIB:.2f} GiB"


def report(results: dict) -> str:
    rows = [
        f"machine: {results['cpu']}, {results['cores']} cores, load {results['load']}; "
        f"device {results['device']} ({results['dtype']}), {results['threads']} torch thread(s)",
        "",
        "in-process pipeline, gray JPEG in, JPEG out (median ms; peak = RSS growth, 1st run)",
        f"{'photo':>16} {'path':>9} "
        + " ".join(f"{s:>8}" for s in (*STAGES, "whole"))
        + f" {'peak':>10} {'rest/net':>8} {'GFLOP/s':>8}",
    ]
    models = {run["path"]: run for size in results["sizes"] for run in size["runs"]}
    for path, run in models.items():
        rows.insert(
            1,
            f"{path:>9}: {run['model']} in {run['dtype']}"
            f"{', frozen' if run.get('frozen') else ''}, {run['network_gflop']:.2f} GFLOP "
            "per network forward",
        )
    for size in results["sizes"]:
        for run in size["runs"]:
            ms = run["ms"]
            rest = (ms["whole"] - ms["network"]) / ms["network"]
            gflops = run["network_gflop"] / (ms["network"] / 1e3)
            rows.append(
                f"{size['label']:>16} {run['path']:>9} "
                + " ".join(f"{ms[s]:8.0f}" for s in (*STAGES, "whole"))
                + f" {_fmt_bytes(run['peak_rss_growth_bytes']):>10} {rest:8.1f} {gflops:8.1f}"
            )
        if "baseline_over_new" in size:
            ratio = size["baseline_over_new"]
            rows.append(
                f"{'':>16} {'base/new':>9} "
                + " ".join(f"{ratio[s]:8.2f}" for s in (*STAGES, "whole"))
            )
        if "reference_over_new" in size:
            ratio = size["reference_over_new"]
            rows.append(
                f"{'':>16} {'ref/new':>9} "
                + " ".join(f"{ratio[s]:8.1f}" for s in (*STAGES, "whole"))
                + f" {ratio['peak']:10.1f}"
            )
    if "in_process_img_s" in results:
        rows += [
            "",
            f"{results['served_size']}x{results['served_size']} JPEG: "
            f"{results['parallel']} in-process pipelines: "
            f"{results['in_process_img_s']:.1f} img/s (before / after the served runs: "
            + " / ".join(f"{x:.1f}" for x in results["in_process_img_s_before_after"])
            + f"); from their CPU time, on {results['cores']} dedicated cores: "
            f"{results['in_process_img_s_on_dedicated_cores']:.1f} img/s; "
            f"CPU {results['in_process_cpu_ms_per_img']:.1f} ms/img",
        ]
    for served in results.get("served", []):
        rows.append(
            f"  served {served['protocol']:>4}, {served['concurrency']:>2} in flight: "
            f"{served['img_s']:6.1f} img/s   served / in-process {served['over_in_process']:.2f}"
        )
        if "server_cpu_s_per_img" in served:
            rows.append(
                f"{'':30} from CPU time (server {1e3 * served['server_cpu_s_per_img']:.0f} "
                f"ms/img), on {results['cores']} dedicated cores: "
                f"{served['img_s_on_dedicated_cores']:.1f} img/s, served / in-process "
                f"{served['over_in_process_on_dedicated_cores']:.2f}"
            )
            rows.append(f"{'':30} CPU ms/img: {cpu_breakdown(served['cpu_ms_per_img'])}")
    return "\n".join(rows)


def cpu_breakdown(per_img: dict[str, float]) -> str:
    """ "worker 41.0, torchserve 9.8, ... client 3.1": CPU ms per image by role."""
    return ", ".join(f"{role} {ms:.1f}" for role, ms in per_img.items())


# --- The document: one generated section per machine ----------------------------------


@dataclass(frozen=True)
class Machine:
    """What a run was measured on: the CPU by name, its cores and AMX, and the CUDA device the
    network ran on (None on a CPU run)."""

    cpu: str
    cores: int
    amx: bool
    gpu: str | None = None

    @property
    def title(self) -> str:
        """How a heading names it, e.g. "AMD EPYC, 2 cores, no AMX"."""
        host = f"{self.cpu}, {self.cores} cores, {'AMX' if self.amx else 'no AMX'}"
        return host if self.gpu is None else f"{self.gpu} (host: {host})"

    @property
    def key(self) -> str:
        """What the markers of its section carry: ``slug(self.title)``."""
        return slug(self.title)


def slug(text: str) -> str:
    """``text`` lower-cased, each run of other characters than a-z and 0-9 one hyphen, none
    at either end: "AMD EPYC, 2 cores, no AMX" -> "amd-epyc-2-cores-no-amx". It never holds
    "--", which would end an HTML comment."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model(cpuinfo: str) -> str:
    """The first ``model name`` in the text of /proc/cpuinfo; "unknown CPU" when none."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name" and value.strip():
            return value.strip()
    return "unknown CPU"


def has_amx(cpuinfo: str) -> bool:
    """True when a ``flags`` line of /proc/cpuinfo's text names an AMX feature (amx_*)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags" and any(f.startswith("amx") for f in value.split()):
            return True
    return False


def this_machine(device: str) -> Machine:
    """This machine as ``Machine``; ``device`` is the run's ("cpu", "cuda:0", or "?" when no
    size ran): a CUDA one is named by ``torch.cuda.get_device_name``."""
    try:
        cpuinfo = CPUINFO.read_text()
    except OSError:  # not Linux
        cpuinfo = ""
    gpu = None
    if device.startswith("cuda"):
        import torch

        gpu = torch.cuda.get_device_name(device)
    return Machine(cpu_model(cpuinfo), os.cpu_count() or 1, has_amx(cpuinfo), gpu)


def command_line(argv: Sequence[str], environ: Mapping[str, str], module: str | None) -> str:
    """The shell command that ran this process, quoted: the ``COMMAND_ENV`` settings that are
    set, then the program and ``argv[1:]``. The program is ``argv[0]``'s file name
    (``colorizer``), or ``python -m MODULE`` when ``argv[0]`` is a .py file run as ``module``."""
    if argv[0].endswith(".py") and module:
        program = ["python", "-m", module]
    else:
        program = [Path(argv[0]).name]
    settings = [f"{name}={environ[name]}" for name in COMMAND_ENV if name in environ]
    return " ".join([*settings, shlex.join([*program, *argv[1:]])])


def _row(cells: Sequence[str]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def markdown_tables(results: dict) -> str:
    """The run's results (``run``'s dict) as Markdown: one line naming the model(s), the
    in-process table per size (median ms per stage, peak RSS growth, rest / network, the
    network's GFLOP/s, and the ratio rows), and the throughput table when ``--parallel``
    ran."""
    runs = {run["path"]: run for size in results["sizes"] for run in size["runs"]}
    models = "; ".join(
        f"{path}: `{run['model']}` on {run['device']} in {run['dtype']}"
        f"{', frozen' if run.get('frozen') else ''}, {run['network_gflop']:.2f} GFLOP per "
        "network forward"
        for path, run in runs.items()
    )
    lines = [
        f"{models or 'no photo sizes run'}. {results['threads']} torch thread(s), load "
        f"{results['load']} at the start; median ms of {results['repeats']} run(s) per size, "
        "peak = RSS growth in the first.",
    ]
    columns = (*STAGES, "whole")
    if results["sizes"]:
        head = ["photo", "path", *STAGES, "whole ms", "peak", "rest / network", "GFLOP/s"]
        lines += ["", _row(head), _row(["---"] * len(head))]
    for size in results["sizes"]:
        label = size["label"]
        for run in size["runs"]:
            ms = run["ms"]
            rest = (ms["whole"] - ms["network"]) / ms["network"]
            gflops = run["network_gflop"] / (ms["network"] / 1e3)
            cells = [label, run["path"], *(f"{ms[s]:,.0f}" for s in columns)]
            cells += [_fmt_bytes(run["peak_rss_growth_bytes"]), f"{rest:.1f}", f"{gflops:.1f}"]
            lines.append(_row(cells))
            label = ""
        for name, key in (("base / new", "baseline_over_new"), ("ref / new", "reference_over_new")):
            if key in size:
                ratio = size[key]
                peak = ratio.get("peak")
                peak_cell = "" if peak is None else f"{peak:.1f}" if math.isfinite(peak) else "n/a"
                cells = ["", name, *(f"{ratio[s]:.2f}" for s in columns), peak_cell, "", ""]
                lines.append(_row(cells))
    if "in_process_img_s" in results:
        side, cores = results["served_size"], results["cores"]
        before, after = results["in_process_img_s_before_after"]
        around = f" (before / after the served runs: {before:.1f} / {after:.1f})"
        head = [f"{side}x{side} JPEG", "img/s", "/ in-process"]
        head += [f"img/s on {cores} dedicated cores, from CPU time", "/ in-process, from CPU time"]
        head += ["CPU ms per image"]
        lines += ["", _row(head), _row(["---"] * len(head))]
        in_process_cpu = results.get("in_process_cpu_ms_per_img")
        lines.append(
            _row(
                [
                    f"{results['parallel']} in-process pipelines",
                    f"{results['in_process_img_s']:.1f}{around if results['served'] else ''}",
                    "",
                    f"{results['in_process_img_s_on_dedicated_cores']:.1f}",
                    "",
                    "" if in_process_cpu is None else f"pipelines {in_process_cpu:.1f}",
                ]
            )
        )
        for row in results.get("served", []):
            cells = [f"served {row['protocol']}, {row['concurrency']} in flight"]
            cells += [f"{row['img_s']:.1f}", f"{row['over_in_process']:.2f}", "", "", ""]
            if "img_s_on_dedicated_cores" in row:
                cells[3] = f"{row['img_s_on_dedicated_cores']:.1f}"
                cells[4] = f"{row['over_in_process_on_dedicated_cores']:.2f}"
            if "cpu_ms_per_img" in row:
                cells[5] = cpu_breakdown(row["cpu_ms_per_img"])
            lines.append(_row(cells))
    return "\n".join(lines)


@dataclass(frozen=True)
class Provenance:
    """Where and how a generated section's tables were measured."""

    machine: Machine
    torch: str  # torch.__version__
    when: str  # UTC, e.g. "2026-12-03 05:10 UTC"
    command: str  # command_line()


def render_section(provenance: Provenance, tables: str) -> str:
    """One machine's section, markers excluded: a heading naming the machine, torch version and
    date, the command on the line under it, then ``tables``."""
    return (
        f"### Machine: {provenance.machine.title}; torch {provenance.torch}; {provenance.when}"
        f"\n\nCommand: `{provenance.command}`\n\n{tables.strip()}\n"
    )


def _marker_lines(document: str, marker: str) -> list[re.Match]:
    """The lines of ``document`` that are exactly ``marker`` (a mention inside prose is not)."""
    return list(re.finditer(rf"^{re.escape(marker)}$", document, re.MULTILINE))


def replace_section(document: str, key: str, section: str) -> str:
    """``document`` with machine ``key``'s section between its markers set to ``section``.

    A marker is a line of its own. An existing ``DOC_BEGIN``/``DOC_END`` pair for ``key`` is
    replaced in place; without one, the new pair goes after the last ``bench:END`` line of any
    machine (at the end when there is none), a blank line before it. Every other byte of
    ``document`` is kept. Raises ValueError unless ``key``'s markers appear once each, BEGIN
    first, or not at all.
    """
    begin, end = DOC_BEGIN.format(key=key), DOC_END.format(key=key)
    block = f"{begin}\n{section.rstrip()}\n{end}"
    begins, ends = _marker_lines(document, begin), _marker_lines(document, end)
    if len(begins) == len(ends) == 1 and begins[0].start() < ends[0].start():
        return document[: begins[0].start()] + block + document[ends[0].end() :]
    if begins or ends:
        raise ValueError(
            f"{key}: expected one line {begin!r} followed by one line {end!r}, or neither; "
            f"found {len(begins)} BEGIN and {len(ends)} END"
        )
    prefix, _, suffix = DOC_END.partition("{key}")
    any_end = rf"^{re.escape(prefix)}\S+{re.escape(suffix)}$"
    ends = list(re.finditer(any_end, document, re.MULTILINE))
    if not ends:
        separator = "" if not document else "\n" if document.endswith("\n") else "\n\n"
        return f"{document}{separator}{block}\n"
    at = ends[-1].end()
    if at == len(document):  # the marker ends the document
        return f"{document}\n\n{block}\n"
    return f"{document[: at + 1]}\n{block}\n{document[at + 1 :]}"


def write_doc(path: Path, results: dict, command: str) -> Machine:
    """Write the run's tables into ``path`` (created when missing) as this machine's section
    (``replace_section``); -> the machine it was keyed by."""
    import torch

    machine = this_machine(results["device"])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    provenance = Provenance(machine, torch.__version__, when, command)
    section = render_section(provenance, markdown_tables(results))
    document = path.read_text() if path.exists() else ""
    path.write_text(replace_section(document, machine.key, section))
    return machine


def run(args: argparse.Namespace) -> int:
    import tempfile

    if args.child:
        print(json.dumps(measure_size(args)))
        return 0
    results: dict = {
        "cpu": this_machine("cpu").cpu,
        "cores": os.cpu_count(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "threads": args.threads,
        "repeats": args.repeats,
        "sizes": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mp in args.sizes:
            width, height = photo_shape(mp)
            photo = Path(tmp) / f"{width}x{height}.jpg"
            photo.write_bytes(gray_jpeg(width, height))
            size = {"megapixels": width * height / 1e6, "width": width, "height": height}
            size["label"] = f"{width}x{height}"
            size["runs"] = [_child(args, photo, "new")]
            if args.baseline_model is not None:
                base = _child(args, photo, "new", baseline=True)
                size["runs"].append(base)
                new = size["runs"][0]
                size["baseline_over_new"] = times_faster(new["ms"], base["ms"])
            if mp <= args.reference_max_mp:
                size["runs"].append(_child(args, photo, "reference"))
                new, ref = size["runs"][0], size["runs"][-1]
                ratio = times_faster(new["ms"], ref["ms"])
                peaks = new["peak_rss_growth_bytes"], ref["peak_rss_growth_bytes"]
                ratio["peak"] = peaks[1] / peaks[0] if all(peaks) else float("nan")
                size["reference_over_new"] = ratio
            results["sizes"].append(size)
            photo.unlink()
    first = results["sizes"][0]["runs"][0] if results["sizes"] else {}
    results["device"], results["dtype"] = first.get("device", "?"), first.get("dtype", "?")
    if args.parallel:
        from serving.client.bench import bench_image

        data = bench_image(args.served_size)
        results["served_size"] = args.served_size
        results["parallel"] = args.parallel
        before, in_process_dedicated, in_process_cpu = in_process_throughput(args, data)
        results["in_process_img_s_on_dedicated_cores"] = in_process_dedicated
        results["in_process_cpu_ms_per_img"] = in_process_cpu
        served = []
        for protocol, target in (("rest", args.url), ("grpc", args.grpc)) if args.served else ():
            for conc in args.concurrency:
                img_s, cpu = served_throughput(
                    protocol, target, data, args.requests, conc, args.server_state
                )
                row = {"protocol": protocol, "concurrency": conc, "img_s": img_s}
                if cpu:  # what the same server would do on dedicated cores, and who spends
                    row["server_cpu_s_per_img"], row["img_s_on_dedicated_cores"] = cpu["dedicated"]
                    row["cpu_ms_per_img"] = cpu["cpu_ms_per_img"]
                served.append(row)
        # On a shared machine the load drifts: measure in-process before and after the
        # served runs and compare with the mean of the two.
        after = in_process_throughput(args, data)[0] if served else before
        results["in_process_img_s_before_after"] = [before, after]
        results["in_process_img_s"] = (before + after) / 2
        for row in served:
            row["over_in_process"] = served_over_in_process(
                row["img_s"], results["in_process_img_s"]
            )
            if "img_s_on_dedicated_cores" in row:
                row["over_in_process_on_dedicated_cores"] = (
                    row["img_s_on_dedicated_cores"] / in_process_dedicated
                )
        results["served"] = served
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.write_doc:
        main_spec = getattr(sys.modules["__main__"], "__spec__", None)
        command = command_line(sys.argv, os.environ, getattr(main_spec, "name", None))
        machine = write_doc(args.write_doc, results, command)
        print(f"wrote the section {machine.key!r} of {args.write_doc}")
    return 0


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pipeline-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_options(p)
    p.set_defaults(func=run)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"({DEFAULT_MODEL})")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:N]")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument(
        "--freeze", default="auto", choices=FREEZE, help="freeze the network (auto: scripted ones)"
    )
    p.add_argument(
        "--baseline-model",
        type=Path,
        help="also run this exported file at each size and print baseline / new",
    )
    p.add_argument("--baseline-precision", default="fp32", choices=PRECISIONS, help="(fp32)")
    p.add_argument(
        "--baseline-freeze",
        default="no",
        choices=FREEZE,
        help="(no: how the CPU ran every network before frozen CPU inference)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per pipeline (1)")
    p.add_argument(
        "--sizes", type=_floats, default=list(DEFAULT_SIZES), help="megapixels (0.25,1,12,40)"
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per size; median (3)")
    p.add_argument(
        "--reference-max-mp",
        type=float,
        default=12.0,
        help="also run the whole-image float path up to this size (12; 0: never)",
    )
    p.add_argument(
        "--parallel", type=int, default=2, help="in-process pipelines at once (2; 0: skip)"
    )
    p.add_argument("--requests", type=int, default=40, help="images per throughput run (40)")
    p.add_argument("--served", action="store_true", help="also measure a running service")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="REST base URL")
    p.add_argument("--grpc", default="127.0.0.1:7070", help="gRPC HOST:PORT")
    p.add_argument("--concurrency", type=_ints, default=[1, 2, 4, 8], help="in flight (1,2,4,8)")
    p.add_argument(
        "--served-size",
        type=int,
        default=SERVED_SIZE,
        help=f"photo side (px) for throughput ({SERVED_SIZE})",
    )
    p.add_argument(
        "--server-state",
        type=Path,
        help="state folder of `colorizer serve` on this machine: also count the server's "
        "CPU seconds per image (a load-independent throughput on dedicated cores)",
    )
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument(
        "--write-doc",
        type=Path,
        metavar="MARKDOWN",
        help="also write the tables into this Markdown file (serving/BENCHMARKS.md) as this "
        "machine's section between bench:BEGIN/END markers: replaces its earlier section, "
        "or appends one for a new machine",
    )
    # Internal: one size in a child process.
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--photo", help=argparse.SUPPRESS)
    p.add_argument("--path", default="new", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.benchmark", description=__doc__)
    _add_options(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
