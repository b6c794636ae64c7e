"""Omniglot, decoded once into uint8 tensors and cached on disk.

Omniglot (Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic program
induction", Science 350(6266), 2015) holds 1,623 handwritten characters from 50 alphabets, each drawn once
by 20 different people. The ``background`` split (30 alphabets, 964 characters, 19,280 images) is used for
meta-training and the ``evaluation`` split (20 alphabets, 659 characters, 13,180 images) for meta-testing,
as in ANIL: Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, arXiv:1909.09157.

Layout on disk (what ``torchvision.datasets.Omniglot`` extracts the official zips to)::

    ROOT/omniglot-py/images_background/<Alphabet>/characterNN/*.png
    ROOT/omniglot-py/images_evaluation/<Alphabet>/characterNN/*.png

Characters are ordered by alphabet name, then character folder, then file name (the file name's suffix is
the drawer number, so row ``d`` of a character is always its ``d``-th drawer).

Polarity: the PNGs are black ink (0) on a white background (1). We store **ink = 255, background = 0**, so
:func:`to_float` gives ink = 1.0 and background = 0.0. A zero background means zero input activations over
~95% of every image, which keeps the first convolution's response sparse, and it matches MAML's
preprocessing (which also inverts the images).

Sizes: ``image_size=105`` is the native resolution and ``image_size=28`` the MAML/ANIL standard; any size
>= 8 is accepted. Downscaling uses Pillow's LANCZOS filter, as MAML's ``resize_images.py`` does, but applied
after converting the 1-bit PNG to 8-bit grey: Pillow silently falls back to nearest-neighbour when resizing
1-bit images, which would alias the thin strokes.

Decoding runs in a single thread: on the 2-core reference machine a 2-4 worker thread pool was 3-130%
*slower* (each PNG takes ~0.1 ms, so GIL hand-offs dominate), and a cold decode of both splits takes only
a few seconds.
"""

from __future__ import annotations

import hashlib
import io
import numbers
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision.datasets.utils as tv_download
from PIL import Image
from torchvision.datasets import Omniglot
from tqdm.auto import tqdm

from utils.io import atomic_torch_save, ensure_writable_dir, error_path

SPLIT_FOLDERS = {"background": "images_background", "evaluation": "images_evaluation"}
DRAWINGS_PER_CHARACTER = 20
NATIVE_SIZE = 105
MIN_IMAGE_SIZE = 8
CACHE_FORMAT_VERSION = 1
# torchvision's constants are the official release's URL prefix and MD5 sums: reuse them, do not copy them.
DATA_FOLDER = Omniglot.folder  # "omniglot-py"
ZIP_URL_PREFIX = Omniglot.download_url_prefix
ZIP_MD5 = Omniglot.zips_md5


@dataclass(frozen=True, repr=False)
class OmniglotSplit:
    """One Omniglot split held in memory.

    Attributes:
        images: uint8 ``(characters, 20, H, W)``; ink = 255, background = 0.
        alphabets: alphabet names, sorted.
        characters: ``"Alphabet/characterNN"`` for each row of ``images``.
        alphabet_index: long ``(characters,)``, index into ``alphabets`` for each row of ``images``.
        split: ``"background"`` or ``"evaluation"``.
    """

    images: torch.Tensor
    alphabets: list[str]
    characters: list[str]
    alphabet_index: torch.Tensor
    split: str

    def __repr__(self) -> str:
        shape = ", ".join(str(n) for n in self.images.shape)
        return (
            f"OmniglotSplit(split={self.split!r}, alphabets={len(self.alphabets)}, "
            f"characters={len(self.characters)}, images={self.images.dtype}[{shape}])"
        )

    def index_of(self, character: int | str) -> int:
        """Row of ``images`` for a character given by row number or by ``"Alphabet/characterNN"`` name."""
        if isinstance(character, str):
            if character not in self.characters:
                raise ValueError(
                    f"Unknown character {character!r} in the {self.split} split; use a name such as "
                    f"{self.characters[0]!r} (see .characters) or a row number."
                )
            return self.characters.index(character)
        if not 0 <= character < len(self.characters):
            raise ValueError(
                f"character={character} is out of range: the {self.split} split has "
                f"{len(self.characters)} characters (0 to {len(self.characters) - 1})."
            )
        return int(character)


