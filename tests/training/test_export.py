"""TorchScript export: parity check, embedded spec, refusal, round trip through torch.jit.load,
files that load on older torch releases."""

import copy
import json
from dataclasses import replace

import pytest
import torch

from serving.cli import main
from serving.runtime.model_spec import SPEC_FILE, ModelSpec, load_scripted, save_scripted
from serving.runtime.pipeline import ColorizePipeline
from tests.support.models import TINY
from tests.support.paths import REPO
from tests.support.torchscript import missing_in_torch_2_11, operators_named
from training import export as export_mod
from training.checkpoint import save_checkpoint
from training.model import Colorizer, ColorizerEnsemble, decode_logits


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


# --- Files that load on older torch releases, gray at the backbone's size ---------------

SHIPPED = REPO / "model_store" / "default" / "colorizer.pt"


def tiny_ensemble(embed_size: int | None = None) -> ColorizerEnsemble:
    """Two classification networks of the TINY shape with their own (random) backbones."""
    config = replace(TINY, head="classification", embed_size=embed_size)
    torch.manual_seed(0)
    return ColorizerEnsemble([Colorizer(config), Colorizer(config)]).eval()


@pytest.mark.parametrize("which", ["shipped", "tiny-regression", "tiny-ensemble"])
def test_exported_file_names_no_operator_that_torch_2_11_lacks(tmp_path, which):
    """The lent GPU machines run torch 2.11: a file naming an operator it lacks (a scripted
    ``F.interpolate`` names ``_upsample_lanczos2d_aa``) does not load there."""
    path = SHIPPED
    if which != "shipped":
        path = tmp_path / "m.pt"
        network = (
            Colorizer(replace(TINY, embed_size=96)) if which == "tiny-regression"
            else tiny_ensemble(96)
        )  # fmt: skip
        export_mod.export(network, path)
    named = operators_named(path)
    assert "aten::conv2d" in named  # the parser sees the file's operators
    assert named & missing_in_torch_2_11() == set()


