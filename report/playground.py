"""A live adaptation playground: re-adapt a trained learner's head on one test task while the reader watches.

ANIL (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse?", ICLR 2020, arXiv:1909.09157) adapts
only a linear head on fixed features, so its inner loop is a few tiny matrix products: fast enough to redo on
every move of a slider. :func:`adapt_and_plot` is the whole computation, one plain function that tests call
too; :class:`Playground` only wires ipywidgets controls (scenario, test task, inner steps, inner learning rate,
k_shot) to it, and :func:`show_playground` shows the live widget in any IPython kernel, bundled with a static PNG
of the same figure that a saved notebook's static viewer shows instead; outside a kernel it returns the figure.

The figure shows the task's support set, the query answers before and after adaptation
(:func:`utils.viz.predictions_figure`) and the support loss over the inner steps. The path follows the learner's
contract (:class:`algorithms.learner.Learner`), so every learner is adapted as it adapts itself: one with a
head-only fast path (``learner.head_path()``, ANIL) has its body run once per set and its loss curve computed
step by step from those features; any other learner is adapted with its own ``adapt`` and ``predict``, MAML in
every layer, and its curve measured at up to ``GENERIC_CURVE_POINTS`` step counts by re-adapting (at the two
ends only for NIL, which adapts nothing).
"""

from __future__ import annotations

import base64
import io
import math
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from algorithms.learner import HeadParams, HeadPath, Learner, check_lr
from utils.tasks import TaskBatch, TaskPool, with_k_shot
from utils.viz import TaskPredictions, learner_device, one_task, predictions_figure, predictions_png, task_predictions

MAX_STEPS = 100
INNER_LR_RANGE = (1e-3, 10.0)  # the log slider's ends
GENERIC_CURVE_POINTS = 11
HEADLESS_ENV = "ANIL_HEADLESS"  # optional: 1 shows the static figure alone (make notebook commits a plain image)


@contextmanager
def inner_lr_override(learner: Learner, inner_lr: float | None) -> Iterator[None]:
    """Temporarily give ``learner`` another inner learning rate; the original is restored on exit.

    ``None``, or a learner whose inner loop adapts nothing (NIL), leaves everything unchanged.

    Raises:
        ValueError: ``inner_lr`` is not a positive finite number.
    """
    if inner_lr is None or learner.adapts == "none":
        yield
        return
    previous, learner.inner_lr = learner.inner_lr, check_lr("inner_lr", inner_lr)
    try:
        yield
    finally:
        learner.inner_lr = previous


def _head_trajectory(path: HeadPath, single: TaskBatch, steps: int) -> tuple[list[HeadParams], torch.Tensor]:
    """Heads after 0..``steps`` inner steps from the fast path's features (computed once), and the support losses.

    Returns:
        ``(heads, losses)``: ``steps + 1`` heads ``weight (1, n_way, features)``, losses ``(steps + 1,)``.
    """
    features = path.features(single.support_x, False)  # (1, n_way * k_shot, features)
    heads = [path.initial_head()]
    for _ in range(steps):
        heads.append(path.adapt_head(features, single.support_y, heads[-1], 1))
    losses = [F.cross_entropy(path.head_logits(features, head)[0], single.support_y[0]) for head in heads]
    return heads, torch.stack(losses).cpu()


def support_losses(learner: Learner, batch: TaskBatch, task: int, steps: int) -> tuple[list[int], torch.Tensor]:
    """Mean support cross-entropy of one task after 0, 1, ... ``steps`` inner steps.

    Args:
        learner: any learner: the exact curve along a head-only fast path (ANIL), else the learner's own
            ``adapt``/``predict`` at up to ``GENERIC_CURVE_POINTS`` step counts (two for NIL, whose loss is flat).
        batch: meta-batch, support ``(tasks, n_way * k_shot, 1, H, W)``.
        task: which task.
        steps: last inner step.

    Returns:
        ``(step_counts, losses)``: the step counts and a float ``(len(step_counts),)`` tensor of losses.
    """
    single = one_task(batch, task, learner_device(learner))
    x, y = single.support_x, single.support_y
    path = learner.head_path()
    with torch.no_grad():
        if path is not None:
            return list(range(steps + 1)), _head_trajectory(path, single, steps)[1]
        points = 2 if learner.adapts == "none" else GENERIC_CURVE_POINTS  # nothing adapts: the ends say it all
        counts = sorted({int(s) for s in np.linspace(0, steps, min(steps + 1, points)).round()})
        losses = [F.cross_entropy(learner.predict(x, learner.adapt(x, y, steps=s))[0], y[0]) for s in counts]
        return counts, torch.stack(losses).cpu()


