"""Tests for utils/data.py on the real Omniglot data and on tiny fake trees built from real PNGs."""

from __future__ import annotations

import os
import re
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.utils as tv_download
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.datasets import Omniglot

import utils.data as data
from utils.data import load_omniglot, split_characters, to_float

OFFICIAL_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}


def _listing(folder: Path) -> tuple[list[str], list[str]]:
    """Independent reference: alphabets and ``Alphabet/characterNN`` names straight from os.walk."""
    alphabets = sorted(d for d in os.listdir(folder) if (folder / d).is_dir())
    characters = [f"{a}/{c}" for a in alphabets for c in sorted(os.listdir(folder / a))]
    return alphabets, characters


@pytest.mark.parametrize(
    ("fixture", "alphabets", "characters", "images"),
    [("background28", 30, 964, 19_280), ("evaluation28", 20, 659, 13_180)],
)
def test_counts_shapes_and_order(request, omniglot_root, fixture, alphabets, characters, images):
    split = request.getfixturevalue(fixture)
    assert split.images.dtype == torch.uint8
    assert tuple(split.images.shape) == (characters, 20, 28, 28)
    assert split.images.shape[0] * split.images.shape[1] == images
    assert len(split.alphabets) == alphabets and len(split.characters) == characters
    ref_alphabets, ref_characters = _listing(omniglot_root / "omniglot-py" / data.SPLIT_FOLDERS[split.split])
    assert split.alphabets == ref_alphabets
    assert split.characters == ref_characters
    owners = [split.alphabets[i] for i in split.alphabet_index.tolist()]
    assert owners == [c.split("/")[0] for c in ref_characters]


def test_polarity_ink_is_high_and_minority(background28):
    floats = to_float(background28.images[:50])
    assert floats.dtype == torch.float32 and floats.min() >= 0.0 and floats.max() <= 1.0
    assert (floats > 0.5).float().mean() < 0.2  # ink is a small minority of the pixels
    assert floats.median() == 0.0  # background (most pixels) is stored as 0
    frame = torch.cat([floats[..., 0, :], floats[..., -1, :], floats[..., 0], floats[..., -1]], dim=-1)
    assert frame.mean() < 0.05  # the paper around a character is background
    assert floats.amax(dim=(-2, -1)).min() > 0.5  # every drawing has some ink


def test_decoded_pixels_match_independent_reference(omniglot_root, make_fake_omniglot, tmp_path):
    root = make_fake_omniglot(tmp_path / "data", num_alphabets=1, characters_per_alphabet=1)
    native = load_omniglot(root, "background", image_size=105, cache_dir=tmp_path / "cache", progress=False)
    small = load_omniglot(root, "background", image_size=28, cache_dir=tmp_path / "cache", progress=False)
    files = sorted((root / "omniglot-py" / "images_background").rglob("*.png"), key=lambda p: p.name)
    # Native size: the 1-bit PNG read by numpy (True = white paper) must map to ink = 255, paper = 0.
    reference = torch.from_numpy(np.stack([np.where(np.array(Image.open(f)), 0, 255) for f in files]))
    assert torch.equal(native.images[0], reference.to(torch.uint8))
    assert set(native.images.unique().tolist()) == {0, 255}
    # 28 px: close to torchvision's antialiased bilinear resize of the native image (a different filter).
    expected = TF.resize(native.images[0].float(), [28, 28], antialias=True)
    assert (small.images[0].float() - expected).abs().mean() < 6.0


