"""Tests for utils/tasks.py: task invariants, reproducibility, rotations and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.tasks import TaskBatch, make_task_pool, sample_tasks, validate_task_shape


def _tagged_images(num_classes: int = 12, size: int = 8, seed: int = 0) -> torch.Tensor:
    """uint8 ``(num_classes, 20, size, size)`` whose pixel (0, 0) is the class and (0, 1) the drawer.

    The tags let a test recover, from the gathered pixels alone, which class and drawer each image came from:
    an independent check of the pool's index bookkeeping.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_classes, 20, size, size), dtype=torch.uint8, generator=generator)
    images[:, :, 0, 0] = torch.arange(num_classes, dtype=torch.uint8).view(-1, 1)
    images[:, :, 0, 1] = torch.arange(20, dtype=torch.uint8).view(1, -1)
    return images


def _tags(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, drawer) tags of float images ``(tasks, n, 1, H, W)`` made by :func:`_tagged_images`."""
    pixels = (x[:, :, 0, 0, :2] * 255).round().long()
    return pixels[..., 0], pixels[..., 1]


def test_shapes_dtypes_and_label_ranges(background28):
    batch = sample_tasks(background28.images, 16, 5, 1, 5, torch.Generator().manual_seed(0))
    assert isinstance(batch, TaskBatch)
    assert tuple(batch.support_x.shape) == (16, 5, 1, 28, 28)
    assert tuple(batch.query_x.shape) == (16, 25, 1, 28, 28)
    assert tuple(batch.support_y.shape) == (16, 5) and tuple(batch.query_y.shape) == (16, 25)
    assert batch.support_x.dtype == batch.query_x.dtype == torch.float32
    assert batch.support_y.dtype == batch.query_y.dtype == torch.long
    assert batch.support_x.min() >= 0.0 and batch.query_x.max() <= 1.0
    for labels in (batch.support_y, batch.query_y):
        assert labels.min() >= 0 and labels.max() < 5


def test_each_class_has_k_support_and_q_query_from_disjoint_drawers():
    n_way, k_shot, k_query = 5, 3, 4
    batch = sample_tasks(_tagged_images(), 50, n_way, k_shot, k_query, torch.Generator().manual_seed(1))
    support_class, support_drawer = _tags(batch.support_x)
    query_class, query_drawer = _tags(batch.query_x)
    for t in range(50):
        for label in range(n_way):
            s_mask, q_mask = batch.support_y[t] == label, batch.query_y[t] == label
            assert int(s_mask.sum()) == k_shot and int(q_mask.sum()) == k_query
            classes = torch.cat([support_class[t][s_mask], query_class[t][q_mask]]).unique()
            assert len(classes) == 1  # one label = one class
            drawers = torch.cat([support_drawer[t][s_mask], query_drawer[t][q_mask]])
            assert len(drawers.unique()) == k_shot + k_query  # no drawing used twice
        # n_way distinct classes per task
        assert len(support_class[t].unique()) == n_way


def test_labels_are_a_fresh_permutation_per_task():
    pool = make_task_pool(_tagged_images(), 200, 5, 2, 3, torch.Generator().manual_seed(2))
    batch = pool.batch(slice(None))
    for t in range(len(pool)):
        assert sorted(pool.labels[t].tolist()) == list(range(5))
        # class-slot-major order: slot j's k_shot images carry label labels[t, j]
        assert torch.equal(batch.support_y[t], pool.labels[t].repeat_interleave(2))
        assert torch.equal(batch.query_y[t], pool.labels[t].repeat_interleave(3))
    assert len({tuple(row) for row in pool.labels.tolist()}) > 50  # not one fixed permutation
    # The label given to a class is random too: the same class is not always label 0.
    class_of_label0 = _tags(batch.support_x)[0][batch.support_y == 0]
    assert len(class_of_label0.unique()) > 5


def test_pool_indices_are_disjoint_and_real_drawings_differ(background28):
    pool = make_task_pool(background28.images, 30, 5, 2, 3, torch.Generator().manual_seed(3))
    examples = pool.examples
    assert tuple(examples.shape) == (30, 5, 5)
    assert all(len(set(row)) == 5 for row in examples.view(-1, 5).tolist())  # support ∩ query = ∅
    assert all(len(set(row)) == 5 for row in pool.classes.tolist())
    batch = pool.batch(slice(None))
    support = batch.support_x.view(30, 5, 2, -1)
    query = batch.query_x.view(30, 5, 3, -1)
    # Different drawers never produce pixel-identical images of the same class.
    identical = (support.unsqueeze(3) == query.unsqueeze(2)).all(dim=-1)
    assert not identical.any()


def test_batch_gathers_the_indexed_pixels(background28):
    pool = make_task_pool(background28.images, 4, 3, 1, 2, torch.Generator().manual_seed(4))
    batch = pool.batch([2, 0])
    for out_t, t in enumerate([2, 0]):
        for slot in range(3):
            c, (shot, *queries) = int(pool.classes[t, slot]), pool.examples[t, slot].tolist()
            expected = background28.images[c, shot].float() / 255
            assert torch.allclose(batch.support_x[out_t, slot, 0], expected)
            for q, drawer in enumerate(queries):
                expected = background28.images[c, drawer].float() / 255
                assert torch.allclose(batch.query_x[out_t, slot * 2 + q, 0], expected)


def test_same_seed_same_tasks_and_different_seed_differs():
    images = _tagged_images()
    first = sample_tasks(images, 8, 5, 1, 5, torch.Generator().manual_seed(7))
    again = sample_tasks(images, 8, 5, 1, 5, torch.Generator().manual_seed(7))
    other = sample_tasks(images, 8, 5, 1, 5, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first.query_x, other.query_x)
    pool_a = make_task_pool(images, 8, 5, 1, 5, torch.Generator().manual_seed(7))
    pool_b = make_task_pool(images, 8, 5, 1, 5, torch.Generator().manual_seed(7))
    for name in ("classes", "rotations", "examples", "labels"):
        assert torch.equal(getattr(pool_a, name), getattr(pool_b, name))


def test_no_global_rng_is_used():
    images = _tagged_images()
    torch.manual_seed(0)
    first = sample_tasks(images, 4, 5, 1, 1, torch.Generator().manual_seed(9))
    torch.manual_seed(123)
    second = sample_tasks(images, 4, 5, 1, 1, torch.Generator().manual_seed(9))
    assert torch.equal(first.support_x, second.support_x)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "meta"])
def test_device_argument_is_honoured(device):
    # "meta" is a device other than the images' one that exists on every machine.
    batch = sample_tasks(_tagged_images(), 2, 3, 1, 1, torch.Generator().manual_seed(0), device=device)
    assert {t.device for t in batch} == {torch.device(device)}


def test_rotated_classes_are_rot90_of_the_original():
    images = _tagged_images(num_classes=3, size=9)
    # 10-way from 3 characters is only possible with the 4 rotations (12 classes).
    pool = make_task_pool(images, 40, 10, 1, 2, torch.Generator().manual_seed(5), rotations=True)
    assert set(pool.rotations.unique().tolist()) == {0, 1, 2, 3}
    for t in range(len(pool)):  # the 10 classes of a task are distinct (character, rotation) pairs
        assert len(set(zip(pool.classes[t].tolist(), pool.rotations[t].tolist(), strict=True))) == 10
    batch = pool.batch(slice(None))
    query = batch.query_x.view(40, 10, 2, 9, 9)
    for t, slot in [(t, s) for t in range(0, 40, 7) for s in range(10)]:
        c, turns = int(pool.classes[t, slot]), int(pool.rotations[t, slot])
        for q, drawer in enumerate(pool.examples[t, slot, 1:].tolist()):
            # numpy's rot90 is the independent reference for the counter-clockwise quarter turns
            expected = np.rot90(images[c, drawer].numpy(), k=turns).copy()
            assert torch.equal((query[t, slot, q] * 255).round().to(torch.uint8), torch.from_numpy(expected))
    with pytest.raises(ValueError, match="n_way=10 but only 3 classes"):
        make_task_pool(images, 4, 10, 1, 2, torch.Generator().manual_seed(5), rotations=False)


def test_pool_len_repr_and_single_index():
    pool = make_task_pool(_tagged_images(), 7, 4, 2, 3, torch.Generator().manual_seed(0))
    assert len(pool) == 7 and pool.n_way == 4 and (pool.k_shot, pool.k_query) == (2, 3)
    assert "tasks=7" in repr(pool)
    single = pool.batch(3)
    assert tuple(single.support_x.shape) == (1, 8, 1, 8, 8)
    assert torch.equal(single.query_x, pool.batch([3]).query_x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_way": 30}, r"n_way=30 but only 20 classes are available"),
        ({"k_shot": 16}, r"k_shot \+ k_query = 21 exceeds the 20 drawings per character"),
        ({"n_way": 0}, r"n_way must be a positive integer, got 0"),
        ({"k_shot": 0}, r"k_shot must be a positive integer, got 0"),
        ({"k_query": -1}, r"k_query must be a positive integer, got -1"),
        ({"num_tasks": 0}, r"num_tasks must be a positive integer, got 0"),
        ({"n_way": 2.5}, r"n_way must be a positive integer, got 2.5"),
    ],
)
def test_bad_task_shapes_raise_value_error(kwargs, match):
    arguments = {"num_tasks": 4, "n_way": 5, "k_shot": 5, "k_query": 5} | kwargs
    images = _tagged_images(num_classes=20)
    with pytest.raises(ValueError, match=match):
        make_task_pool(images, generator=torch.Generator().manual_seed(0), **arguments)
    with pytest.raises(ValueError, match=match):
        sample_tasks(images, generator=torch.Generator().manual_seed(0), **arguments)


def test_validate_task_shape_directly():
    validate_task_shape(5, 1, 19, num_classes=5)  # the limits themselves are fine
    with pytest.raises(ValueError, match="k_shot \\+ k_query = 11 exceeds the 10 drawings"):
        validate_task_shape(5, 1, 10, num_classes=5, examples_per_class=10)


def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match="images must be uint8"):
        make_task_pool(torch.zeros(5, 20, 8, 8), 2, 2, 1, 1, torch.Generator())
    with pytest.raises(ValueError, match="rotations=True needs square images"):
        make_task_pool(
            torch.zeros(5, 20, 8, 9, dtype=torch.uint8), 2, 2, 1, 1, torch.Generator(), rotations=True
        )