def _head_path_answers(learner: Learner, path: HeadPath, batch: TaskBatch, task: int, steps: int
                       ) -> tuple[TaskPredictions, TaskPredictions, list[int], torch.Tensor]:
    """Before/after predictions and the loss curve along a head-only fast path, with one body pass per set."""
    single = one_task(batch, task, learner_device(learner))
    with torch.no_grad():
        heads, losses = _head_trajectory(path, single, steps)
        query = path.features(single.query_x, False)
        answers = []
        for head, count in ((heads[0], 0), (heads[-1], steps)):
            probabilities = path.head_logits(query, head)[0].float().softmax(-1).cpu()
            predicted = probabilities.argmax(-1)
            answers.append(TaskPredictions(probabilities, predicted, predicted == single.query_y[0].cpu(), count))
    return answers[0], answers[1], list(range(steps + 1)), losses


def adapt_and_plot(learner: Learner, batch: TaskBatch, task: int = 0, steps: int | None = None,
                   inner_lr: float | None = None) -> Figure:
    """Adapt ``learner`` on one task and draw its answers before/after and the support loss per inner step.

    Args:
        learner: ANIL, MAML, NIL or any learner with ``adapt``/``predict``.
        batch: meta-batch, support ``(tasks, n_way * k_shot, 1, H, W)``, query ``(tasks, n_way * k_query, 1, H, W)``.
        task: which task of the batch.
        steps: inner steps (``None``: the learner's ``inner_steps``).
        inner_lr: inner learning rate for this figure only (``None``: the learner's); the learner is unchanged.

    Returns:
        The figure of :func:`utils.viz.predictions_figure` plus a loss panel (``fig.axes[1]``);
        ``fig.predictions`` and ``fig.support_losses`` (``(step_counts, losses)``) hold what it draws.
    """
    before, after, counts, losses, lr = adapted_answers(learner, batch, task, steps, inner_lr)
    fig = predictions_figure(batch, task, before, after, extra_panel=True)
    _plot_losses(fig.axes[1], counts, losses, lr, n_way=before.probabilities.shape[-1])
    fig.support_losses = (counts, losses)
    return fig


def adapted_answers(learner: Learner, batch: TaskBatch, task: int = 0, steps: int | None = None,
                    inner_lr: float | None = None
                    ) -> tuple[TaskPredictions, TaskPredictions, list[int], torch.Tensor, float | None]:
    """What :func:`adapt_and_plot` draws: answers before and after, the support-loss curve and the inner lr used.

    Returns:
        ``(before, after, step_counts, support_losses, inner_lr)``; arguments as in :func:`adapt_and_plot`.
    """
    steps = learner.inner_steps if steps is None else steps
    if not isinstance(steps, int) or not 0 <= steps <= 10 * MAX_STEPS:
        raise ValueError(f"steps must be an integer in [0, {10 * MAX_STEPS}], got {steps!r}.")
    with inner_lr_override(learner, inner_lr):
        path = learner.head_path()
        if path is not None:  # one body pass per set instead of five
            before, after, counts, losses = _head_path_answers(learner, path, batch, task, steps)
        else:
            before = task_predictions(learner, batch, task, steps=0)
            after = task_predictions(learner, batch, task, steps=steps)
            counts, losses = support_losses(learner, batch, task, steps)
        lr = None if learner.adapts == "none" else learner.inner_lr
    return before, after, counts, losses, lr


def loss_png(counts: list[int], losses: torch.Tensor, lr: float | None, n_way: int) -> bytes:
    """The support-loss panel of :func:`adapt_and_plot` alone, as PNG (the live widget's right-hand image)."""
    fig = Figure(figsize=(3.6, 3.0), dpi=100)
    _plot_losses(fig.add_axes((0.16, 0.16, 0.8, 0.72)), counts, losses, lr, n_way)
    return figure_png(fig)