def test_the_operator_check_catches_a_scripted_interpolate(tmp_path):
    class Resize(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear")

    path = tmp_path / "resize.pt"
    torch.jit.save(torch.jit.script(Resize()), str(path))
    assert "aten::_upsample_lanczos2d_aa" in operators_named(path) & missing_in_torch_2_11()


def test_export_takes_the_gray_image_at_the_backbone_size(tmp_path):
    """No resize runs inside the exported network: its spec asks the pipeline for the gray
    image at the backbone's input size, and it gives the trained network's output there."""
    network = tiny_ensemble(embed_size=96)
    out = tmp_path / "m.pt"
    export_mod.export(network, out)
    scripted, spec = load_scripted(out)
    assert spec == replace(ModelSpec(), gray_size=96)
    l_in, gray = export_mod.random_inputs(spec, 2, seed=5)
    with torch.inference_mode():
        assert torch.allclose(scripted(l_in, gray), network(l_in, gray), atol=1e-5)
    pipeline = ColorizePipeline.load(out, device="cpu", precision="fp32")
    assert pipeline.prepare([torch.rand(3, 40, 50)]).gray_in.shape == (1, 1, 96, 96)


def test_export_runs_the_network_at_the_asked_input_size(tmp_path):
    """--input-size S: both inputs at S (the spec says so), the a*b* at S, and the trained
    network's output with its backbone taking the gray image at S (no resize back to the
    training size inside). A re-export keeps the file's S unless told another."""
    network = tiny_ensemble(embed_size=224)
    out = tmp_path / "m.pt"
    export_mod.export(copy.deepcopy(network), out, input_size=160)
    scripted, spec = load_scripted(out)
    assert spec == replace(ModelSpec(), l_size=160, gray_size=160)
    l_in, gray = export_mod.random_inputs(spec, 2, seed=5)
    at_160 = export_mod.run_backbone_at(copy.deepcopy(network), 160)
    with torch.inference_mode():
        ab = scripted(l_in, gray)
        assert ab.shape == (2, 2, 160, 160)
        assert torch.allclose(ab, at_160(l_in, gray), atol=1e-5)
        assert not torch.allclose(ab, network(l_in, gray), atol=1e-3)  # gray resized to 224
    prepared = ColorizePipeline.load(out, device="cpu", precision="fp32").prepare(
        [torch.rand(3, 40, 50)]
    )
    assert prepared.l_in.shape == prepared.gray_in.shape == (1, 1, 160, 160)
    kept, back = tmp_path / "kept.pt", tmp_path / "back.pt"
    assert main(["export", "--from-exported", str(out), "--out", str(kept)]) == 0
    assert load_scripted(kept)[1] == spec
    args = ["export", "--from-exported", str(out), "--input-size", "224", "--out", str(back)]
    assert main(args) == 0
    assert load_scripted(back)[1] == replace(ModelSpec(), gray_size=224)


@pytest.mark.parametrize(
    "embed_size, size, words",
    [(224, 168, "not a positive multiple of 16"), (224, -16, "not a positive multiple of 16"),
     (96, 160, "this network's takes 96 px")],
)  # fmt: skip
def test_export_refuses_an_input_size_the_network_cannot_run_at(
    tmp_path, capsys, embed_size, size, words
):
    """An odd multiple of 8 misaligns the backbone's stride-16 stage with the encoder's grid,
    and a backbone that takes another size than L's has no one size for both inputs."""
    first, out = tmp_path / "first.pt", tmp_path / "out.pt"
    export_mod.export(tiny_ensemble(embed_size=embed_size), first)
    args = ["export", "--from-exported", str(first), "--input-size", str(size), "--out", str(out)]
    assert main(args) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_export_keeps_the_decoding_re_tunable(tmp_path):
    """An exported ensemble's head output decodes, with any decoding, to what the trained
    ensemble gives (the pooled logits differ from its mean log-softmax by a per-pixel
    constant only)."""
    network = tiny_ensemble()
    out = tmp_path / "m.pt"
    export_mod.export(network, out)
    scripted, spec = load_scripted(out)
    l_in, gray = export_mod.random_inputs(spec, 2, seed=9)
    with torch.inference_mode():
        mine, theirs = scripted.head_output(l_in, gray), network.head_output(l_in, gray)
        for temperature, correction in ((0.38, 0.0), (1.0, 0.5)):
            got = decode_logits(
                mine, scripted.class_weights, scripted.bin_centers, correction, temperature
            )
            want = decode_logits(
                theirs, network.class_weights, network.bin_centers, correction, temperature
            )
            assert torch.allclose(got, want, atol=1e-5)


def test_cli_re_exports_a_file_of_the_training_layout(tmp_path, capsys):
    """--from-exported: a file whose state dict is the trained ensemble's (as exported before
    the inference layout) comes out in the new layout with the same output and decoding."""
    network = tiny_ensemble().with_decoding(0.7, 0.25)
    old = tmp_path / "old.pt"
    save_scripted(torch.jit.script(network), ModelSpec(), old)
    config = tmp_path / "network.json"
    config.write_text(json.dumps({"config": network.config.to_dict(), "members": 2}))
    new = tmp_path / "new.pt"
    args = ["export", "--from-exported", str(old), "--network-config", str(config)]
    assert main([*args, "--out", str(new)]) == 0
    before, _ = load_scripted(old)
    after, spec = load_scripted(new)
    assert (after.temperature, after.prior_correction) == (0.7, 0.25)
    l_in, gray = export_mod.random_inputs(spec, 2, seed=3)
    with torch.inference_mode():
        assert torch.allclose(after(l_in, gray), before(l_in, gray), atol=1e-5)
    extra = {export_mod.NETWORK_FILE: ""}
    torch.jit.load(str(new), _extra_files=extra)
    rebuilt = export_mod.network_from_json(extra[export_mod.NETWORK_FILE])
    assert isinstance(rebuilt, ColorizerEnsemble) and rebuilt.config == network.config

    # A config that does not fit the file's weights is refused, naming the option.
    config.write_text(json.dumps({"config": TINY.to_dict(), "members": 1}))
    assert main([*args, "--out", str(tmp_path / "x.pt")]) == 2
    assert "--network-config" in capsys.readouterr().err


def test_cli_re_exports_a_file_of_the_inference_layout_with_this_code(tmp_path):
    """--from-exported without --network-config: a file in the inference layout (it carries
    its network's config) is rebuilt member by member and written again with the same output
    and decoding, though each member's own head bias was kept only as the members' mean."""
    config = replace(TINY, head="classification")
    torch.manual_seed(0)
    members = [Colorizer(config).eval(), Colorizer(config).eval()]
    with torch.no_grad():
        for index, member in enumerate(members):
            member.head.bias.add_(torch.linspace(-1, 1, len(member.head.bias)) * (index + 1))
            member.class_weights.copy_(torch.linspace(0.2, 5.0, len(member.class_weights)))
    network = ColorizerEnsemble(members).eval().with_decoding(0.6, 0.3)
    first, again = tmp_path / "first.pt", tmp_path / "again.pt"
    export_mod.export(network, first)
    assert main(["export", "--from-exported", str(first), "--out", str(again)]) == 0
    before, spec = load_scripted(first)
    after, _ = load_scripted(again)
    assert (after.temperature, after.prior_correction) == (0.6, 0.3)
    assert len(list(after.trunks.children())) == 2
    l_in, gray = export_mod.random_inputs(spec, 2, seed=4)
    with torch.inference_mode():
        assert torch.allclose(after(l_in, gray), before(l_in, gray), atol=1e-5)
        assert torch.allclose(after(l_in, gray), network(l_in, gray), atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_forward_is_the_decoded_head_output(tmp_path, memory_format):
    """``forward`` folds the decoding into the head and takes the softmax in whichever
    layout the logits come in; it must equal ``decode(head_output)``, the path tuning uses."""
    network = tiny_ensemble().with_decoding(0.7, 0.25)
    out = tmp_path / "m.pt"
    export_mod.export(network, out)
    scripted, spec = load_scripted(out)
    scripted = scripted.to(memory_format=memory_format)
    l_in, gray = (
        t.contiguous(memory_format=memory_format) for t in export_mod.random_inputs(spec, 2, seed=4)
    )
    with torch.inference_mode():
        got, want = scripted(l_in, gray), scripted.decode(scripted.head_output(l_in, gray))
    assert torch.allclose(got, want, atol=1e-5)
