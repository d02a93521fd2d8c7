"""Per-photo cost of the compact network with each embedding backbone, with a Lite0 stage's
features fused (``fuse_stage``), of ensembles of Lite0 networks sharing one frozen
backbone, and of the default's recipe as an ensemble of fine-tuned networks, each running its
own backbone (issue #13).

``python -m training.experiments.embedding_cost``: batch 1, fp32, one thread; the variants run in
interleaved rounds so their ratios hold on a busy machine. Random weights: cost only.
"""

from __future__ import annotations

import statistics
import time

import torch

from training.model import Colorizer, ColorizerEnsemble, count_parameters, preset

VARIANTS = {
    "mobilenetv3_small_100@299": {"backbone": "mobilenetv3_small_100"},
    "tf_efficientnet_lite0@224": {"backbone": "tf_efficientnet_lite0", "embed_size": 224},
    "tf_efficientnet_lite0@224 + stage 4": {
        "backbone": "tf_efficientnet_lite0",
        "embed_size": 224,
        "fuse_stage": 4,
    },
    "tf_efficientnet_lite1@240": {"backbone": "tf_efficientnet_lite1", "embed_size": 240},
    "tf_efficientnet_lite2@260": {"backbone": "tf_efficientnet_lite2", "embed_size": 260},
}
ENSEMBLE_SIZES = (2, 3)  # members of a Lite0 ensemble (one backbone, one trunk each)
FINE_TUNED = "tf_efficientnet_lite0@224 + stage 4"  # the default's network shape
FINE_TUNED_SIZES = (2,)  # members of an ensemble of fine-tuned networks (own backbones)


def lite0_ensemble(size: int) -> ColorizerEnsemble:
    """``size`` random compact Lite0 networks sharing the first one's backbone."""
    kw = VARIANTS["tf_efficientnet_lite0@224"]
    nets = [Colorizer(preset("compact", head="classification", **kw)) for _ in range(size)]
    for net in nets[1:]:
        net.backbone.load_state_dict(nets[0].backbone.state_dict())
    return ColorizerEnsemble(nets)


def fine_tuned_ensemble(size: int) -> ColorizerEnsemble:
    """``size`` random fused Lite0 networks, each with its own backbone weights."""
    kw = VARIANTS[FINE_TUNED]
    nets = [Colorizer(preset("compact", head="classification", **kw)) for _ in range(size)]
    ensemble = ColorizerEnsemble(nets)
    if ensemble.shared_backbone:
        raise RuntimeError("random backbones came out identical; expected one per member")
    return ensemble


def main(rounds: int = 7, reps: int = 5) -> None:
    torch.set_num_threads(1)
    models = {
        name: Colorizer(preset("compact", head="classification", **kw)).eval()
        for name, kw in VARIANTS.items()
    }
    models |= {f"tf_efficientnet_lite0@224 x{k}": lite0_ensemble(k).eval() for k in ENSEMBLE_SIZES}
    models |= {
        f"{FINE_TUNED} x{k}, own backbones": fine_tuned_ensemble(k).eval() for k in FINE_TUNED_SIZES
    }
    l_in = torch.rand(1, 1, 224, 224) * 2 - 1  # (1, 1, 224, 224) in [-1, 1]
    gray = torch.rand(1, 1, 299, 299) * 2 - 1  # (1, 1, 299, 299) in [-1, 1]
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(3):
                model(l_in, gray)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                for _ in range(reps):
                    model(l_in, gray)
                times[name].append((time.perf_counter() - start) / reps)
    base = statistics.median(next(iter(times.values())))
    for name, model in models.items():
        ms = statistics.median(times[name])
        n = count_parameters(model)
        print(
            f"{name}: {ms * 1e3:.1f} ms/photo ({ms / base:.2f}x), {n / 1e6:.2f} M parameters, "
            f"{n * 4 / 2**20:.1f} MiB fp32"
        )


if __name__ == "__main__":
    main()
