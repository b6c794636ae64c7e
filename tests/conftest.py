"""Shared fixtures: the real Omniglot data (decoded once per session) and small fake Omniglot trees."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from utils.data import OmniglotSplit, load_omniglot

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    """Folder that contains ``omniglot-py/`` (env ``OMNIGLOT_ROOT``, default ``<repo>/../shared/data``)."""
    return Path(os.environ.get("OMNIGLOT_ROOT", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide cache folder, so that each split is decoded once per test session."""
    return tmp_path_factory.mktemp("omniglot_cache")


@pytest.fixture(scope="session")
def background28(omniglot_root: Path, cache_dir: Path) -> OmniglotSplit:
    return load_omniglot(omniglot_root, "background", image_size=28, cache_dir=cache_dir, progress=False)


@pytest.fixture(scope="session")
def evaluation28(omniglot_root: Path, cache_dir: Path) -> OmniglotSplit:
    return load_omniglot(omniglot_root, "evaluation", image_size=28, cache_dir=cache_dir, progress=False)


@pytest.fixture
def make_fake_omniglot(omniglot_root: Path) -> Callable[..., Path]:
    """Factory copying a few real characters into a tiny ``omniglot-py`` tree; returns that tree's root.

    The fake tree takes the first ``characters_per_alphabet`` characters of the first ``num_alphabets`` real
    background alphabets, so decoding it takes milliseconds while the PNGs stay genuine.
    """

    def make(dest: Path, num_alphabets: int = 2, characters_per_alphabet: int = 2) -> Path:
        source = omniglot_root / "omniglot-py" / "images_background"
        target = dest / "omniglot-py" / "images_background"
        for alphabet in sorted(p for p in source.iterdir() if p.is_dir())[:num_alphabets]:
            for character in sorted(p for p in alphabet.iterdir() if p.is_dir())[:characters_per_alphabet]:
                shutil.copytree(character, target / alphabet.name / character.name)
        # The shared data is read-only; the copies must be writable so tests can corrupt them.
        for path in target.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        return dest

    return make
