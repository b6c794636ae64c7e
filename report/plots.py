"""Figures of the scenario comparison: training curves, accuracy, cost and the adaptation curve.

Each function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``, so it works on a headless
machine with any backend, does not display twice in Jupyter and is freed with the object. Every legend and
tick label is :attr:`report.compare.ScenarioRecord.label`, which names the architecture and the
pretraining source. The adaptation curve is the ANIL paper's question in one picture (Raghu, Raghu, Bengio &
Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the Effectiveness of MAML", ICLR 2020,
arXiv:1909.09157): how much of the accuracy appears only after inner steps.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from evaluation.resources import MEMORY_KIND_CUDA, MEMORY_KIND_LABELS
from experiments.records import ScenarioRecord

EMA_ALPHA = 0.05  # weight of the newest iteration in the smoothed curves (~20-iteration memory)
LONG_CURVE = 21  # points (0..20 steps) up to which an adaptation curve keeps markers and a linear axis
LABEL_WIDTH = 16  # characters per line of a bar's tick label, so that neighbouring labels never overlap
BAR_SLOT_INCHES = 1.6  # figure width per bar group: room for a LABEL_WIDTH-character line in a small font


def _tick_labels(records: Mapping[str, ScenarioRecord]) -> list[str]:
    """Bar labels: the scenario name, then its architecture and pretraining source wrapped to short lines."""
    return [
        f"{r.name}\n" + textwrap.fill(f"{r.architecture} ({r.pretrained_source})", LABEL_WIDTH)
        for r in records.values()
    ]


def smooth(values: Sequence[float], alpha: float = EMA_ALPHA) -> np.ndarray:
    """Exponential moving average (bias-corrected, as pandas' ``ewm(adjust=True)``) of ``values``."""
    return pd.Series(values, dtype=float).ewm(alpha=alpha).mean().to_numpy()


def _chance_line(ax: Axes, records: Mapping[str, ScenarioRecord]) -> None:
    """Dashed horizontal line at ``1 / n_way``."""
    n_way = next(iter(records.values())).test.n_way
    ax.axhline(1 / n_way, color="grey", linestyle="--", linewidth=1, label=f"chance (1/{n_way})")


def plot_training_curves(records: Mapping[str, ScenarioRecord], alpha: float = EMA_ALPHA) -> Figure:
    """Meta-training loss and query accuracy per iteration: raw values faint, their EMA bold.

    Args:
        records: scenario name -> record.
        alpha: EMA weight of the newest iteration.
    """
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, record in enumerate(records.values()):
        for ax, values in zip(axes, (record.train.losses, record.train.accs), strict=True):
            steps = np.arange(1, len(values) + 1)
            ax.plot(steps, values, color=f"C{i}", alpha=0.2, linewidth=0.8)
            ax.plot(steps, smooth(values, alpha), color=f"C{i}", linewidth=2, label=record.label)
    for ax, name in zip(axes, ("query loss", "query accuracy"), strict=True):
        ax.set(xlabel="outer iteration", ylabel=f"meta-training {name}", title=f"Training {name} (EMA α={alpha})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return fig


def plot_accuracy(records: Mapping[str, ScenarioRecord]) -> Figure:
    """Test accuracy before and after adaptation per scenario, with 95% CI error bars and the chance level."""
    fig = Figure(figsize=(max(6, BAR_SLOT_INCHES * len(records) + 1.5), 4.8), layout="constrained")
    ax = fig.subplots()
    x, width = np.arange(len(records)), 0.38
    for offset, (name, mean, ci) in zip(
        (-width / 2, width / 2),
        (("before", "acc_before", "ci_before"), ("after", "acc_after", "ci_after")),
        strict=True,
    ):
        values = [getattr(r.test, mean) for r in records.values()]
        errors = [getattr(r.test, ci) for r in records.values()]
        ax.bar(x + offset, values, width, yerr=errors, capsize=4, label=f"{name} adaptation")
    _chance_line(ax, records)
    ax.set_xticks(x, _tick_labels(records), fontsize="small")
    tasks = next(iter(records.values())).test.num_tasks
    ax.set(ylabel="query accuracy", ylim=(0, 1), title=f"Test accuracy on {tasks} tasks (95% CI)")
    ax.legend(fontsize="small")
    return fig


def plot_cost(records: Mapping[str, ScenarioRecord]) -> Figure:
    """Training speed (iterations/s) and peak memory per scenario."""
    fig = Figure(figsize=(max(12, 2 * (BAR_SLOT_INCHES * len(records) + 1)), 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    x, labels = np.arange(len(records)), _tick_labels(records)
    colors = [f"C{i}" for i in range(len(records))]
    kind = next(iter(records.values())).train.memory_kind
    axes[0].bar(x, [r.train.iterations_per_s for r in records.values()], color=colors)
    axes[0].set(ylabel="outer iterations / s", title="Training speed (higher is better)")
    axes[1].bar(x, [r.train.peak_memory_mb for r in records.values()], color=colors)
    memory_title = (
        "Peak memory per scenario (lower is better)"
        if kind == MEMORY_KIND_CUDA
        else "Peak RSS of the whole process: grows with run order, not a per-scenario cost"
    )
    axes[1].set(ylabel=f"MB ({MEMORY_KIND_LABELS.get(kind, kind)})", title=memory_title)
    for ax in axes:
        ax.set_xticks(x, labels, fontsize="small")
    return fig


def plot_validation_curves(records: Mapping[str, ScenarioRecord]) -> Figure:
    """Validation accuracy (after the training's inner steps) against outer iterations and against training time.

    The right panel appears when the validations carry ``wall_time_s`` (training seconds, validations excluded);
    reading both panels at one x value compares scenarios at an equal budget of iterations or of time.

    Args:
        records: scenario name -> record; scenarios without validations are left out.

    Raises:
        ValueError: no scenario has any validation.
    """
    if not any(r.train.val_history for r in records.values()):
        raise ValueError("No scenario has validation results; train with val_every > 0 and a validation pool.")
    timed = any("wall_time_s" in v for r in records.values() for v in r.train.val_history)
    fig = Figure(figsize=(12 if timed else 7, 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, 2 if timed else 1))
    for i, record in enumerate(records.values()):
        history = record.train.val_history
        if not history:
            continue
        acc, ci = [v["acc"] for v in history], [v["ci"] for v in history]
        xs = [[v["iteration"] for v in history]]
        if timed:
            xs.append([v.get("wall_time_s", np.nan) for v in history])
        for ax, x in zip(axes, xs, strict=True):
            ax.errorbar(x, acc, yerr=ci, marker="o", capsize=3, color=f"C{i}", label=record.label)
    panels = (("outer iteration", "at equal iterations"), ("training time (s, validations excluded)", "at equal time"))
    for ax, (xlabel, title) in zip(axes, panels, strict=False):
        ax.set(xlabel=xlabel, ylabel="validation query accuracy (95% CI)", title=f"Validation accuracy {title}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return fig


def plot_adaptation_curves(records: Mapping[str, ScenarioRecord]) -> Figure:
    """Test accuracy after 0, 1, ..., k inner steps, one line per scenario that has a curve, and chance."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    longest = 0
    for i, record in enumerate(records.values()):
        if record.adaptation_curve is not None:
            longest = max(longest, len(record.adaptation_curve))
            ax.plot(
                range(len(record.adaptation_curve)),
                record.adaptation_curve,
                marker="o" if len(record.adaptation_curve) <= LONG_CURVE else None,
                color=f"C{i}",
                label=record.label,
            )
    if longest > LONG_CURVE:
        # Most of the change happens in the first few steps; a symmetric log axis keeps them readable.
        ax.set_xscale("symlog", linthresh=1)
        ticks = [t for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500) if t < longest]
        ax.set_xticks(ticks, [str(t) for t in ticks])
    _chance_line(ax, records)
    ax.set(
        xlabel="inner steps on the support set",
        ylabel="query accuracy",
        ylim=(0, 1),
        title="Adaptation curve (test tasks)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_layer_cka(cka: pd.DataFrame, title: str = "MAML: representation change in the inner loop") -> Figure:
    """One bar per layer: mean linear CKA between its output before and after the inner loop, with 95% CI.

    Args:
        cka: :func:`evaluation.feature_reuse.layer_cka`'s table (index: layer names; columns ``cka``, ``ci``,
            ``tasks``).
        title: figure title.
    """
    fig = Figure(figsize=(max(6, 1.3 * len(cka)), 4.5), layout="constrained")
    ax = fig.subplots()
    colors = ["C2" if layer == "head" or layer.endswith(".head") else "C0" for layer in cka.index]
    ax.bar(range(len(cka)), cka["cka"], yerr=cka["ci"], capsize=4, color=colors)
    ax.axhline(1, color="grey", linestyle="--", linewidth=1, label="unchanged (CKA = 1)")
    ax.set_xticks(range(len(cka)), [str(layer).removeprefix("body.") for layer in cka.index], fontsize="small")
    tasks = int(cka["tasks"].iloc[0]) if len(cka) else 0
    ax.set(ylabel="linear CKA, before vs after adaptation", ylim=(0, 1.05), title=f"{title} ({tasks} tasks)")
    ax.legend(fontsize="small", loc="lower left")
    return fig
