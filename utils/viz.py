"""Figures for the ANIL-on-Omniglot tutorial: few-shot tasks, a character's drawings, alphabets, predictions.

ANIL: Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, arXiv:1909.09157. Omniglot: Lake, Salakhutdinov & Tenenbaum, Science 2015.

Every function builds a :class:`matplotlib.figure.Figure` directly instead of going through ``pyplot``: no
GUI backend is touched (safe headless and in tests), nothing is registered in pyplot's global figure list
(no leaks, no double display in notebooks), and Jupyter still renders a returned figure inline. Images are
drawn with ink dark on a light background (``gray_r``), whatever the stored polarity (ink = 1.0 / 255).
"""

from __future__ import annotations

import functools
import math
import textwrap
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure, SubFigure

from utils.data import OmniglotSplit
from utils.tasks import TaskBatch

if TYPE_CHECKING:  # the contract is a type only: utils stays below algorithms at run time (import-linter)
    from algorithms.learner import Learner

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


def learner_device(learner: Learner) -> torch.device:
    """The device of a learner's head (ANIL, MAML and NIL all hold one)."""
    return learner.head.weight.device


def task_predictions(learner: Learner, batch: TaskBatch, task: int = 0, steps: int | None = None) -> TaskPredictions:
    """Adapt ``learner`` on one task's support set and classify its query set.

    Args:
        learner: any learner (ANIL, MAML, NIL): its own ``adapt(support_x, support_y, steps=...)`` and
            ``predict(query_x, fast)``, which returns logits ``(tasks, n_query, n_way)``.
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


def plot_predictions(learner: Learner, batch: TaskBatch, task: int = 0, steps: int | None = None) -> Figure:
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


def prediction_panels(batch: TaskBatch, task: int, before: TaskPredictions, after: TaskPredictions
                       ) -> tuple[list[tuple], int]:
    """The three panels (support, before, after) of one task, ``(gid, images, labels, captions, title)``, and
    ``n_way``."""
    single = one_task(batch, task, "cpu")
    n_way = int(single.support_y.max()) + 1
    k_shot = single.support_y.shape[1] // n_way
    panels = [("support", single.support_x[0, :, 0], single.support_y[0],
               [(f"label {int(y)}", "black") for y in single.support_y[0]], f"Support set ({n_way}-way {k_shot}-shot)")]
    for gid, answers, name in (("before", before, "Before adaptation (0 steps)"),
                               ("after", after, f"After {_steps_text(after.steps)}")):
        captions = [(f"{int(p)}: {c:.0%}", RIGHT_COLOUR if ok else WRONG_COLOUR)
                    for p, c, ok in zip(answers.predicted, answers.confidence, answers.correct.tolist(), strict=True)]
        title = f"{name}: {int(answers.correct.sum())}/{len(captions)} right"
        panels.append((gid, single.query_x[0, :, 0], single.query_y[0], captions, title))
    return panels, n_way


def predictions_png(batch: TaskBatch, task: int, before: TaskPredictions, after: TaskPredictions) -> bytes:
    """The mosaic of :func:`predictions_figure` with its panel titles, encoded as PNG by PIL without matplotlib.

    The live playground redraws this on every slider move: building and rasterising a matplotlib figure took most
    of a redraw (about 180 of 225 ms on a 2-core CPU), while the mosaic is already an RGB array.
    """
    import io

    from PIL import Image, ImageDraw

    panels, n_way = prediction_panels(batch, task, before, after)
    mosaic, offsets = panels_mosaic(panels, n_way)
    band = _FONT_PX + 10
    image = Image.new("RGB", (mosaic.shape[1], mosaic.shape[0] + band), "white")
    image.paste(Image.fromarray(mosaic), (0, band))
    draw = ImageDraw.Draw(image)
    for offset, (*_, title) in zip(offsets, panels, strict=True):
        draw.text((offset, band // 2), title, fill="black", font=_caption_font(), anchor="lm")
    buffer = io.BytesIO()
    image.save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


def predictions_figure(
    batch: TaskBatch, task: int, before: TaskPredictions, after: TaskPredictions, extra_panel: bool = False
) -> Figure:
    """Draw support set and two sets of query predictions of one task (see :func:`plot_predictions`).

    The three panels are one RGB mosaic shown 1:1 in ``fig.axes[0]``, captions drawn into its pixels: a
    matplotlib text per image would cost more to render than everything else, and the playground redraws this
    figure live. ``fig.captions`` maps each panel (``"support"``, ``"before"``, ``"after"``) to the
    ``(caption, colour)`` of every image, in the batch's order, and ``fig.panel_offsets`` to its first mosaic
    column (cells: :func:`caption_cells`, :func:`mosaic_cell_size`). With ``extra_panel`` an ordinary axes
    ``fig.axes[1]`` is added on the right for the caller.
    """
    panels, n_way = prediction_panels(batch, task, before, after)
    mosaic, offsets = panels_mosaic(panels, n_way)
    height, width = mosaic.shape[:2]
    side = 3.3 if extra_panel else 0.0  # inches for the caller's panel
    fig = Figure(figsize=(width / _DPI + side + 0.1, height / _DPI + 0.55), dpi=_DPI)
    ax = fig.add_axes((0.05 / fig.get_figwidth(), 0.2 / fig.get_figheight(), width / _DPI / fig.get_figwidth(),
                       height / _DPI / fig.get_figheight()))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for offset, (_, _, _, _, title) in zip(offsets, panels, strict=True):
        ax.text(offset, -4, title, ha="left", va="bottom", fontsize=8.5)
    fig.text(0.05 / fig.get_figwidth(), 0.04, "Queries in columns by true label; caption = predicted label: its "
             "probability; frame green = right, red = wrong.", fontsize=7)
    if extra_panel:
        left = (width / _DPI + 0.75) / fig.get_figwidth()
        fig.add_axes((left, 0.25, 1 - left - 0.02, 0.6))
    fig.predictions = {"before": before, "after": after}
    fig.captions = {gid: captions for gid, _, _, captions, _ in panels}
    fig.panel_offsets = {gid: offset for offset, (gid, *_) in zip(offsets, panels, strict=True)}
    return fig


_DPI = 100
_TILE = 56  # display side of one image in mosaic pixels: Omniglot at 28 px doubled, 105 px reduced
_FONT_PX = 13


def panels_mosaic(panels: list[tuple], n_way: int) -> tuple[np.ndarray, list[int]]:
    """Panels ``(gid, images (n, H, W), labels, captions, title)`` side by side as one uint8 RGB image, and the
    x offset of each panel."""
    mosaics = [_mosaic(images, labels, n_way, captions) for _, images, labels, captions, _ in panels]
    height, gap = max(m.shape[0] for m in mosaics), np.full((1, _TILE // 2, 3), 255, np.uint8)
    offsets, parts = [], []
    for mosaic in mosaics:
        offsets.append(sum(p.shape[1] for p in parts))
        parts += [np.pad(mosaic, ((0, height - mosaic.shape[0]), (0, 0), (0, 0)), constant_values=255),
                  gap.repeat(height, 0)]
    return np.concatenate(parts[:-1], axis=1), offsets


def caption_cells(labels: torch.Tensor, n_way: int) -> list[tuple[int, int]]:
    """``(row, column)`` of each image of a set in its panel: a column per label (in order), a row per shot."""
    order = torch.argsort(labels.cpu(), stable=True).tolist()  # label-major: column j holds label j
    rows, cells = len(order) // n_way, [(0, 0)] * len(order)
    for slot, i in enumerate(order):
        cells[i] = (slot % rows, slot // rows)
    return cells


def mosaic_cell_size() -> tuple[int, int]:
    """Height and width, in mosaic pixels, of one image's cell: frame, image, frame, caption band."""
    return _TILE + 2 * _TILE_PAD + _FONT_PX + 6, _TILE + 2 * _TILE_PAD


