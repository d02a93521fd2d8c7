"""TorchScript export: parity check, embedded spec, refusal, round trip through torch.jit.load."""

import copy

import pytest
import torch

from serving.cli import main
from serving.runtime.model_spec import SPEC_FILE, ModelSpec, load_scripted
from serving.runtime.pipeline import ColorizePipeline
from tests.support.models import TINY
from training import export as export_mod
from training.checkpoint import save_checkpoint
from training.model import Colorizer


def test_export_writes_scripted_model_with_spec(tmp_path):
    torch.manual_seed(0)
    model = Colorizer(TINY).eval()
    out = tmp_path / "m.pt"
    diff = export_mod.export(model, out)
    assert diff <= export_mod.PARITY_TOLERANCE
    scripted, spec = load_scripted(out)
    assert spec == ModelSpec()
    l_in, gray = export_mod.random_inputs(spec, 2, seed=123)
    with torch.inference_mode():
        assert torch.allclose(scripted(l_in, gray), model(l_in, gray), atol=1e-5)


def test_export_refuses_when_parity_fails(tmp_path, monkeypatch):
    model = Colorizer(TINY).eval()
    real = export_mod.script_model

    def broken(m):
        other = copy.deepcopy(m)  # scripting shares parameters, so break a copy
        with torch.no_grad():
            other.head.bias.add_(0.5)
        return real(other)

    monkeypatch.setattr(export_mod, "script_model", broken)
    out = tmp_path / "m.pt"
    with pytest.raises(export_mod.ExportParityError, match="differs"):
        export_mod.export(model, out)
    assert not out.exists()


def test_load_refuses_a_file_without_spec(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(path))
    with pytest.raises(ValueError, match=SPEC_FILE):
        load_scripted(path)


def test_cli_export_from_checkpoint(tmp_path, capsys):
    model = Colorizer(TINY)
    ckpt = tmp_path / "last.pt"
    save_checkpoint(ckpt, model, None, epoch=0)
    out = tmp_path / "exported.pt"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    assert "max |eager - torchscript|" in capsys.readouterr().out
    pipeline = ColorizePipeline.load(out, device="cpu", precision="fp32")
    rgb = torch.rand(3, 37, 53)
    (colorized,) = pipeline.colorize([rgb])
    assert colorized.shape == rgb.shape


def test_cli_export_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_full_paper_network_exports_and_round_trips(tmp_path, capsys):
    """The default (Inception-ResNet-v2) network: ~62.4 M parameters, scripted, reloaded."""
    torch.manual_seed(0)
    model = Colorizer()
    out = tmp_path / "full.pt"
    diff = export_mod.export(model, out)
    assert diff <= export_mod.PARITY_TOLERANCE
    scripted = torch.jit.load(str(out))
    n_params = sum(p.numel() for p in scripted.parameters())
    assert n_params == pytest.approx(62.4e6, rel=0.005)