class _Layout(NamedTuple):
    """What the PNG tree of one split holds, in the canonical order."""

    alphabets: list[str]
    characters: list[str]
    alphabet_index: list[int]
    files: list[Path]  # 20 per character, character-major


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Convert uint8 images (ink = 255) to float32 in ``[0, 1]`` (ink = 1.0), keeping shape and device."""
    if images.dtype != torch.uint8:
        raise ValueError(f"to_float expects uint8 images (0-255), got dtype {images.dtype}.")
    return images.float().div_(255)


def load_omniglot(
    root: str | os.PathLike,
    split: str,
    image_size: int = 28,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> OmniglotSplit:
    """Load one Omniglot split as a uint8 tensor, decoding the PNGs only the first time.

    Args:
        root: folder that contains ``omniglot-py/`` (torchvision convention).
        split: ``"background"`` (meta-training) or ``"evaluation"`` (meta-testing).
        image_size: side of the square images; 28 (MAML standard) or 105 (native); any int >= 8 works.
        download: fetch the official zips with torchvision when the PNGs are missing.
        cache_dir: where the decoded tensor is cached (``<root>/cache`` by default).
        progress: show a progress bar while decoding.

    Returns:
        The split, with images of shape ``(characters, 20, image_size, image_size)``.

    Raises:
        ValueError: bad ``split`` or ``image_size``, or a corrupt PNG (named).
        FileNotFoundError: the PNGs are missing and could not be downloaded.
        PermissionError: ``cache_dir`` cannot be written.
    """
    _check_arguments(split, image_size)
    root = Path(root)
    cache_dir = Path(cache_dir) if cache_dir is not None else root / "cache"
    cache_path = cache_dir / f"omniglot_{split}_{image_size}.pt"
    cached = _read_cache(cache_path, split, image_size)
    if cached is not None:
        return cached
    folder = _ensure_images(root, split, download)
    # Fail before the slow decode, not after it, when the cache cannot be written.
    ensure_writable_dir(cache_path.parent)
    layout = _scan_layout(folder)
    desc = f"Decoding Omniglot {split} ({image_size}px)"
    images = _decode_images(layout.files, image_size, progress, desc)
    result = OmniglotSplit(
        images=images.view(len(layout.characters), DRAWINGS_PER_CHARACTER, image_size, image_size),
        alphabets=layout.alphabets,
        characters=layout.characters,
        alphabet_index=torch.tensor(layout.alphabet_index, dtype=torch.long),
        split=split,
    )
    atomic_torch_save(_cache_payload(result, folder), cache_path)
    return result


def split_characters(
    split: OmniglotSplit, val_fraction: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out a random fraction of a split's characters, e.g. background characters for validation.

    Args:
        split: the split whose characters are divided.
        val_fraction: fraction of characters in the validation part, strictly between 0 and 1.
        rng: seeded ``numpy.random.default_rng(seed)``; the only source of randomness.

    Returns:
        ``(train_idx, val_idx)``: disjoint, sorted long tensors of row indices that together cover every
        character.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), not {rng}.")
    num_characters = len(split.characters)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must lie strictly between 0 and 1 (e.g. 0.1).")
    num_val = round(val_fraction * num_characters)
    if not 0 < num_val < num_characters:
        raise ValueError(
            f"val_fraction={val_fraction} of {num_characters} characters leaves {num_val} for validation and "
            f"{num_characters - num_val} for training; choose a fraction that leaves both parts non-empty."
        )
    order = torch.from_numpy(rng.permutation(num_characters))
    return order[num_val:].sort().values, order[:num_val].sort().values


def _check_arguments(split: str, image_size: int) -> None:
    """Reject an unknown split name or an image size too small to draw a character in."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split={split!r} is not an Omniglot split; use one of {sorted(SPLIT_FOLDERS)}.")
    is_integer = isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool)
    if not is_integer or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size={image_size!r} must be an integer >= {MIN_IMAGE_SIZE}; "
            f"use 28 (MAML/ANIL standard) or {NATIVE_SIZE} (native resolution)."
        )


