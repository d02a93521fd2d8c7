"""`colorizer export CHECKPOINT --out FILE.pt`: one TorchScript file with its ModelSpec.

The file holds the network in its inference layout (``training.inference``), which takes
the gray image at the backbone's own size, or both inputs at ``--input-size``; the spec
written beside it says which.
Refuses to write the file when TorchScript and eager outputs differ by more than
``PARITY_TOLERANCE`` on fresh random inputs (fp32).

``--from-exported FILE.pt`` re-exports a file's weights as they are with this code's
inference layout, for a model whose checkpoints are gone (``--network-config
CONFIG.json`` for a file written before the inference layout).
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from serving.runtime.model_spec import ModelSpec, load_scripted, save_scripted
from training.checkpoint import models_from_checkpoints
from training.decoding import Decoding, read_choice
from training.distill import network_from_inference_file
from training.inference import (
    NETWORK_FILE,
    InferenceColorizer,
    backbone_size,
    load_from_file,
    state_mismatch,
)
from training.model import Colorizer, ColorizerConfig, ColorizerEnsemble, Network

PARITY_TOLERANCE = 1e-4
# An input side the network runs at must be a multiple of this: at an odd multiple of 8,
# Lite0's TF "same" padding pads its stride-16 stages unevenly, which shifts the fused stage
# map against the encoder's grid (on training photos 184 px scored 0.15 dB below 176 px,
# and 168 px 0.5 dB below).
INPUT_SIZE_MULTIPLE = 16


class InputSizeError(ValueError):
    """The network cannot run at the asked input size (see the message)."""


class ExportParityError(RuntimeError):
    """TorchScript output differs from the eager model's."""


