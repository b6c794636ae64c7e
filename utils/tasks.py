"""N-way K-shot few-shot tasks drawn from Omniglot characters, stored as indices and gathered on demand.

A task picks ``n_way`` distinct classes (characters, or rotated characters with ``rotations=True``), gives
them the labels of a random permutation of ``0..n_way-1``, and draws ``k_shot + k_query`` distinct drawers
of each class: the first ``k_shot`` form the support set, the rest the query set, so support and query never
share a drawing. This is the episodic protocol of MAML and ANIL (Raghu, Raghu, Bengio & Vinyals, "Rapid
Learning or Feature Reuse? Towards Understanding the Effectiveness of MAML", ICLR 2020, arXiv:1909.09157) on
Omniglot (Lake et al., Science 2015).

Order within a set is class-slot-major: the ``k_shot`` support images of class slot 0, then those of slot 1,
and so on; slot ``j`` carries label ``labels[task, j]``, so the label sequence of each task is a random
permutation repeated ``k_shot`` times (``support_y[t] == labels[t].repeat_interleave(k_shot)``).

Rotation augmentation (MAML protocol) multiplies the classes by 4: class ``c + r * C`` is character ``c``
rotated by ``r`` quarter turns counter-clockwise (``torch.rot90``). Only a rotation index is stored per
class slot and the rotation is applied to the gathered batch, so no rotated copy of the data is held.

A :class:`TaskPool` holds only index tensors drawn from an explicit ``torch.Generator`` (same seed, same
tasks) and gathers a meta-batch from the uint8 image tensor with one ``index_select`` per set: 16 tasks of
5-way 1-shot 5-query take about a millisecond at 28x28 on a 2-core CPU (``benchmarks/bench_data.py``).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from utils.data import DRAWINGS_PER_CHARACTER, to_float

NUM_ROTATIONS = 4
# Bounds the temporary random matrix of _draw_distinct to ~32 MB of float64, whatever the pool size.
_DRAW_CHUNK_ELEMENTS = 1 << 22


class TaskBatch(NamedTuple):
    """A meta-batch of few-shot tasks.

    Attributes:
        support_x: float ``(tasks, n_way * k_shot, 1, H, W)``, ink = 1.0.
        support_y: long ``(tasks, n_way * k_shot)``, labels in ``[0, n_way)``.
        query_x: float ``(tasks, n_way * k_query, 1, H, W)``.
        query_y: long ``(tasks, n_way * k_query)``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