def test_cache_is_used_on_second_load(make_fake_omniglot, tmp_path, monkeypatch):
    root = make_fake_omniglot(tmp_path / "data")
    first = load_omniglot(root, "background", image_size=28, cache_dir=tmp_path / "cache", progress=False)
    cache_file = tmp_path / "cache" / "omniglot_background_28.pt"
    header = torch.load(cache_file, weights_only=True)["header"]
    assert header["format_version"] == data.CACHE_FORMAT_VERSION
    assert (header["split"], header["image_size"], header["num_characters"]) == ("background", 28, 4)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the PNGs were decoded again although a valid cache exists")

    monkeypatch.setattr(data, "_decode_png", no_decoding)
    second = load_omniglot(root, "background", image_size=28, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(first.images, second.images)
    assert (first.alphabets, first.characters) == (second.alphabets, second.characters)
    assert torch.equal(first.alphabet_index, second.alphabet_index)


def test_default_cache_dir_is_under_root(make_fake_omniglot, tmp_path):
    root = make_fake_omniglot(tmp_path / "data", num_alphabets=1, characters_per_alphabet=1)
    load_omniglot(root, "background", image_size=16, progress=False)
    assert (root / "cache" / "omniglot_background_16.pt").is_file()


def _corrupt_by_truncation(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt_by_tampering(path: Path) -> None:
    payload = torch.load(path, weights_only=True)
    payload["images"][0, 0, 10, 10] ^= 0xFF  # header (and checksum) left as they were
    torch.save(payload, path)


@pytest.mark.parametrize("corrupt", [_corrupt_by_truncation, _corrupt_by_tampering])
def test_corrupt_cache_is_rebuilt_with_warning(make_fake_omniglot, tmp_path, corrupt):
    root = make_fake_omniglot(tmp_path / "data")
    original = load_omniglot(root, "background", image_size=28, cache_dir=tmp_path / "cache", progress=False)
    cache_file = tmp_path / "cache" / "omniglot_background_28.pt"
    corrupt(cache_file)
    with pytest.warns(UserWarning, match=re.escape(str(cache_file))):
        rebuilt = load_omniglot(
            root, "background", image_size=28, cache_dir=tmp_path / "cache", progress=False
        )
    assert torch.equal(rebuilt.images, original.images)
    # The rewritten cache is valid again: no warning on the next load.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_omniglot(root, "background", image_size=28, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(again.images, original.images)


def test_corrupt_png_raises_value_error_naming_the_file(make_fake_omniglot, tmp_path):
    root = make_fake_omniglot(tmp_path / "data")
    broken = sorted((root / "omniglot-py" / "images_background").rglob("*.png"))[7]
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated download
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        load_omniglot(root, "background", image_size=28, cache_dir=tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_character_with_missing_drawings_is_rejected(make_fake_omniglot, tmp_path):
    root = make_fake_omniglot(tmp_path / "data")
    victim = sorted((root / "omniglot-py" / "images_background").rglob("*.png"))[0]
    victim.unlink()
    with pytest.raises(ValueError, match=rf"{re.escape(str(victim.parent))} holds 19 PNG files"):
        load_omniglot(root, "background", image_size=28, cache_dir=tmp_path / "cache", progress=False)


def test_interrupted_cache_write_leaves_no_partial_file(make_fake_omniglot, tmp_path, monkeypatch):
    root = make_fake_omniglot(tmp_path / "data")
    real_save = torch.save

    def dies_half_way(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half a cache")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(RuntimeError, match="disk full"):
        load_omniglot(root, "background", image_size=28, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_omniglot(root, "background", image_size=28, cache_dir=tmp_path / "cache", progress=False)


def test_unwritable_cache_dir_raises_permission_error_and_leaves_no_file(
    make_fake_omniglot, tmp_path, monkeypatch
):
    root = make_fake_omniglot(tmp_path / "data")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before checking that the cache can be written")

    monkeypatch.setattr(data, "_decode_png", no_decoding)
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    # A path *through a regular file* cannot be created even by root (tests may run as root).
    with pytest.raises(PermissionError, match=re.escape(str(blocker / "cache"))):
        load_omniglot(root, "background", image_size=28, cache_dir=blocker / "cache", progress=False)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert blocker.read_text() == "not a folder"


def test_missing_data_names_folder_and_zips(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_omniglot(tmp_path, "evaluation", cache_dir=tmp_path / "cache", progress=False)
    message = str(info.value)
    assert str(tmp_path / "omniglot-py" / "images_evaluation") in message
    for expected in ("images_background.zip", "images_evaluation.zip", "download=True", "unzip"):
        assert expected in message


def test_failed_download_raises_file_not_found_with_instructions(tmp_path, monkeypatch):
    cause = urllib.error.URLError("no network")

    def offline(*args, **kwargs):
        raise cause

    monkeypatch.setattr(tv_download, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match=r"download failed.*images_background\.zip") as info:
        load_omniglot(tmp_path, "background", download=True, cache_dir=tmp_path / "cache", progress=False)
    assert info.value.__cause__ is cause
    assert "unzip them into" in str(info.value)


def test_download_uses_official_archive(make_fake_omniglot, tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, Path(download_root), filename, md5))
        make_fake_omniglot(Path(download_root).parent)  # what extracting the zip would produce

    monkeypatch.setattr(tv_download, "download_and_extract_archive", fake_download)
    root = tmp_path / "data"
    split = load_omniglot(root, "background", download=True, cache_dir=tmp_path / "cache", progress=False)
    assert tuple(split.images.shape) == (4, 20, 28, 28)
    url, download_root, filename, md5 = calls[0]
    assert url == "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_background.zip"
    assert (download_root, filename) == (root / "omniglot-py", "images_background.zip")
    assert md5 == OFFICIAL_MD5["images_background"] == Omniglot.zips_md5["images_background"]
    assert Omniglot.zips_md5 == OFFICIAL_MD5
    load_omniglot(root, "background", download=True, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 1  # present data is never downloaded again


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "train"}, r"split='train' is not an Omniglot split"),
        ({"image_size": 0}, r"image_size=0 must be an integer >= 8"),
        ({"image_size": -28}, r"image_size=-28 must be an integer >= 8"),
        ({"image_size": 4}, r"image_size=4 must be an integer >= 8"),
        ({"image_size": 28.0}, r"image_size=28\.0 must be an integer"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs, match):
    arguments = {"split": "background", "image_size": 28} | kwargs
    with pytest.raises(ValueError, match=match):
        load_omniglot(tmp_path, cache_dir=tmp_path / "cache", progress=False, **arguments)


def test_to_float_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        to_float(torch.zeros(2, 2))
    assert torch.equal(to_float(torch.tensor([0, 51, 255], dtype=torch.uint8)), torch.tensor([0.0, 0.2, 1.0]))


def test_split_characters_disjoint_covering_and_seeded(background28):
    train, val = split_characters(background28, 0.2, np.random.default_rng(0))
    assert train.dtype == val.dtype == torch.long
    assert len(val) == round(0.2 * 964) and len(train) == 964 - len(val)
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(964))
    same_train, same_val = split_characters(background28, 0.2, np.random.default_rng(0))
    assert torch.equal(train, same_train) and torch.equal(val, same_val)
    _, other_val = split_characters(background28, 0.2, np.random.default_rng(1))
    assert not torch.equal(val, other_val)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, 1e-6])
def test_split_characters_rejects_bad_fraction(background28, fraction):
    with pytest.raises(ValueError, match=rf"val_fraction={re.escape(str(fraction))}"):
        split_characters(background28, fraction, np.random.default_rng(0))


def test_index_of_and_repr(background28):
    name = background28.characters[123]
    assert background28.index_of(name) == background28.index_of(123) == 123
    with pytest.raises(ValueError, match="Unknown character"):
        background28.index_of("Latin/character99")
    with pytest.raises(ValueError, match="character=964 is out of range"):
        background28.index_of(964)
    assert "characters=964" in repr(background28) and len(repr(background28)) < 200