def _plot_losses(ax: Any, counts: list[int], losses: torch.Tensor, lr: float | None, n_way: int) -> None:
    """Support loss against inner steps, with ln(n_way) (a uniform guess) for reference; divergence is marked.

    Linear axes with few ticks: log-scale tick labels would cost more to draw than the rest of the figure.
    """
    values = losses.double().numpy()
    finite = np.isfinite(values)
    ax.plot(np.asarray(counts)[finite], values[finite], marker="." if len(counts) <= GENERIC_CURVE_POINTS else None)
    ax.axhline(math.log(n_way), color="grey", lw=0.8, ls=":")
    ax.text(counts[-1], math.log(n_way), f"ln {n_way}", fontsize=7, color="grey", ha="right", va="bottom")
    if not finite.all():
        ax.text(0.5, 0.5, f"diverged (non-finite) by step {counts[int(np.argmin(finite))]}",
                transform=ax.transAxes, ha="center", color="#d73027", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.locator_params(nbins=4)
    ax.set_xlabel("inner step", fontsize=8)
    ax.set_title("Support loss" + (f", inner lr {lr:.3g}" if lr is not None else ""), fontsize=8.5)
    ax.tick_params(labelsize=7)


def in_kernel() -> bool:
    """Whether this code runs in an IPython kernel (Jupyter, nbclient, papermill), where widgets can be sent."""
    if "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def static_only() -> bool:
    """Whether ``ANIL_HEADLESS`` asks for the static figure alone (an option; every path works without it)."""
    return os.environ.get(HEADLESS_ENV, "") not in ("", "0")


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes, drawn once (no tight bounding box: that would draw it twice).

    zlib level 1: the default level 6 takes longer to compress this figure than matplotlib takes to draw it.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


class Playground:
    """Controls over trained learners and a pool of test tasks; every change re-adapts and redraws.

    Args:
        learners: scenario name -> trained learner (ANIL, MAML, NIL, ...), e.g. ``{"S1": anil_s1, ...}``.
        pool: the test tasks; its images allow other ``k_shot`` values (the task's classes, new drawers).
        steps: initial inner steps (``None``: the first learner's ``inner_steps``).
        inner_lr: initial inner learning rate (``None``: the first learner's).
        seed: seeds the drawers drawn for a ``k_shot`` other than the pool's.
    """

    def __init__(self, learners: Mapping[str, Learner], pool: TaskPool, *, steps: int | None = None,
                 inner_lr: float | None = None, seed: int = 0) -> None:
        if not learners:
            raise ValueError("learners is empty: pass a dict such as {'S1': learner}.")
        first = next(iter(learners.values()))
        self.learners, self.pool, self.seed = dict(learners), pool, seed
        self.scenario, self.task, self.k_shot = next(iter(learners)), 0, pool.k_shot
        self.steps = min(first.inner_steps, MAX_STEPS) if steps is None else steps
        self.inner_lr = first.inner_lr if inner_lr is None else inner_lr
        self.max_k_shot = pool.images.shape[1] - pool.k_query  # every drawer of a character used at most once

    def batch(self) -> TaskBatch:
        """The current task at the current ``k_shot``: the pool's own task, or its classes with new drawers."""
        if self.k_shot == self.pool.k_shot:
            return self.pool.batch([self.task])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.task * 101 + self.k_shot)
        return with_k_shot(self.pool, self.task, self.k_shot, generator).batch([0])

    def figure(self) -> Figure:
        """:func:`adapt_and_plot` at the current values."""
        return adapt_and_plot(self.learners[self.scenario], self.batch(), 0, self.steps, self.inner_lr)

    def live_images(self) -> tuple[bytes, bytes]:
        """The widget's two PNGs at the current values: the predictions mosaic and the support-loss panel.

        The same content as :meth:`figure`, drawn without building a matplotlib figure for the mosaic, so that a
        redraw stays interactive (see ``benchmarks/playground_latency.py``).
        """
        batch = self.batch()
        before, after, counts, losses, lr = adapted_answers(self.learners[self.scenario], batch, 0, self.steps,
                                                            self.inner_lr)
        return predictions_png(batch, 0, before, after), loss_png(counts, losses, lr, before.probabilities.shape[-1])

    def update(self, **values: Any) -> Figure:
        """:meth:`set` the given controls, then the redrawn :meth:`figure`."""
        self.set(**values)
        return self.figure()

    def set(self, **values: Any) -> None:
        """Set any of ``scenario``, ``task`` (an index, or ``"next"``), ``steps``, ``inner_lr``, ``k_shot``.

        Raises:
            ValueError: an unknown control or a value out of its range.
        """
        unknown = sorted(set(values) - {"scenario", "task", "steps", "inner_lr", "k_shot"})
        if unknown:
            raise ValueError(f"Unknown playground control(s) {unknown}; use scenario, task, steps, inner_lr, k_shot.")
        if values.get("task") == "next":
            values["task"] = (self.task + 1) % len(self.pool)
        checks = {"scenario": lambda v: v in self.learners, "task": lambda v: 0 <= v < len(self.pool),
                  "steps": lambda v: 0 <= v <= MAX_STEPS, "k_shot": lambda v: 1 <= v <= self.max_k_shot,
                  "inner_lr": lambda v: v > 0 and math.isfinite(v)}
        for name, value in values.items():
            if not checks[name](value):
                raise ValueError(f"{name}={value!r} is out of range for this playground.")
            setattr(self, name, value)

    def widget(self) -> Any:
        """The ipywidgets interface: controls above the figure, redrawn (as one PNG) on every change."""
        import ipywidgets as widgets

        predictions, losses = (widgets.Image(format="png", value=png) for png in self.live_images())
        controls = {
            "scenario": widgets.Dropdown(options=list(self.learners), value=self.scenario, description="scenario"),
            "task": widgets.BoundedIntText(value=self.task, min=0, max=len(self.pool) - 1, description="test task"),
            "steps": widgets.IntSlider(value=self.steps, min=0, max=MAX_STEPS, description="inner steps"),
            "inner_lr": widgets.FloatLogSlider(value=self.inner_lr, base=10, min=math.log10(INNER_LR_RANGE[0]),
                                               max=math.log10(INNER_LR_RANGE[1]), step=0.05, description="inner lr"),
            "k_shot": widgets.IntSlider(value=self.k_shot, min=1, max=self.max_k_shot, description="k_shot"),
        }
        following = widgets.Button(description="next task")

        def redraw(change: dict) -> None:
            name = next(k for k, w in controls.items() if w is change["owner"])
            self.set(**{name: change["new"]})
            predictions.value, losses.value = self.live_images()

        def next_task(_: Any) -> None:
            controls["task"].value = (self.task + 1) % len(self.pool)  # triggers redraw

        for control in controls.values():
            control.observe(redraw, names="value")
        following.on_click(next_task)
        rows = [widgets.HBox([controls["scenario"], controls["task"], following]),
                widgets.HBox([controls["steps"], controls["inner_lr"], controls["k_shot"]])]
        # Stacked, each at most the output area's width (side by side they overflowed a 1,400 px window), and at
        # its own size otherwise: a VBox stretches its children, which blurred the small loss panel.
        for image in (predictions, losses):
            # No margin: with ipywidgets' default 2 px, a 100%-wide image overflowed the output area by 2 px.
            image.layout = widgets.Layout(max_width="100%", height="auto", align_self="flex-start", margin="0")
        return widgets.VBox([*rows, predictions, losses])