@dataclass(frozen=True, eq=False, repr=False)
class TaskPool:
    """A fixed, reproducible set of tasks stored as indices into ``images``.

    Attributes:
        images: uint8 ``(characters, 20, H, W)`` the tasks are drawn from (not copied).
        classes: long ``(tasks, n_way)``, character row of each class slot.
        rotations: long ``(tasks, n_way)``, quarter turns (0-3) applied to each class slot.
        examples: long ``(tasks, n_way, k_shot + k_query)``, distinct drawers; the first ``k_shot`` are
            the support set.
        labels: long ``(tasks, n_way)``, a permutation of ``0..n_way-1`` per task: the label of each slot.
        k_shot: support images per class.
        k_query: query images per class.
    """

    images: torch.Tensor
    classes: torch.Tensor
    rotations: torch.Tensor
    examples: torch.Tensor
    labels: torch.Tensor
    k_shot: int
    k_query: int

    @property
    def n_way(self) -> int:
        """Classes per task."""
        return self.classes.shape[1]

    def __len__(self) -> int:
        return self.classes.shape[0]

    def __repr__(self) -> str:
        return (
            f"TaskPool(tasks={len(self)}, n_way={self.n_way}, k_shot={self.k_shot}, k_query={self.k_query}, "
            f"rotated_slots={int((self.rotations != 0).sum())}, image_size={tuple(self.images.shape[-2:])})"
        )

    def batch(
        self, index: torch.Tensor | slice | Sequence[int] | int, device: torch.device | str | None = None
    ) -> TaskBatch:
        """Materialise some of the pool's tasks.

        Args:
            index: which tasks: an int, a slice, a sequence of ints or a long/bool tensor.
            device: where the tensors are returned; ``None`` keeps the device of ``images`` (CPU for
                :func:`utils.data.load_omniglot` output).

        Returns:
            A :class:`TaskBatch` with images ``(tasks, n_way * k_shot, 1, H, W)`` and
            ``(tasks, n_way * k_query, 1, H, W)``.
        """
        if isinstance(index, numbers.Integral):
            index = [int(index)]  # keep the task dimension
        tasks, n_way = self.classes[index].shape
        device = torch.device(device) if device is not None else self.images.device
        # Row of each drawing in images.flatten(0, 1) and its quarter turns: (tasks, n_way, k_shot + k_query)
        rows = self.classes[index].unsqueeze(-1) * self.images.shape[1] + self.examples[index]
        turns = self.rotations[index].unsqueeze(-1).expand_as(rows)
        flat = self.images.flatten(0, 1)
        # A copy from pageable memory to a GPU waits for all queued GPU work; from pinned memory it does not.
        pin = device.type == "cuda" and flat.device.type == "cpu"
        order = self._set_major(rows).to(flat.device)
        # One gather and one float conversion for both sets (few large ops: on a busy 2-core CPU each one
        # can cost a scheduler time slice); uint8 is moved before the conversion, 4x fewer bytes.
        gathered = torch.empty((len(order), *flat.shape[1:]), dtype=flat.dtype, device=flat.device, pin_memory=pin)
        images = torch.index_select(flat, 0, order, out=gathered)
        images = _rotate(images, self._set_major(turns).to(flat.device))
        support, query = to_float(images.to(device, non_blocking=pin)).split(
            [tasks * n_way * self.k_shot, tasks * n_way * self.k_query]
        )
        labels = self.labels[index]
        labels = (labels.pin_memory() if pin else labels).to(device, non_blocking=pin)
        return TaskBatch(
            support_x=support.view(tasks, n_way * self.k_shot, 1, *flat.shape[1:]),
            support_y=labels.repeat_interleave(self.k_shot, dim=1),
            query_x=query.view(tasks, n_way * self.k_query, 1, *flat.shape[1:]),
            query_y=labels.repeat_interleave(self.k_query, dim=1),
        )

    def _set_major(self, per_drawing: torch.Tensor) -> torch.Tensor:
        """Flatten ``(tasks, n_way, k_shot + k_query)`` to all support entries, then all query entries."""
        return torch.cat(
            [per_drawing[..., : self.k_shot].reshape(-1), per_drawing[..., self.k_shot :].reshape(-1)]
        )


def validate_task_shape(
    n_way: int, k_shot: int, k_query: int, num_classes: int, examples_per_class: int = DRAWINGS_PER_CHARACTER
) -> None:
    """Check that N-way K-shot tasks with ``k_query`` queries per class can be drawn.

    Raises:
        ValueError: naming the offending numbers and how to fix them.
    """
    _check_positive(n_way=n_way, k_shot=k_shot, k_query=k_query)
    if n_way > num_classes:
        raise ValueError(
            f"n_way={n_way} but only {num_classes} classes are available; lower n_way, draw from more "
            "characters, or pass rotations=True to multiply the classes by 4."
        )
    if k_shot + k_query > examples_per_class:
        raise ValueError(
            f"k_shot + k_query = {k_shot + k_query} exceeds the {examples_per_class} drawings per character; "
            f"lower k_shot={k_shot} or k_query={k_query} so that their sum is at most {examples_per_class}."
        )