def _mosaic(images: torch.Tensor, labels: torch.Tensor, n_way: int, captions: list[tuple[str, str]]) -> np.ndarray:
    """uint8 RGB mosaic of images ``(n, H, W)`` (float, ink = 1) with ink dark, each framed and captioned in the
    colour of its ``(caption, colour)`` (grey frame when the colour is black)."""
    from PIL import Image, ImageDraw

    cells = caption_cells(labels, n_way)
    (cell_h, cell_w), rows = mosaic_cell_size(), len(cells) // n_way
    mode = "nearest" if _TILE % images.shape[-1] == 0 else "bilinear"
    tiles = torch.nn.functional.interpolate(images.detach().float().cpu()[:, None], size=(_TILE, _TILE), mode=mode)
    tiles = ((1.0 - tiles[:, 0].clamp(0, 1)) * 255).round().to(torch.uint8).numpy()
    mosaic = np.full((rows * cell_h, n_way * cell_w, 3), 255, np.uint8)
    for i, (row, column) in enumerate(cells):
        top, left = row * cell_h, column * cell_w
        colour = captions[i][1]
        frame = (191, 191, 191) if colour == "black" else [round(255 * c) for c in to_rgb(colour)]
        mosaic[top : top + _TILE + 2 * _TILE_PAD, left : left + cell_w] = frame
        inner = slice(top + _TILE_PAD, top + _TILE_PAD + _TILE), slice(left + _TILE_PAD, left + _TILE_PAD + _TILE)
        mosaic[inner] = tiles[i, ..., None]
    image = Image.fromarray(mosaic)
    draw, font = ImageDraw.Draw(image), _caption_font()
    for i, (row, column) in enumerate(cells):
        centre = (column * cell_w + cell_w / 2, row * cell_h + _TILE + 2 * _TILE_PAD + (_FONT_PX + 6) / 2)
        draw.text(centre, captions[i][0], fill=captions[i][1], font=font, anchor="mm")
    return np.asarray(image)


@functools.lru_cache(maxsize=1)
def _caption_font() -> Any:
    """DejaVu Sans (shipped with matplotlib) at the caption size, for PIL."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), _FONT_PX)


def _steps_text(steps: int | None) -> str:
    return "adaptation" if steps is None else f"{steps} step{'s' * (steps != 1)}"
