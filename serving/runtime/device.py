"""Where and in what precision the network runs: the one resolver for serving and training."""

from __future__ import annotations

import logging

import torch

from serving.runtime.constants import PRECISIONS

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # PRECISIONS but auto


def cpu_has_amx() -> bool:
    """True when this CPU has AMX bf16 tiles (fast bf16 matmul/conv on the CPU)."""
    probe = getattr(torch._C._cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


def pick_device(requested: str | torch.device | None = None, index: int = 0) -> torch.device:
    """None or 'auto' -> CUDA device ``index`` when CUDA works, else the CPU; else as named.

    Naming a CUDA device on a machine without one is an error, not a silent CPU run.
    """
    if requested is None or requested == "auto":
        return torch.device("cuda", index) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested} was asked for, but CUDA is not available here")
    return device


def worker_device(gpu_id: int | str | None) -> torch.device:
    """The device of a server worker that was given GPU ``gpu_id`` (None: none).

    A worker given a GPU that torch cannot use runs on the CPU, with a warning: a server
    that stays up serving slowly beats one whose workers never start.
    """
    if gpu_id is None:
        return pick_device("cpu")
    try:
        return pick_device(f"cuda:{int(gpu_id)}")
    except ValueError:
        log.warning("GPU %s was assigned but CUDA is not available; using the CPU", gpu_id)
        return pick_device("cpu")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a stage's time is its own (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """'auto' -> bf16 on CUDA with bf16 support or on a CPU with AMX, else fp32.

    The rule training uses for its autocast. A loaded network for inference measures its
    precision instead (``serving.runtime.precision``, through ``ColorizePipeline.load``).
    """
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_amx() else torch.float32