def _ensure_images(root: Path, split: str, download: bool) -> Path:
    """Return the split's PNG folder, downloading the official zip first when allowed and needed."""
    folder = root / DATA_FOLDER / SPLIT_FOLDERS[split]
    if _has_subfolders(folder):
        return folder
    if not download:
        raise _missing_data_error(root, folder, "download=False")
    zip_name = f"{SPLIT_FOLDERS[split]}.zip"
    try:
        # Looked up on the module at call time so that a monkeypatched torchvision function is honoured.
        tv_download.download_and_extract_archive(
            f"{ZIP_URL_PREFIX}/{zip_name}",
            download_root=str(root / DATA_FOLDER),
            filename=zip_name,
            md5=ZIP_MD5[SPLIT_FOLDERS[split]],
        )
    except (OSError, RuntimeError, ValueError, zipfile.BadZipFile) as err:  # network, disk, MD5, archive
        raise _missing_data_error(root, folder, f"the download failed: {err}") from err
    if not _has_subfolders(folder):
        raise _missing_data_error(root, folder, f"{zip_name} was downloaded but did not extract there")
    return folder


def _has_subfolders(folder: Path) -> bool:
    """True when ``folder`` exists and holds at least one sub-folder (an alphabet)."""
    return folder.is_dir() and any(entry.is_dir() for entry in folder.iterdir())


def _missing_data_error(root: Path, folder: Path, reason: str) -> FileNotFoundError:
    """A ``FileNotFoundError`` that says where we looked and how to put the data there."""
    zips = " and ".join(f"{name}.zip" for name in SPLIT_FOLDERS.values())
    data = error_path(root / DATA_FOLDER)
    return FileNotFoundError(
        f"Omniglot images not found in {error_path(folder)} ({reason}). Expected layout: "
        f"{data}/images_background/<Alphabet>/characterNN/*.png and likewise for "
        f"images_evaluation. Either pass download=True, or download {zips} by hand from "
        "https://github.com/brendenlake/omniglot/tree/master/python and unzip them into "
        f"{data}/."
    )


def _sorted_entries(folder: Path, directories: bool) -> list[Path]:
    """Sub-folders (or ``.png`` files) of ``folder``, sorted by name: the order must not depend on the OS."""
    if directories:
        return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)
    return sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png"), key=lambda p: p.name)


def _scan_layout(folder: Path) -> _Layout:
    """List alphabets, characters and their 20 PNGs, checking that every character has exactly 20 drawings."""
    layout = _Layout([], [], [], [])
    for alphabet_id, alphabet in enumerate(_sorted_entries(folder, directories=True)):
        layout.alphabets.append(alphabet.name)
        for character in _sorted_entries(alphabet, directories=True):
            pngs = _sorted_entries(character, directories=False)
            if len(pngs) != DRAWINGS_PER_CHARACTER:
                raise ValueError(
                    f"{error_path(character)} holds {len(pngs)} PNG files but every Omniglot character has "
                    f"{DRAWINGS_PER_CHARACTER} drawings; re-extract the official zip into "
                    f"{error_path(folder.parent)}."
                )
            layout.characters.append(f"{alphabet.name}/{character.name}")
            layout.alphabet_index.append(alphabet_id)
            layout.files.extend(pngs)
    return layout


