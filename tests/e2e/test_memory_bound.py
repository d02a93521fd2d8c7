"""Four 40 MP photos at once on the cpu profile: the workers stay within the cpu pod.

The budget is the arithmetic of tests/unit/test_pixels_memory.py; here it meets a real
TorchServe (the session ``server``, cpu profile) and real concurrent requests.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from serving.benchmark import gray_jpeg
from serving.client import ColorizerClient
from serving.runtime.pipeline import PEAK_BYTES_PER_PIXEL
from tests.unit.test_pixels_memory import CPU_POD, GIB, WORKER_BASE_BYTES, pod_memory_limit

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WIDTH, HEIGHT = 7300, 5470  # 40 MP, the largest photo the cpu profile accepts


def _peak_rss(proc: psutil.Process) -> int:
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {proc}")


def test_four_concurrent_40_mp_photos_fit_the_cpu_pod(server):
    photo = gray_jpeg(WIDTH, HEIGHT)
    with ColorizerClient(server.url, timeout=600) as client:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda _: client.colorize(photo, "jpeg"), range(4)))
    assert all(r.content_type == "image/jpeg" for r in results)
    procs = server.launcher.children(recursive=True)
    workers = [p for p in procs if "model_service_worker" in " ".join(p.cmdline())]
    java = [p for p in procs if p.name() == "java"]
    assert workers and java
    peaks = [_peak_rss(w) for w in workers]
    per_worker = WORKER_BASE_BYTES + WIDTH * HEIGHT * PEAK_BYTES_PER_PIXEL
    assert max(peaks) <= per_worker, [f"{p / GIB:.2f} GiB" for p in peaks]
    total = sum(peaks) + sum(p.memory_info().rss for p in java)
    assert total <= pod_memory_limit(CPU_POD), f"{total / GIB:.2f} GiB"