def random_inputs(spec: ModelSpec, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh (B,1,S,S) and (B,1,G,G) inputs uniform in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    l_in = torch.rand(batch, 1, spec.l_size, spec.l_size, generator=gen) * 2 - 1
    gray = torch.rand(batch, 1, spec.gray_size, spec.gray_size, generator=gen) * 2 - 1
    return l_in, gray


def export_spec(model: Network, input_size: int | None = None) -> ModelSpec:
    """The spec of ``model``'s exported file: gray input at the backbone's own size, or
    both inputs at ``input_size`` (see ``check_input_size``)."""
    spec = replace(ModelSpec(), gray_size=backbone_size(model, ModelSpec().gray_size))
    if input_size is None:
        return spec
    check_input_size(spec, input_size)
    return replace(spec, l_size=input_size, gray_size=input_size)


def check_input_size(spec: ModelSpec, input_size: int) -> None:
    """Raise InputSizeError unless a network of ``spec`` (its own sizes) can run at
    ``input_size``: both sides the same (one grid for the encoder and the backbone's tap)
    and a positive multiple of INPUT_SIZE_MULTIPLE."""
    if spec.gray_size != spec.l_size:
        raise InputSizeError(
            f"--input-size needs a backbone that takes the L input's size ({spec.l_size} px); "
            f"this network's takes {spec.gray_size} px, so it runs only at its own sizes"
        )
    if input_size <= 0 or input_size % INPUT_SIZE_MULTIPLE:
        raise InputSizeError(
            f"--input-size {input_size} is not a positive multiple of {INPUT_SIZE_MULTIPLE} "
            f"(accepted: 16, 32, ..., e.g. 176 or {spec.l_size})"
        )


def run_backbone_at(model: Network, size: int) -> Network:
    """The eager ``model`` (in place) with its backbone taking the gray input as given at
    ``size`` px instead of resizing it to the training size: what the exported file does
    at ``--input-size size``, so parity compares like with like."""
    for module in model.modules():
        if isinstance(module, (Colorizer, ColorizerEnsemble)):
            module.embed_size = size
    return model


def script_model(model: Network) -> torch.jit.ScriptModule:
    """``model`` in its inference layout (``InferenceColorizer``), scripted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated but still the format
        return torch.jit.script(InferenceColorizer(model.eval()).eval())


def parity(model: Network, scripted: torch.jit.ScriptModule, spec: ModelSpec, seed: int) -> float:
    """Max |eager - scripted| over a fresh random batch, fp32; gray at ``spec.gray_size``."""
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
    seed: int = 0,
    half: bool = False,
    input_size: int | None = None,
) -> float:
    """Script, check parity (before AND after a save/load round trip), write ``out`` with
    ``export_spec(model, input_size)`` and the network's config (``NETWORK_FILE``) embedded.

    ``half``: store the weights as float16 (see ``save_scripted``); the eager model is
    rounded the same way first (``round_to_half``, in place), so parity compares like with
    like. Returns the max abs difference; raises ExportParityError above PARITY_TOLERANCE.
    """
    out = Path(out)
    spec = export_spec(model, input_size)
    model = (round_to_half(model) if half else model.float()).eval()
    if input_size is not None:
        run_backbone_at(model, input_size)  # in place, like the rounding
    scripted = script_model(model)
    diff = parity(model, scripted, spec, seed)
    if diff > PARITY_TOLERANCE:
        raise ExportParityError(
            f"TorchScript differs from eager by {diff:.3g} > {PARITY_TOLERANCE}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    save_scripted(scripted, spec, tmp, half=half, extra={NETWORK_FILE: network_json(model)})
    reloaded, _ = load_scripted(tmp)
    diff = max(diff, parity(model, reloaded, spec, seed + 1))
    if diff > PARITY_TOLERANCE:
        tmp.unlink()
        raise ExportParityError(f"reloaded TorchScript differs by {diff:.3g} > {PARITY_TOLERANCE}")
    tmp.replace(out)
    return diff


def network_json(model: Network) -> str:
    """The config and member count that rebuild ``model``'s layers (``network_from_json``)."""
    members = len(model.branches) if isinstance(model, ColorizerEnsemble) else 1
    return json.dumps({"config": model.config.to_dict(), "members": members}, sort_keys=True)


def network_from_json(text: str) -> Network:
    """A randomly initialised network of the shape ``network_json`` describes."""
    data = json.loads(text)
    config = ColorizerConfig.from_dict(data["config"])
    if int(data["members"]) == 1:
        return Colorizer(config)
    return ColorizerEnsemble([Colorizer(config) for _ in range(int(data["members"]))])


def network_from_exported(path: str | Path, network: Network) -> Network:
    """``network`` (its shape) with the weights and decoding of a file exported before the
    inference layout, whose state dict is the trained network's own.

    Raises ValueError when the file's weights do not fit ``network`` (another shape, or a
    file already in the inference layout, which keeps no per-member heads).
    """
    module, _ = load_scripted(path)
    state = module.state_dict()
    mismatch = state_mismatch(network, state)
    if mismatch:
        raise ValueError(
            f"{path} does not hold this network's weights: {mismatch}; pass the config it "
            "was trained with (--network-config)"
        )
    return load_from_file(network, state, module).eval()


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
        nargs="*",
        help="checkpoint written by `colorizer train` (last.pt); several classification "
        "checkpoints of one network shape and class weights export as one ensemble (a frozen "
        "backbone they share is stored and run once)",
    )
    p.add_argument("--out", type=Path, required=True, help="TorchScript file to write (.pt)")
    p.add_argument(
        "--from-exported",
        type=Path,
        help="instead of checkpoints: an exported .pt whose weights and decoding are "
        f"re-exported as they are, with this code's inference layout: a file that carries "
        f"{NETWORK_FILE} as it is, one exported before the inference layout (the network's "
        "own state dict) with --network-config",
    )
    p.add_argument(
        "--network-config",
        type=Path,
        help="with --from-exported of a file from before the inference layout: JSON "
        '{"config": ColorizerConfig fields, "members": N} of its network (files exported '
        f"since carry it as {NETWORK_FILE})",
    )
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
    p.add_argument(
        "--input-size",
        type=int,
        help="run the network at this side (px) instead of its training size: the photo is "
        "resized to it for both inputs and the a*b* comes back at it. Smaller is cheaper "
        f"(compute goes with the square) and coarser; a multiple of {INPUT_SIZE_MULTIPLE}. "
        "Default: the training size, or with --from-exported the file's own",
    )
    p.add_argument("--temperature", type=float, help="classification head: annealed-mean T")
    p.add_argument(
        "--prior-correction", type=float, help="classification head: post-hoc logit adjustment"
    )
    p.set_defaults(func=run)


def source_network(args: argparse.Namespace) -> Network:
    """The network to export: from checkpoints, or from an older exported file."""
    if bool(args.checkpoint) == bool(args.from_exported):
        raise ValueError("give checkpoints or --from-exported FILE.pt, not both or neither")
    if args.checkpoint:
        return models_from_checkpoints(args.checkpoint)
    if args.network_config is None:
        return network_from_inference_file(args.from_exported)
    shape = network_from_json(args.network_config.read_text())
    return network_from_exported(args.from_exported, shape)


def run(args: argparse.Namespace) -> int:
    model = source_network(args)
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
    input_size = args.input_size
    if input_size is None and args.from_exported:
        _, source_spec = load_scripted(args.from_exported)
        input_size = source_spec.l_size if source_spec.l_size == source_spec.gray_size else None
    spec = export_spec(model, input_size)
    reference = copy.deepcopy(model).float().eval() if args.half else None
    # rounds ``model`` if half, and runs its backbone at ``input_size``
    diff = export(model, args.out, seed=args.seed, half=args.half, input_size=input_size)
    if reference is not None:
        if input_size is not None:
            run_backbone_at(reference, input_size)
        change = rounding_change(reference, model, spec, args.seed)
        print(f"float16 weights change a*b* by at most {change:.3g} Lab units on random inputs")
    print(f"export parity: max |eager - torchscript| = {diff:.3g} (limit {PARITY_TOLERANCE})")
    print(f"wrote {args.out}")
    return 0
