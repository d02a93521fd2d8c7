"""The precision a loaded network runs in: checked at load, and for ``auto`` measured.

Whether bfloat16 pays depends on the network and the machine, not on a CPU flag: on an
AMX Xeon the network shipped before the inference layout ran no faster in bf16 than in
fp32, and its bf16 path did not run at all (no bf16 CPU kernel for the antialiased resize
it held). So ``auto`` runs each candidate the machine offers on a probe batch, keeps those
whose a*b* stays within ``AutoConfig.max_mean_lab_diff`` of fp32's on average, and takes
the fastest; bf16 must beat fp32 by ``AutoConfig.min_speedup`` to be chosen. A precision
named outright that cannot run the model is refused at load with ``PrecisionUnusable``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from serving.runtime.device import DTYPES, PRECISIONS

log = logging.getLogger(__name__)


class PrecisionUnusable(RuntimeError):
    """The precision named in the configuration cannot run this model on this machine."""


@dataclass(frozen=True)
class AutoConfig:
    """How ``auto`` measures: probe runs per candidate and what counts as equal output."""

    warmup_runs: int = 2  # TorchScript's profiling executor optimizes on the second call
    timed_runs: int = 5  # per candidate, interleaved with the other candidates'; min taken
    # Mean |a*b* - fp32's a*b*| on the probe photo, Lab units (about 2.3 is a just noticeable
    # difference). The shipped default in bf16: 1.9 on the probe (a near-gray gradient, the
    # hardest case), 0.2-1.1 on val photos, val PSNR within 0.003 dB of fp32's (model card).
    max_mean_lab_diff: float = 3.0
    min_speedup: float = 1.1  # fp32 time / candidate time needed to leave fp32


@dataclass
class Choice:
    """What ``choose`` decided, with the figures behind it (for the log)."""

    dtype: torch.dtype
    reason: str
    ms: dict[str, float] = field(default_factory=dict)  # fastest probe run per candidate
    lab_diff: dict[str, float] = field(default_factory=dict)  # mean vs fp32, Lab units
    refused: dict[str, str] = field(default_factory=dict)  # candidate -> why it cannot run


def name_of(dtype: torch.dtype) -> str:
    """torch.float32 -> 'fp32', torch.bfloat16 -> 'bf16'."""
    return next(name for name, d in DTYPES.items() if d == dtype)


def candidates(device: torch.device) -> list[str]:
    """The precisions worth trying on ``device``, fp32 (the reference) first.

    bf16 runs on every x86 CPU (emulated where the CPU lacks AVX512-BF16 or AMX) and on
    CUDA devices that support it.
    """
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return ["fp32"]
    return ["fp32", "bf16"]


def resolve(
    precision: str,
    device: torch.device,
    probe: Callable[[torch.dtype], Callable[[], torch.Tensor]],
    config: AutoConfig = AutoConfig(),
) -> Choice:
    """The dtype to run in for setting ``precision`` ('auto', 'fp32' or 'bf16').

    ``probe(dtype)`` builds the network in ``dtype`` and returns a function that runs it
    once on a fixed probe batch -> a*b* (B, 2, S, S) float32 in [-1, 1] (x ab_scale: Lab;
    ``max_mean_lab_diff`` assumes a scale of 128). A named precision is probed once; if it
    raises, ``PrecisionUnusable`` names the setting and the error.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        _run_or_refuse(precision, probe)
        return Choice(DTYPES[precision], f"precision {precision} was set")
    return choose(candidates(device), probe, config)


def short_error(exc: BaseException) -> str:
    """One line for an exception: the last line of its message (a TorchScript error puts
    the underlying error after its traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _run_or_refuse(precision: str, probe: Callable) -> Callable[[], torch.Tensor]:
    try:
        run = probe(DTYPES[precision])
        run()
        return run
    except Exception as exc:
        raise PrecisionUnusable(
            f"precision {precision} cannot run this model here ({short_error(exc)}); set the "
            "handler's precision (model-config.yaml `handler: precision:`, or --precision) to "
            "auto or fp32"
        ) from exc


def choose(names: list[str], probe: Callable, config: AutoConfig = AutoConfig()) -> Choice:
    """Probe each of ``names`` (fp32 first); -> the fastest at equal output (see module)."""
    runs: dict[str, Callable[[], torch.Tensor]] = {}
    refused: dict[str, str] = {}
    for name in names:
        try:
            runs[name] = _run_or_refuse(name, probe)
        except PrecisionUnusable as exc:
            if name == "fp32":
                raise
            refused[name] = short_error(exc.__cause__)
    outputs = {name: run().float() for name, run in runs.items()}
    for _ in range(config.warmup_runs - 1):
        for run in runs.values():
            run()
    best: dict[str, float] = {name: float("inf") for name in runs}
    for _ in range(config.timed_runs):
        for name, run in runs.items():  # interleaved: a load change hits every candidate
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    ms = {name: 1e3 * seconds for name, seconds in best.items()}
    reference = outputs["fp32"]
    lab_diff = {
        name: 128.0 * float((out - reference).abs().mean()) for name, out in outputs.items()
    }
    chosen = "fp32"
    for name in runs:
        if name == "fp32" or lab_diff[name] > config.max_mean_lab_diff:
            continue
        if ms["fp32"] / ms[name] >= config.min_speedup and ms[name] < ms[chosen]:
            chosen = name
    figures = ", ".join(
        f"{name} {ms[name]:.1f} ms (mean |a*b* - fp32| {lab_diff[name]:.2f})" for name in runs
    )
    figures += "".join(f", {name} cannot run: {why}" for name, why in refused.items())
    reason = (
        f"auto chose {chosen}: fastest probe run per precision {figures}; another precision "
        f"needs >= {config.min_speedup}x fp32's speed within {config.max_mean_lab_diff} Lab units"
    )
    return Choice(DTYPES[chosen], reason, ms, lab_diff, refused)
