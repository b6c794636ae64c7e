"""Character splits of Omniglot beyond the official background/evaluation one: the Vinyals split.

The MAML and ANIL papers (Finn et al., ICML 2017; Raghu et al., ICLR 2020, arXiv:1909.09157) do not use
Omniglot's official 30/20 alphabet split. They follow Vinyals et al. ("Matching Networks", NeurIPS 2016): both
official folders are pooled and 1,200 characters train, the rest test, and every character is augmented with
its rotations by 90, 180 and 270 degrees, each rotation counting as a class of its own. The lists shipped in
``utils/splits/vinyals/`` are those of Snell et al.'s Prototypical Networks (MIT licence, see the README there):
1,028 training, 172 validation (together the 1,200) and 423 test characters, each listed with ``rot000`` to
``rot270``. Figures obtained on the official split are therefore not directly comparable with the papers'.

:func:`vinyals_split` returns the image rows of each part; a :class:`utils.tasks.TaskPool` made from them with
``rotations=True`` draws exactly the listed classes, because every listed character comes with its 4 rotations
and ``rotNNN`` means NNN degrees counter-clockwise, the convention of both PIL (used by Snell et al.) and
``torch.rot90`` (used by :mod:`utils.tasks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from utils.data import OmniglotSplit
from utils.io import error_path

SPLITS_DIR = Path(__file__).resolve().parent
VINYALS_DIR = SPLITS_DIR / "vinyals"
VINYALS_PARTS = ("train", "val", "test")
ROTATIONS = ("rot000", "rot090", "rot180", "rot270")  # quarter turn r is ROTATIONS[r]


class CharacterSplit(NamedTuple):
    """Images of each part of a character split; rows of a part are characters, in list order.

    Attributes:
        train: uint8 ``(characters, 20, H, W)`` meta-training characters.
        val: uint8 ``(characters, 20, H, W)`` validation characters (model selection).
        test: uint8 ``(characters, 20, H, W)`` meta-test characters.
        names: the ``"Alphabet/characterNN"`` name of every row, per part.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    names: dict[str, list[str]]


def read_split_list(path: str | Path) -> list[str]:
    """Characters named by a split file of ``Alphabet/characterNN/rotNNN`` lines, in first-seen order.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a line is malformed, or a character is not listed with all four rotations (a
            :class:`utils.tasks.TaskPool` draws a character's rotations all or none).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Split list {error_path(path)} does not exist; it ships in {SPLITS_DIR.name}/.")
    rotations: dict[str, set[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").split(), start=1):
        alphabet, character, rotation = [*line.split("/"), "", ""][:3]
        if not (alphabet and character) or rotation not in ROTATIONS or line.count("/") != 2:
            raise ValueError(f"{error_path(path)} line {number}: expected Alphabet/characterNN/rotNNN, got {line!r}.")
        rotations.setdefault(f"{alphabet}/{character}", set()).add(rotation)
    partial = [name for name, seen in rotations.items() if len(seen) != len(ROTATIONS)]
    if partial:
        raise ValueError(
            f"{error_path(path)} lists only some rotations of {len(partial)} characters (e.g. {partial[0]!r}); "
            "every character must come with rot000, rot090, rot180 and rot270."
        )
    return list(rotations)


def vinyals_split(background: OmniglotSplit, evaluation: OmniglotSplit, folder: str | Path = VINYALS_DIR
                  ) -> CharacterSplit:
    """The Vinyals train/val/test characters, gathered from both official Omniglot folders.

    Args:
        background: the ``images_background`` split (:func:`utils.data.load_omniglot`).
        evaluation: the ``images_evaluation`` split, at the same image size.
        folder: where ``train.txt``, ``val.txt`` and ``test.txt`` are.

    Returns:
        A :class:`CharacterSplit`; draw its tasks with ``rotations=True`` to get the listed classes (x4).

    Raises:
        ValueError: a listed character is in neither folder, or the folders differ in image size.
    """
    if background.images.shape[1:] != evaluation.images.shape[1:]:
        raise ValueError(
            f"background and evaluation images differ in shape ({tuple(background.images.shape[1:])} vs "
            f"{tuple(evaluation.images.shape[1:])}); load both at the same image_size."
        )
    row = {name: i for i, name in enumerate(background.characters + evaluation.characters)}
    images = torch.cat([background.images, evaluation.images])
    names = {part: read_split_list(Path(folder) / f"{part}.txt") for part in VINYALS_PARTS}
    missing = [name for part in names.values() for name in part if name not in row]
    if missing:
        raise ValueError(
            f"{len(missing)} characters of the Vinyals split (e.g. {missing[0]!r}) are in neither Omniglot folder; "
            "load the complete images_background and images_evaluation."
        )
    parts = {part: images[torch.tensor([row[n] for n in names[part]])] for part in VINYALS_PARTS}
    return CharacterSplit(**parts, names=names)