def make_task_pool(
    images: torch.Tensor,
    num_tasks: int,
    n_way: int,
    k_shot: int,
    k_query: int,
    generator: torch.Generator,
    rotations: bool = False,
) -> TaskPool:
    """Draw a fixed pool of tasks, as indices, from ``generator`` alone.

    Args:
        images: uint8 ``(classes, drawings, H, W)``, e.g. ``OmniglotSplit.images`` or a subset of its rows.
        num_tasks: tasks in the pool.
        n_way: classes per task.
        k_shot: support images per class.
        k_query: query images per class.
        generator: seeded ``torch.Generator``; the only source of randomness.
        rotations: also use the 90/180/270 degree rotations of every character as classes (4x classes).

    Returns:
        A :class:`TaskPool` of ``num_tasks`` tasks.
    """
    _check_images(images, rotations)
    _check_positive(num_tasks=num_tasks)
    num_characters, examples_per_class = images.shape[:2]
    num_classes = num_characters * (NUM_ROTATIONS if rotations else 1)
    validate_task_shape(n_way, k_shot, k_query, num_classes, examples_per_class)
    class_ids = _draw_distinct(num_tasks, num_classes, n_way, generator)
    examples = _draw_distinct(num_tasks * n_way, examples_per_class, k_shot + k_query, generator)
    return TaskPool(
        images=images,
        classes=class_ids % num_characters,
        rotations=class_ids // num_characters,
        examples=examples.view(num_tasks, n_way, k_shot + k_query),
        labels=_draw_distinct(num_tasks, n_way, n_way, generator),
        k_shot=k_shot,
        k_query=k_query,
    )


def sample_tasks(
    images: torch.Tensor,
    num_tasks: int,
    n_way: int,
    k_shot: int,
    k_query: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    rotations: bool = False,
) -> TaskBatch:
    """Draw ``num_tasks`` fresh tasks and materialise them (a one-off :func:`make_task_pool`).

    Returns:
        A :class:`TaskBatch` with images ``(num_tasks, n_way * k_shot, 1, H, W)`` and
        ``(num_tasks, n_way * k_query, 1, H, W)`` on ``device``.
    """
    pool = make_task_pool(images, num_tasks, n_way, k_shot, k_query, generator, rotations)
    return pool.batch(slice(None), device)


def _check_positive(**values: int) -> None:
    """Raise a ValueError naming each argument that is not a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_images(images: torch.Tensor, rotations: bool) -> None:
    """Tasks are gathered from uint8 ``(classes, drawings, H, W)``; rotations need square images."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"images must be uint8 (classes, drawings, H, W), got {images.dtype} {tuple(images.shape)}; "
            "pass OmniglotSplit.images (or rows of it)."
        )
    if rotations and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotations=True needs square images, got H x W = {tuple(images.shape[-2:])}.")


def _draw_distinct(rows: int, population: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct values of ``range(population)`` per row, uniformly at random and in random order.

    The top-``count`` of i.i.d. uniform keys is a uniformly random ordered sample without replacement; float64
    keys make ties (which would still give distinct values) practically impossible.

    Returns:
        long ``(rows, count)``.
    """
    chunk = max(1, _DRAW_CHUNK_ELEMENTS // population)
    draws = [
        torch.rand(min(chunk, rows - start), population, generator=generator, dtype=torch.float64)
        .topk(count, dim=1)
        .indices
        for start in range(0, rows, chunk)
    ]
    return torch.cat(draws)


def _rotate(images: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each image ``(N, H, W)`` counter-clockwise by its ``(N,)`` quarter turns, in place."""
    for turns in range(1, NUM_ROTATIONS):
        mask = quarter_turns == turns
        if mask.any():
            images[mask] = torch.rot90(images[mask], turns, dims=(-2, -1))
    return images


def with_k_shot(pool: TaskPool, index: int, k_shot: int, generator: torch.Generator) -> TaskPool:
    """Task ``index`` of ``pool`` with ``k_shot`` support images per class: same classes, labels and rotations,
    and ``k_shot + pool.k_query`` drawers per class drawn afresh from ``generator``.

    Returns:
        A one-task :class:`TaskPool` over ``pool.images``.

    Raises:
        ValueError: ``k_shot + pool.k_query`` exceeds the drawings per character.
    """
    validate_task_shape(pool.n_way, k_shot, pool.k_query, pool.n_way, pool.images.shape[1])
    keys = torch.rand(pool.n_way, pool.images.shape[1], generator=generator)
    examples = keys.argsort(-1)[:, : k_shot + pool.k_query]  # distinct drawers per class, random order
    return TaskPool(images=pool.images, classes=pool.classes[index : index + 1],
                    rotations=pool.rotations[index : index + 1], examples=examples.unsqueeze(0),
                    labels=pool.labels[index : index + 1], k_shot=k_shot, k_query=pool.k_query)
