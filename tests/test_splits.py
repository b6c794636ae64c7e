"""The Vinyals split: sizes, disjointness, both Omniglot folders, and rotations as Prototypical Networks made them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.scenarios import make_pools
from utils.config import PRESETS
from utils.splits import VINYALS_DIR, read_split_list, vinyals_split
from utils.tasks import make_task_pool


@pytest.fixture(scope="module")
def vinyals(background28, evaluation28):
    return vinyals_split(background28, evaluation28)


def test_sizes_and_no_overlap(vinyals):
    sizes = {part: len(names) for part, names in vinyals.names.items()}
    assert sizes == {"train": 1028, "val": 172, "test": 423}
    assert [len(vinyals.train), len(vinyals.val), len(vinyals.test)] == [1028, 172, 423]
    train, val, test = (set(vinyals.names[p]) for p in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    # train + val is the 1,200 training characters of Vinyals et al. (trainval.txt)
    assert train | val == set(read_split_list(VINYALS_DIR / "trainval.txt"))
    # Both folders contribute: all test alphabets are evaluation alphabets, training uses both.
    alphabets = {p: {n.split("/")[0] for n in vinyals.names[p]} for p in ("train", "test")}
    assert len(alphabets["train"]) > 30 and len(alphabets["test"]) == 13


def test_rows_hold_the_named_characters(vinyals, background28, evaluation28):
    name = vinyals.names["test"][5]
    assert torch.equal(vinyals.test[5], evaluation28.images[evaluation28.index_of(name)])
    row, name = next((i, n) for i, n in enumerate(vinyals.names["train"]) if n in background28.characters)
    assert torch.equal(vinyals.train[row], background28.images[background28.index_of(name)])
    assert vinyals.names["train"][0] in evaluation28.characters  # Angelic: training also draws on evaluation


def test_pool_draws_exactly_the_listed_rotated_classes(vinyals):
    """One task with every class of the val part: its (character, rotation) classes are val.txt's lines."""
    pool = make_task_pool(vinyals.val, 1, 172 * 4, 1, 1, torch.Generator().manual_seed(0), rotations=True)
    drawn = {f"{vinyals.names['val'][c]}/rot{90 * r:03d}" for c, r in zip(pool.classes[0].tolist(),
                                                                          pool.rotations[0].tolist(), strict=True)}
    assert drawn == set((VINYALS_DIR / "val.txt").read_text().split())


def test_rotation_matches_pil_as_in_prototypical_networks(vinyals):
    """Snell et al. rotate with PIL's Image.rotate (counter-clockwise); the task pool must show the same image."""
    pool = make_task_pool(vinyals.test, 8, 5, 1, 1, torch.Generator().manual_seed(3), rotations=True)
    batch = pool.batch(slice(None))
    checked = 0
    for task in range(len(pool)):
        for slot in range(pool.n_way):
            turns = int(pool.rotations[task, slot])
            source = vinyals.test[pool.classes[task, slot], pool.examples[task, slot, 0]].numpy()
            expected = np.asarray(Image.fromarray(source).rotate(90 * turns)) / 255
            shown = batch.support_x[task, slot, 0].numpy()  # k_shot = 1: support row = slot
            np.testing.assert_allclose(shown, expected, atol=1e-6)
            checked += turns != 0
    assert checked > 10  # the check covered rotated classes, not only rot000


def test_make_pools_honours_the_split(background28, evaluation28, vinyals):
    config = PRESETS["smoke"].replace(split="vinyals")
    pools = make_pools(background28, evaluation28, config)
    assert pools.test.images.shape[0] == 423 and pools.val.images.shape[0] == 172
    assert torch.equal(pools.train_images, vinyals.train)
    assert all(bool((p.rotations != 0).any()) for p in (pools.train, pools.val, pools.test))
    official = make_pools(background28, evaluation28, PRESETS["smoke"])
    assert official.test.images.shape[0] == len(evaluation28.characters) and not bool(official.test.rotations.any())
    with pytest.raises(ValueError, match="split must be"):
        make_pools(background28, evaluation28, PRESETS["smoke"].replace(split="other"))


def test_partial_rotations_are_rejected(tmp_path):
    (tmp_path / "bad.txt").write_text("A/character01/rot000\nA/character01/rot090\n")
    with pytest.raises(ValueError, match="only some rotations"):
        read_split_list(tmp_path / "bad.txt")
    (tmp_path / "worse.txt").write_text("A/character01\n")
    with pytest.raises(ValueError, match="line 1"):
        read_split_list(tmp_path / "worse.txt")
