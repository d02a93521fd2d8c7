"""Training data: skipping bad files, determinism, sample contracts, val split."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serving.runtime.colorspace import rgb_to_lab
from serving.runtime.model_spec import ModelSpec
from training.data import PhotoDataset, collate, find_images, in_val_split, split_files


def _photo(path: Path, seed: int, size=(120, 90), color=True) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    if not color:
        arr[..., 1] = arr[..., 0]
        arr[..., 2] = arr[..., 0]
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    _photo(tmp_path / "a.jpg", 0)
    _photo(tmp_path / "sub" / "b.png", 1)
    _photo(tmp_path / "c.webp", 2)
    _photo(tmp_path / "d.bmp", 3)
    _photo(tmp_path / "gray_rgb.jpg", 4, color=False)  # RGB file without color: runtime skip
    Image.new("L", (50, 50), 128).save(tmp_path / "gray.png")  # gray mode: scan skip
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "readme.txt").write_text("ignored: not an image suffix")
    good = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return tmp_path


def test_find_images_walks_the_tree(folder):
    names = {p.name for p in find_images(folder)}
    assert {"a.jpg", "b.png", "c.webp", "d.bmp"} <= names
    assert "readme.txt" not in names


def test_bad_files_are_skipped_and_counted_never_crash(folder):
    train, val, skipped = split_files(folder, folder, 0.0)
    assert skipped["not an image or corrupt"] == 1  # notes.jpg
    assert skipped["grayscale"] == 1  # gray.png
    ds = PhotoDataset(train, seed=0)
    l_in, gray, ab, runtime = collate([ds[i] for i in range(len(ds))])
    assert runtime == {"grayscale": 1, "corrupt": 1}  # gray_rgb.jpg, truncated.jpg
    assert l_in.shape == (4, 1, 224, 224)
    assert gray.shape == (4, 1, 299, 299)
    assert ab.shape == (4, 2, 224, 224)
    for t in (l_in, gray, ab):
        assert float(t.min()) >= -1 and float(t.max()) <= 1


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no usable color photos"):
        split_files(tmp_path, None, 0.1)
    with pytest.raises(FileNotFoundError):
        split_files(tmp_path / "nope", None, 0.1)


def test_augmentation_is_deterministic_per_seed_and_epoch(folder):
    files = sorted(folder.glob("*.jpg"))[:1] + sorted(folder.glob("*.webp"))
    a, b, c = PhotoDataset(files, seed=7), PhotoDataset(files, seed=7), PhotoDataset(files, seed=8)
    for x, y in zip(a[0], b[0], strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0][2], c[0][2])
    b.set_epoch(1)
    assert not torch.equal(a[0][2], b[0][2])


def test_unaugmented_sample_matches_the_color_math(folder):
    spec = ModelSpec()
    ds = PhotoDataset([folder / "a.jpg"], augment=None)
    l_in, gray, ab = ds[0]
    # A flat color photo: every pixel's ab equals that color's Lab a*b*.
    flat = folder / "flat.png"
    Image.new("RGB", (64, 48), (200, 60, 30)).save(flat)
    l_in, gray, ab = PhotoDataset([flat], augment=None)[0]
    lab = rgb_to_lab(torch.tensor([200, 60, 30]).float().div(255).view(3, 1, 1))
    assert torch.allclose(ab.mean(dim=(1, 2)), lab[1:, 0, 0] / spec.ab_scale, atol=1e-3)
    assert torch.allclose(l_in.mean(), (lab[0, 0, 0] - spec.l_center) / spec.l_scale, atol=1e-3)


def test_val_split_by_name_hash_is_stable():
    names = [Path(f"img_{i}.jpg") for i in range(2000)]
    chosen = [p for p in names if in_val_split(p, 0.1)]
    assert 150 < len(chosen) < 250
    assert chosen == [p for p in names if in_val_split(p, 0.1)]
