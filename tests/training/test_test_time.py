"""`python -m training.experiments.test_time`: test-time views of an exported model, measured."""

from dataclasses import replace

import pytest
import torch
from PIL import Image

from serving.runtime.model_spec import ModelSpec
from serving.runtime.pipeline import ColorizePipeline
from tests.support.models import TINY
from training.data import find_images
from training.evaluate import evaluate
from training.experiments.test_time import PARTS, Views, crop_starts, main, measure
from training.export import export
from training.model import Colorizer

PHOTOS = "tests/data/photos"


def test_crops_cover_the_long_side_flush_with_both_ends():
    assert crop_starts(200, 200) == [0]
    assert crop_starts(220, 200) == [0]  # within SQUARE_ENOUGH: the whole view only
    assert crop_starts(300, 200) == [0, 100]
    assert crop_starts(450, 200) == [0, 125, 250]


def left_right_photo(height: int, width: int) -> torch.Tensor:
    """L (1, H, W): dark (20) in the first half along the long side, bright (80) after."""
    lightness = torch.full((1, height, width), 20.0)
    if width >= height:
        lightness[:, :, width // 2 :] = 80.0
    else:
        lightness[:, height // 2 :, :] = 80.0
    return lightness


def mean_l(l_in: torch.Tensor, gray_in: torch.Tensor) -> torch.Tensor:
    """A stand-in head: (1, 2, 8, 8) logits equal to the mean scaled L of each of the
    input's 8x8 cells, so the canvas shows where each crop's cells land."""
    columns = torch.nn.functional.adaptive_avg_pool2d(l_in, (8, 8))
    return columns.expand(-1, 2, -1, -1)


@pytest.mark.parametrize("shape", [(200, 300), (300, 200)])
def test_crops_land_where_they_were_cut_for_landscape_and_portrait(shape):
    height, width = shape
    views = Views(mean_l, left_right_photo(height, width), ModelSpec())
    crops = views.logits("crops")
    wide = width >= height
    assert crops.shape == ((2, 8, 12) if wide else (2, 12, 8))
    along = crops[0].mean(0) if wide else crops[0].mean(1)  # profile along the long side
    assert along[:4].max() < 0 < along[-4:].min()  # dark end stays dark, bright end bright
    assert views.runs("crops") == 2
    views.logits("whole+crops+flip")
    assert views.runs("whole+crops+flip") == 6
    assert views.logits("whole").shape == (2, 8, 8)


@pytest.mark.parametrize("shape", [(200, 300), (300, 200)])
def test_crops_put_every_region_where_the_whole_view_has_it(shape):
    # L rises along both axes. The stand-in head's cells are local means of L, so the
    # stitched crops must show the same field as the whole view stretched to the canvas:
    # a crop placed or turned wrongly would show another ramp.
    height, width = shape
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    lightness = (20 + 40 * x + 30 * y)[None]
    views = Views(mean_l, lightness, ModelSpec())
    crops = views.logits("crops")[0]
    stretched = torch.nn.functional.interpolate(
        views.logits("whole")[None], size=crops.shape, mode="bilinear", align_corners=True
    )[0, 0]
    interior = (slice(1, -1), slice(1, -1))
    assert torch.allclose(crops[interior], stretched[interior], atol=0.03)


def test_a_square_photo_has_no_crops_and_flip_averages_the_mirror():
    lightness = torch.linspace(0, 100, 64).expand(1, 64, 64).clone()  # brighter to the right
    views = Views(mean_l, lightness, ModelSpec())
    assert torch.equal(views.logits("crops"), views.logits("whole"))
    assert views.runs("crops") == 1
    views.logits("whole+crops")
    assert views.runs("whole+crops") == 1  # the crop is the whole photo: one run
    # The stand-in head maps each column to its mean L, so the mirror image un-mirrored
    # gives the same columns: averaging them changes nothing but must not shift anything.
    assert torch.allclose(views.logits("flip"), views.logits("whole"), atol=1e-5)
    with pytest.raises(ValueError, match="unknown view"):
        views.logits("sideways")


def test_whole_view_scores_what_the_service_scores(tmp_path):
    torch.manual_seed(0)
    model = Colorizer(replace(TINY, head="classification")).eval()
    model.class_weights.copy_(torch.linspace(0.2, 5.0, len(model.class_weights)))
    model.with_decoding(0.7, 0.25)
    path = tmp_path / "m.pt"
    export(model, path)
    rows = measure(path, PHOTOS, views=tuple(PARTS), corrections=(0.25, 1.0), progress=False)
    whole = rows[0]
    assert whole["view"] == "whole" and whole["runs_per_photo"] == 1.0
    at_own_decoding = whole["rows"][0]
    assert (at_own_decoding["temperature"], at_own_decoding["prior_correction"]) == (0.7, 0.25)
    pipeline = ColorizePipeline.load(path, device="cpu", precision="fp32")
    served = evaluate(pipeline, PHOTOS, tmp_path / "report", progress=False)
    assert at_own_decoding["psnr"] == pytest.approx(served["psnr"], abs=1e-3)
    assert at_own_decoding["colorfulness"] == pytest.approx(served["colorfulness"], rel=1e-3)
    by_view = {r["view"]: r for r in rows}
    assert by_view["flip"]["runs_per_photo"] == 2.0
    sizes = [Image.open(f).size for f in find_images(PHOTOS)]
    crops = [len(crop_starts(max(w, h), min(w, h))) for w, h in sizes]
    assert max(crops) > 1  # some test photos are far from square
    assert by_view["crops"]["runs_per_photo"] == pytest.approx(sum(crops) / len(crops))
    everything = [2 * (1 + n if n > 1 else 1) for n in crops]  # both mirrorings
    assert by_view["whole+crops+flip"]["runs_per_photo"] == pytest.approx(
        sum(everything) / len(everything)
    )


def test_regression_models_are_refused(tmp_path, capsys):
    path = tmp_path / "reg.pt"
    export(Colorizer(TINY).eval(), path)
    with pytest.raises(ValueError, match="regression head"):
        measure(path, PHOTOS, progress=False)
    with pytest.raises(SystemExit):
        main(["--model", str(path), "--data", PHOTOS, "--views", "whole,sideways"])
    assert "unknown views" in capsys.readouterr().err
