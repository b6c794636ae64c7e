"""Figures for the ANIL-on-Omniglot tutorial: few-shot tasks, a character's drawings, alphabets, predictions.

ANIL: Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, arXiv:1909.09157. Omniglot: Lake, Salakhutdinov & Tenenbaum, Science 2015.

Every function builds a :class:`matplotlib.figure.Figure` directly instead of going through ``pyplot``: no
GUI backend is touched (safe headless and in tests), nothing is registered in pyplot's global figure list
(no leaks, no double display in notebooks), and Jupyter still renders a returned figure inline. Images are
drawn with ink dark on a light background (``gray_r``), whatever the stored polarity (ink = 1.0 / 255).
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure, SubFigure

from utils.data import OmniglotSplit
from utils.tasks import TaskBatch

_PANEL_INCHES = 1.1


def plot_task(batch: TaskBatch, task: int = 0) -> Figure:
    """Show one task of a meta-batch: support set on top, query set below, one column per label.

    Args:
        batch: meta-batch, support images ``(tasks, n_way * k_shot, 1, H, W)``, query images
            ``(tasks, n_way * k_query, 1, H, W)``.
        task: which task of the batch to show.

    Returns:
        A figure with ``n_way * (k_shot + k_query)`` axes, each titled with its image's label.
    """
    num_tasks = batch.support_x.shape[0]
    if not 0 <= task < num_tasks:
        raise ValueError(
            f"task={task} is out of range: the batch holds {num_tasks} tasks (0 to {num_tasks - 1})."
        )
    n_way = int(batch.support_y[task].max()) + 1
    k_shot, k_query = batch.support_y.shape[1] // n_way, batch.query_y.shape[1] // n_way
    fig = Figure(
        figsize=(_PANEL_INCHES * n_way, _PANEL_INCHES * (k_shot + k_query) + 0.8), layout="constrained"
    )
    support_fig, query_fig = fig.subfigures(2, 1, height_ratios=[k_shot, k_query])
    _plot_set(
        support_fig, batch.support_x[task], batch.support_y[task], f"Support set ({n_way}-way {k_shot}-shot)"
    )
    _plot_set(query_fig, batch.query_x[task], batch.query_y[task], f"Query set ({k_query} per class)")
    return fig


def plot_character_versions(split: OmniglotSplit, character: int | str) -> Figure:
    """Show the 20 drawings of one character, each by a different person.

    Args:
        split: the split holding the character.
        character: row index into ``split.images`` or ``"Alphabet/characterNN"`` name.

    Returns:
        A figure with one axes per drawing, titled ``"<Alphabet> / characterNN (<split>)"``.
    """
    row = split.index_of(character)
    drawings = split.images[row]  # (20, H, W)
    fig = Figure(figsize=(_PANEL_INCHES * 5, _PANEL_INCHES * 4 + 0.5), layout="constrained")
    for drawer, (ax, image) in enumerate(zip(_axes_grid(fig, len(drawings), ncols=5), drawings, strict=True)):
        _show(ax, image, f"drawer {drawer + 1}")
    alphabet, name = split.characters[row].split("/")
    fig.suptitle(f"{alphabet} / {name} ({split.split})")
    return fig


def plot_alphabets(split: OmniglotSplit, ncols: int = 6) -> Figure:
    """Show the first drawing of the first character of every alphabet in a split.

    Args:
        split: the split to show.
        ncols: panels per row.

    Returns:
        A figure with one axes per alphabet, titled with the alphabet's name.
    """
    rows = [int(torch.nonzero(split.alphabet_index == a)[0]) for a in range(len(split.alphabets))]
    nrows = math.ceil(len(rows) / ncols)
    fig = Figure(
        figsize=(_PANEL_INCHES * 1.4 * ncols, _PANEL_INCHES * 1.6 * nrows + 0.5), layout="constrained"
    )
    for ax, row, alphabet in zip(_axes_grid(fig, len(rows), ncols), rows, split.alphabets, strict=True):
        _show(ax, split.images[row, 0], alphabet_title(alphabet), fontsize=8)
    fig.suptitle(f"Omniglot {split.split}: {len(split.alphabets)} alphabets")
    return fig


def alphabet_title(alphabet: str, width: int = 18) -> str:
    """Readable, wrapped alphabet name: ``"Blackfoot_(Canadian_Aboriginal_Syllabics)"`` -> 2-3 short lines."""
    return textwrap.fill(alphabet.replace("_", " "), width, break_long_words=False, break_on_hyphens=False)


def _plot_set(fig: SubFigure, images: torch.Tensor, labels: torch.Tensor, title: str) -> None:
    """Draw a set ``(n, 1, H, W)`` as a grid with one column per label (0, 1, ...) and one row per shot."""
    n_way = int(labels.max()) + 1
    order = torch.argsort(labels.cpu(), stable=True)  # label-major, so column j shows label j
    grid = fig.subplots(len(order) // n_way, n_way, squeeze=False)
    for ax, i in zip(grid.T.ravel(), order.tolist(), strict=True):
        _show(ax, images[i, 0], f"label {int(labels[i])}")
    fig.suptitle(title)


def _axes_grid(fig: Figure, count: int, ncols: int) -> list[Axes]:
    """``count`` image axes, row by row on a grid of ``ncols`` columns."""
    grid = fig.subplots(math.ceil(count / ncols), ncols, squeeze=False).ravel()
    for ax in grid[count:]:
        ax.remove()  # unused cells of the last row
    return grid[:count].tolist()


def _show(ax: Axes, image: torch.Tensor, title: str, fontsize: float = 9) -> None:
    """Draw one 2-D image (uint8 0-255 or float 0-1, ink high) with ink dark, and title it."""
    vmax = 255 if image.dtype == torch.uint8 else 1.0
    ax.imshow(image.detach().cpu().numpy(), cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])


RIGHT_COLOUR = "#1a9850"  # green: prediction right
WRONG_COLOUR = "#d73027"  # red: prediction wrong
_TILE_PAD = 2  # pixels of border around each image, coloured right/wrong on query tiles
_LABEL_BAND = 0.55  # height of the text band under each tile, as a fraction of the image side


class TaskPredictions(NamedTuple):
    """What a learner answers on the query set of one task; exactly what :func:`plot_predictions` draws.

    Attributes:
        probabilities: float ``(n_query, n_way)``, softmax of the learner's logits (rows sum to 1).
        predicted: long ``(n_query,)``, argmax class of each query image.
        correct: bool ``(n_query,)``, whether ``predicted`` equals the true label.
        steps: inner steps the head was adapted for (``None``: the learner's default).
    """

    probabilities: torch.Tensor
    predicted: torch.Tensor
    correct: torch.Tensor
    steps: int | None

    @property
    def confidence(self) -> torch.Tensor:
        """float ``(n_query,)``: the probability of each predicted class."""
        return self.probabilities.gather(1, self.predicted.unsqueeze(1)).squeeze(1)


def one_task(batch: TaskBatch, task: int, device: torch.device | str | None = None) -> TaskBatch:
    """Task ``task`` of a meta-batch as a meta-batch of one, ``(1, n, 1, H, W)``, optionally moved to ``device``."""
    num_tasks = batch.support_x.shape[0]
    if not 0 <= task < num_tasks:
        raise ValueError(f"task={task} is out of range: the batch holds {num_tasks} tasks (0 to {num_tasks - 1}).")
    return TaskBatch(*(t[task : task + 1].to(device) if device is not None else t[task : task + 1] for t in batch))


def learner_device(learner: Any) -> torch.device:
    """The device of a learner's parameters (ANIL, MAML and NIL all hold a ``body`` or a ``head``)."""
    module = getattr(learner, "head", None) or getattr(learner, "body", None)
    parameter = next(module.parameters(), None) if module is not None else None
    return parameter.device if parameter is not None else torch.device("cpu")


def task_predictions(learner: Any, batch: TaskBatch, task: int = 0, steps: int | None = None) -> TaskPredictions:
    """Adapt ``learner`` on one task's support set and classify its query set.

    Args:
        learner: any object with ``adapt(support_x, support_y, steps=...)`` and ``predict(query_x, fast)``
            returning logits ``(tasks, n_query, n_way)`` (ANIL, MAML, NIL).
        batch: meta-batch, support ``(tasks, n_way * k_shot, 1, H, W)``, query ``(tasks, n_way * k_query, 1, H, W)``.
        task: which task of the batch.
        steps: inner steps (0: the head's initialisation; ``None``: the learner's default).
    """
    single = one_task(batch, task, learner_device(learner))
    with torch.no_grad():
        fast = learner.adapt(single.support_x, single.support_y, steps=steps)
        logits = learner.predict(single.query_x, fast)[0]
    probabilities = logits.float().softmax(-1).cpu()
    predicted = probabilities.argmax(-1)
    return TaskPredictions(probabilities, predicted, predicted == single.query_y[0].cpu(), steps)


def plot_predictions(learner: Any, batch: TaskBatch, task: int = 0, steps: int | None = None) -> Figure:
    """One task: the support set with its labels, then every query image with the learner's answer.

    Each query image is captioned with its predicted label and that label's probability, and framed green when
    right, red when wrong: first with the head's initialisation (0 inner steps), then after ``steps`` steps.

    Args:
        learner: ANIL, MAML, NIL or any learner with ``adapt``/``predict`` (see :func:`task_predictions`).
        batch: meta-batch, support ``(tasks, n_way * k_shot, 1, H, W)``, query ``(tasks, n_way * k_query, 1, H, W)``.
        task: which task of the batch.
        steps: inner steps after adaptation (``None``: the learner's default).

    Returns:
        A figure with three image panels (support, before, after); ``fig.predictions`` holds the two
        :class:`TaskPredictions` it draws, under ``"before"`` and ``"after"``.
    """
    before = task_predictions(learner, batch, task, steps=0)
    after = task_predictions(learner, batch, task, steps=steps)
    return predictions_figure(batch, task, before, after)


def predictions_figure(
    batch: TaskBatch, task: int, before: TaskPredictions, after: TaskPredictions, extra_panel: bool = False
) -> Figure:
    """Draw support set and two sets of query predictions of one task (see :func:`plot_predictions`).

    With ``extra_panel`` a fourth, ordinary axes is added on the right (``fig.axes[3]``) for the caller to fill.
    Each panel is one mosaic image with text captions, not one axes per image: a redraw stays cheap enough for
    a live widget.
    """
    single = one_task(batch, task, "cpu")
    n_way = int(single.support_y.max()) + 1
    widths = [1.0, 1.0, 1.0, 1.15] if extra_panel else [1.0, 1.0, 1.0]
    fig = Figure(figsize=(2.9 * len(widths), 3.6))
    axes = fig.subplots(1, len(widths), gridspec_kw={"width_ratios": widths, "wspace": 0.12})
    fig.subplots_adjust(left=0.02, right=0.98, top=0.84, bottom=0.08 if extra_panel else 0.02)
    k_shot = single.support_y.shape[1] // n_way
    _draw_mosaic(axes[0], single.support_x[0, :, 0], single.support_y[0], n_way,
                 [f"label {int(y)}" for y in single.support_y[0]], None, f"Support set ({n_way}-way {k_shot}-shot)")
    for ax, answers, name in ((axes[1], before, "Before adaptation (0 steps)"),
                              (axes[2], after, f"After {_steps_text(after.steps)}")):
        captions = [f"{int(p)}: {c:.0%}" for p, c in zip(answers.predicted, answers.confidence, strict=True)]
        colours = [RIGHT_COLOUR if ok else WRONG_COLOUR for ok in answers.correct.tolist()]
        right = int(answers.correct.sum())
        _draw_mosaic(ax, single.query_x[0, :, 0], single.query_y[0], n_way, captions, colours,
                     f"{name}\n{right}/{len(captions)} right (predicted: probability)")
    fig.suptitle("Query images in columns by true label; frame green = right, red = wrong", fontsize=9)
    fig.predictions = {"before": before, "after": after}
    return fig


def _steps_text(steps: int | None) -> str:
    return "adaptation" if steps is None else f"{steps} step{'s' * (steps != 1)}"


def _draw_mosaic(ax: Axes, images: torch.Tensor, labels: torch.Tensor, n_way: int, captions: list[str],
                 colours: list[str] | None, title: str) -> None:
    """Draw images ``(n, H, W)`` (float, ink = 1) as one mosaic: a column per label, a caption under each tile.

    ``colours`` (one per image, or None for black captions and grey frames) colour each frame and caption.
    """
    order = torch.argsort(labels.cpu(), stable=True).tolist()  # label-major: column j holds label j
    rows, (height, width) = len(order) // n_way, images.shape[-2:]
    band = round(_LABEL_BAND * height)
    cell_h, cell_w = height + 2 * _TILE_PAD + band, width + 2 * _TILE_PAD
    mosaic = np.ones((rows * cell_h, n_way * cell_w, 3))
    for slot, i in enumerate(order):
        top, left = (slot % rows) * cell_h, (slot // rows) * cell_w
        frame = to_rgb(colours[i]) if colours else (0.75, 0.75, 0.75)
        mosaic[top : top + height + 2 * _TILE_PAD, left : left + cell_w] = frame
        tile = 1.0 - images[i].detach().float().cpu().clamp(0, 1).numpy()
        mosaic[top + _TILE_PAD : top + _TILE_PAD + height, left + _TILE_PAD : left + _TILE_PAD + width] = tile[
            ..., None]
        ax.text(left + cell_w / 2, top + height + 2 * _TILE_PAD + band / 2, captions[i], ha="center", va="center",
                fontsize=7, color=colours[i] if colours else "black")
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
