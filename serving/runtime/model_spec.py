"""What the exported network expects: input sizes and scaling constants.

The spec is written next to the TorchScript graph (as an extra file inside the
``.pt`` archive) by ``colorizer export`` and read back by the handler, so the
constants are never typed twice.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

SPEC_FILE = "colorizer_spec.json"


@dataclass(frozen=True)
class ModelSpec:
    """Input sizes and scalings of the fused network.

    - ``l_224``: (B, 1, l_size, l_size), (L - l_center) / l_scale, in [-1, 1]
    - ``gray_299``: (B, 1, gray_size, gray_size), 2 * gray - 1, in [-1, 1]
      (gray = the sRGB value of Lab (L, 0, 0))
    - output: (B, 2, l_size, l_size), a*b* / ab_scale, in [-1, 1]
    """

    l_size: int = 224
    gray_size: int = 299
    l_center: float = 50.0
    l_scale: float = 50.0
    ab_scale: float = 128.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model spec fields {sorted(unknown)}")
        return cls(**data)


def save_scripted(
    module: torch.jit.ScriptModule,
    spec: ModelSpec,
    path: str | Path,
    half: bool = False,
    extra: dict[str, str] | None = None,
) -> None:
    """Write a TorchScript module with its spec embedded as an extra file.

    ``half``: store its floating-point weights and buffers as float16 (half the file;
    ``load_scripted`` returns them as float32). ``module`` itself is left as it is.
    ``extra``: more extra files (name -> text) to embed.
    """
    if half:  # on a copy (a save/load round trip), so the caller's module keeps its dtype
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)
        buffer.seek(0)
        module = torch.jit.load(buffer).half()
    torch.jit.save(module, str(path), _extra_files={**(extra or {}), SPEC_FILE: spec.to_json()})


def stored_half(module: torch.nn.Module) -> bool:
    """Whether any of the module's weights or buffers is float16 (see ``save_scripted``)."""
    tensors = (*module.parameters(), *module.buffers())
    return any(t.dtype == torch.float16 for t in tensors)


def load_scripted(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.jit.ScriptModule, ModelSpec]:
    """Load a TorchScript file written by ``save_scripted``; error if it carries no spec.

    Weights stored as float16 come back as float32.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    extra = {SPEC_FILE: ""}
    module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    if not extra[SPEC_FILE]:
        raise ValueError(f"{path} has no {SPEC_FILE}; export it with `colorizer export`")
    if stored_half(module):
        module = module.float()  # the pipeline runs float32 weights (under autocast for bf16)
    return module.eval(), ModelSpec.from_json(extra[SPEC_FILE])
