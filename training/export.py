"""`colorizer export CHECKPOINT --out FILE.pt`: one TorchScript file with its ModelSpec.

Refuses to write the file when TorchScript and eager outputs differ by more than
``PARITY_TOLERANCE`` on fresh random inputs (fp32).
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import torch

from serving.runtime.model_spec import ModelSpec, load_scripted, save_scripted
from training.checkpoint import models_from_checkpoints
from training.decoding import Decoding, read_choice
from training.model import Network

PARITY_TOLERANCE = 1e-4


class ExportParityError(RuntimeError):
    """TorchScript output differs from the eager model's."""


def random_inputs(spec: ModelSpec, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh (B,1,S,S) and (B,1,G,G) inputs uniform in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    l_in = torch.rand(batch, 1, spec.l_size, spec.l_size, generator=gen) * 2 - 1
    gray = torch.rand(batch, 1, spec.gray_size, spec.gray_size, generator=gen) * 2 - 1
    return l_in, gray


def script_model(model: Network) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated but still the format
        return torch.jit.script(model.eval())


def parity(model: Network, scripted: torch.jit.ScriptModule, spec: ModelSpec, seed: int) -> float:
    """Max |eager - scripted| over a fresh random batch, fp32."""
    l_in, gray = random_inputs(spec, batch=2, seed=seed)
    with torch.inference_mode():
        return float((model(l_in, gray) - scripted(l_in, gray)).abs().max())


def round_to_half(model: Network) -> Network:
    """The model (in place) with every floating weight and buffer rounded to float16 and
    back: the float32 network that a ``half`` file loads as.

    Raises ValueError, before changing anything, when a value lies outside float16's range.
    """
    limit = torch.finfo(torch.float16).max
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and tensor.numel() and tensor.detach().abs().max() > limit:
            raise ValueError(
                f"{name} holds values beyond float16's range (+-{limit:g}); export without --half"
            )
    return model.half().float()


def export(
    model: Network,
    out: str | Path,
    spec: ModelSpec = ModelSpec(),
    seed: int = 0,
    half: bool = False,
) -> float:
    """Script, check parity (before AND after a save/load round trip), write ``out``.

    ``half``: store the weights as float16 (see ``save_scripted``); the eager model is
    rounded the same way first (``round_to_half``, in place), so parity compares like with
    like. Returns the max abs difference; raises ExportParityError above PARITY_TOLERANCE.
    """
    out = Path(out)
    model = (round_to_half(model) if half else model.float()).eval()
    scripted = script_model(model)
    diff = parity(model, scripted, spec, seed)
    if diff > PARITY_TOLERANCE:
        raise ExportParityError(
            f"TorchScript differs from eager by {diff:.3g} > {PARITY_TOLERANCE}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    save_scripted(scripted, spec, tmp, half=half)
    reloaded, _ = load_scripted(tmp)
    diff = max(diff, parity(model, reloaded, spec, seed + 1))
    if diff > PARITY_TOLERANCE:
        tmp.unlink()
        raise ExportParityError(f"reloaded TorchScript differs by {diff:.3g} > {PARITY_TOLERANCE}")
    tmp.replace(out)
    return diff


def rounding_change(before: Network, after: Network, spec: ModelSpec, seed: int) -> float:
    """Max |a*b*| difference in Lab units between two eager networks on a random batch."""
    l_in, gray = random_inputs(spec, batch=2, seed=seed)
    with torch.inference_mode():
        return float((before(l_in, gray) - after(l_in, gray)).abs().max()) * spec.ab_scale


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        description="Script the network of CHECKPOINT, compare TorchScript and eager outputs on "
        f"random inputs (refuse if max |diff| > {PARITY_TOLERANCE}), write FILE.pt with the "
        "model's input sizes and scaling constants embedded.",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        nargs="+",
        help="checkpoint written by `colorizer train` (last.pt); several classification "
        "checkpoints of one network shape and class weights export as one ensemble (a frozen "
        "backbone they share is stored and run once)",
    )
    p.add_argument("--out", type=Path, required=True, help="TorchScript file to write (.pt)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random parity inputs")
    p.add_argument(
        "--half",
        action="store_true",
        help="store the weights as float16: half the file; loading gives float32 weights again "
        "(rounded to float16's precision; the parity check compares the same rounding)",
    )
    p.add_argument(
        "--decoding",
        type=Path,
        help="classification head: apply the choice of a `colorizer tune-decoding` file",
    )
    p.add_argument("--temperature", type=float, help="classification head: annealed-mean T")
    p.add_argument(
        "--prior-correction", type=float, help="classification head: post-hoc logit adjustment"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = models_from_checkpoints(args.checkpoint)
    if args.decoding or args.temperature is not None or args.prior_correction is not None:
        cfg = model.config
        chosen = (
            read_choice(args.decoding)
            if args.decoding
            else Decoding(cfg.temperature, cfg.prior_correction)
        )
        temperature = chosen.temperature if args.temperature is None else args.temperature
        correction = (
            chosen.prior_correction if args.prior_correction is None else args.prior_correction
        )
        model.with_decoding(temperature, correction)
        print(f"decoding: temperature {temperature}, prior correction {correction}")
    reference = copy.deepcopy(model).float().eval() if args.half else None
    diff = export(model, args.out, seed=args.seed, half=args.half)  # rounds ``model`` if half
    if reference is not None:
        change = rounding_change(reference, model, ModelSpec(), args.seed)
        print(f"float16 weights change a*b* by at most {change:.3g} Lab units on random inputs")
    print(f"export parity: max |eager - torchscript| = {diff:.3g} (limit {PARITY_TOLERANCE})")
    print(f"wrote {args.out}")
    return 0