def _decode_png(path: Path, image_size: int) -> np.ndarray:
    """Decode one Omniglot PNG to uint8 ``(image_size, image_size)`` with ink = 255.

    Raises:
        ValueError: naming ``path`` when the file is not a readable PNG (corrupt or truncated).
    """
    # Read the bytes first so that an access error stays an OSError instead of looking like corruption.
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            grey = image.convert("L")
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's errors for truncated / malformed files
        raise ValueError(
            f"Cannot decode Omniglot image {error_path(path)}: {err}. The file is corrupt or truncated; "
            "re-extract the official zip (or delete the folder and load with download=True)."
        ) from err
    if grey.size != (image_size, image_size):
        grey = grey.resize((image_size, image_size), Image.LANCZOS)
    return 255 - np.asarray(grey, dtype=np.uint8)


def _decode_images(files: list[Path], image_size: int, progress: bool, desc: str) -> torch.Tensor:
    """Decode PNGs into one uint8 tensor ``(len(files), image_size, image_size)``."""
    images = np.empty((len(files), image_size, image_size), dtype=np.uint8)
    for i, path in enumerate(tqdm(files, desc=desc, unit="img", disable=not progress)):
        images[i] = _decode_png(path, image_size)
    return torch.from_numpy(images)


def _checksum(images: torch.Tensor, characters: list[str], alphabet_index: torch.Tensor) -> str:
    """blake2b digest of the pixels and the names (~0.2 s for the 105px background split)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(memoryview(images.contiguous().numpy()).cast("B"))
    digest.update("\n".join(characters).encode())
    digest.update(memoryview(alphabet_index.contiguous().numpy()).cast("B"))
    return digest.hexdigest()


def _cache_payload(split: OmniglotSplit, source: Path) -> dict:
    """What is written to the cache file: a small header plus the split's tensors and names."""
    header = {
        "format_version": CACHE_FORMAT_VERSION,
        "split": split.split,
        "image_size": split.images.shape[-1],
        "num_alphabets": len(split.alphabets),
        "num_characters": len(split.characters),
        "drawings_per_character": DRAWINGS_PER_CHARACTER,
        "checksum": _checksum(split.images, split.characters, split.alphabet_index),
        "source": str(source),
    }
    return {
        "header": header,
        "images": split.images,
        "alphabets": split.alphabets,
        "characters": split.characters,
        "alphabet_index": split.alphabet_index,
    }


def _cache_problem(payload: object, split: str, image_size: int) -> str | None:
    """Describe why a loaded cache payload cannot be used, or return None when it is valid."""
    try:
        header, images = payload["header"], payload["images"]
        expected = (header["num_characters"], DRAWINGS_PER_CHARACTER, image_size, image_size)
        if (header["format_version"], header["split"], header["image_size"]) != (
            CACHE_FORMAT_VERSION,
            split,
            image_size,
        ):
            return f"header {header} does not match format {CACHE_FORMAT_VERSION}, {split}, {image_size}px"
        if images.dtype != torch.uint8 or tuple(images.shape) != expected:
            return f"images are {images.dtype}{tuple(images.shape)}, expected uint8{expected}"
        if _checksum(images, payload["characters"], payload["alphabet_index"]) != header["checksum"]:
            return "checksum mismatch"
    except (KeyError, TypeError, AttributeError) as err:  # payload missing fields or of the wrong type
        return f"malformed content ({type(err).__name__}: {err})"
    return None


def _read_cache(path: Path, split: str, image_size: int) -> OmniglotSplit | None:
    """Load a valid cache file; return None (with a warning naming the file if it was unusable) otherwise."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:  # truncated or not a torch file
        first_line = next(iter(str(err).splitlines()), "")
        problem = f"unreadable, {type(err).__name__}: {first_line}"
    else:
        problem = _cache_problem(payload, split, image_size)
    if problem is not None:
        warnings.warn(f"Omniglot cache {error_path(path)} is corrupt or stale ({problem}); rebuilding it.",
                      stacklevel=3)
        return None
    return OmniglotSplit(
        images=payload["images"],
        alphabets=list(payload["alphabets"]),
        characters=list(payload["characters"]),
        alphabet_index=payload["alphabet_index"],
        split=split,
    )
