"""Figures for the ANIL-on-Omniglot tutorial: few-shot tasks, a character's 20 drawings, the alphabets.

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

import torch
from matplotlib.axes import Axes
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