def show_playground(learners: Mapping[str, Learner], pool: TaskPool, **options: Any) -> Figure | None:
    """Show the live playground in a kernel; elsewhere return a static snapshot of its figure.

    In any IPython kernel the widget is displayed in one output together with a PNG of its first figure: the
    browser's widget manager shows the live controls, a static viewer of the saved notebook (GitHub, nbviewer
    without widget state) shows the PNG. Outside a kernel, with ``ANIL_HEADLESS=1`` or without ipywidgets, the
    snapshot figure is returned for the caller to show. Nothing here needs an environment variable to work.

    Args:
        learners: scenario name -> trained learner.
        pool: test tasks.
        **options: ``steps``, ``inner_lr``, ``seed`` of :class:`Playground`.

    Returns:
        The snapshot figure, or ``None`` when the live widget was displayed.
    """
    playground = Playground(learners, pool, **options)
    if static_only() or not in_kernel():
        return playground.figure()
    try:
        widget = playground.widget()
    except ImportError:  # ipywidgets missing: the snapshot still teaches something
        return playground.figure()
    from IPython.display import display

    bundle = widget._repr_mimebundle_()  # IPython's display protocol: the widget-view mime type
    bundle["image/png"] = base64.b64encode(figure_png(playground.figure())).decode("ascii")
    display(bundle, raw=True)
    return None
