"""The scenario comparison table: cost, training and test accuracy of every scenario, side by side.

One column per scenario (S1-S4 of the seed notebook, optionally MAML on the same tasks) and one row per metric
of the seed's table, extended with confidence intervals, ranks and a meta-overfitting flag. The question it
answers is the ANIL paper's (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR 2020, arXiv:1909.09157): how much accuracy each body and
training regime buys, and at what cost. Every column names its architecture and pretraining source.

:func:`comparison_table` returns raw values (ints, floats, strings, ``None``) so that code can use them;
:func:`format_table` turns them into display strings. Notes on the table (the seed's double-counted S4 total,
the overfitting rule, what the memory figures measure) are in ``table.attrs["notes"]``.

What each row compares, so that no row ranks something else than it says:

* **Training tasks.** The pool size, the tasks *seen* (iterations × meta-batch size, repeats counted) and the
  distinct tasks seen (at most the pool). The params/task ratio divides by the distinct tasks seen.
* **Loss.** Initial and final losses are means over the first and last :data:`LOSS_WINDOW` of iterations, and
  over at least :data:`MIN_LOSS_ITERATIONS` (half of a shorter run): a single meta-batch's loss is too noisy to
  quote.
* **Train-test gap.** Training accuracy is measured after ``inner_steps`` inner steps; the gap subtracts the test
  accuracy after the same number of steps (``EvalResult.acc_at_train_steps``), not after ``test_inner_steps``.
* **Memory.** On CUDA each scenario's peak allocation is its own (the counter is reset when training starts). On
  a CPU the figure is the whole notebook process's peak resident set, which only grows as scenarios run one
  after another, so it ranks the run order: CPU figures are shown but get no rank and no ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import pandas as pd

from evaluation.resources import MEMORY_KIND_CUDA, MEMORY_KIND_LABELS
from experiments.records import ScenarioRecord, TrainResult
from utils.networks import RESNET_FROZEN_TOTAL_NOTE

OVERFIT_GAP = 0.10
TRAIN_ACC_WINDOW = 0.10  # share of the last iterations whose training accuracy is averaged
LOSS_WINDOW = 0.05  # share of the first/last iterations whose loss is averaged for "initial"/"final"
MIN_LOSS_ITERATIONS = 5  # ...but never fewer iterations than this (or half a shorter run): one loss is noise
INITIAL_LOSS = f"Loss: initial (mean of first {LOSS_WINDOW:.0%}, ≥ {MIN_LOSS_ITERATIONS} it.)"
FINAL_LOSS = f"Loss: final (mean of last {LOSS_WINDOW:.0%}, ≥ {MIN_LOSS_ITERATIONS} it.)"
OVERFIT_RULE = (
    f"Meta-overfitting is flagged when the training query accuracy (mean over the last "
    f"{TRAIN_ACC_WINDOW:.0%} of iterations, after the training's inner steps) exceeds the test accuracy after "
    f"the same number of inner steps by more than {OVERFIT_GAP:.2f}, or when a scenario has the lowest final "
    "training loss of all but a test accuracy below their median. A training accuracy that *falls* during "
    "training is not overfitting: it means the training itself damages the model (e.g. a pretrained body)."
)
GAP_NOTE = (
    "Train–test gap: training query accuracy (last 10% of iterations, measured while the body still changes) "
    "minus test accuracy after the same number of inner steps (n/a where that was not measured)."
)
TASKS_NOTE = (
    "Training tasks seen = iterations × meta-batch size (repeats counted); distinct = min(seen, pool size). "
    "Params/task divides the trainable parameters by the distinct tasks seen."
)
CI_NOTE = "95% CI: ± 1.96 · sample std (ddof=1) / √tasks over per-task query accuracies."
MEMORY_NOTE = (
    "Peak memory: torch.cuda.max_memory_allocated on CUDA, reset for each scenario. On a CPU it is the peak "
    "resident set of the whole process (data set, every earlier scenario's leftovers and Python included), which "
    "only grows through the notebook and so ranks the run order: CPU figures get no memory rank and no ratio."
)


def training_accuracy(train: TrainResult, end: Literal["first", "last"] = "last") -> float:
    """Mean training query accuracy over the first or last :data:`TRAIN_ACC_WINDOW` of iterations (at least one).

    A falling training accuracy (first above last) means training hurts the model, e.g. a pretrained body
    damaged by a too-large outer step; it is not meta-overfitting, which needs training above test accuracy.
    """
    window = max(1, round(len(train.accs) * TRAIN_ACC_WINDOW))
    values = train.accs[:window] if end == "first" else train.accs[-window:]
    return sum(values) / window if train.accs else float("nan")


def loss_window_size(iterations: int, window: float = LOSS_WINDOW) -> int:
    """Iterations averaged for an initial or final loss: ``window`` of them, at least :data:`MIN_LOSS_ITERATIONS`
    (half of a run shorter than twice that, so the two ends never overlap), at least one."""
    return max(1, round(iterations * window), min(MIN_LOSS_ITERATIONS, iterations // 2))


def smoothed_loss(losses: Sequence[float], end: Literal["first", "last"], window: float = LOSS_WINDOW) -> float:
    """Mean loss over the first or last :func:`loss_window_size` iterations.

    Args:
        losses: per-iteration training losses.
        end: ``"first"`` (initial loss) or ``"last"`` (final loss).
        window: share of the iterations averaged.
    """
    if not losses:
        return float("nan")
    count = loss_window_size(len(losses), window)
    values = losses[:count] if end == "first" else losses[-count:]
    return sum(values) / count


def tasks_seen(r: ScenarioRecord) -> int | None:
    """Training tasks drawn, repeats counted: ``iterations_done × meta_batch_size`` (``None`` when unknown)."""
    return None if r.meta_batch_size is None else r.train.iterations_done * r.meta_batch_size


def distinct_tasks_seen(r: ScenarioRecord) -> int | None:
    """Distinct training tasks seen: each epoch is a permutation of the pool, so ``min(seen, pool)``."""
    seen = tasks_seen(r)
    return None if seen is None else min(seen, r.train_tasks)


def train_test_gap(r: ScenarioRecord) -> float | None:
    """Training accuracy minus test accuracy after the same number of inner steps; ``None`` when not measured."""
    if r.test.acc_at_train_steps is None:
        return None
    return training_accuracy(r.train) - r.test.acc_at_train_steps


def comparable_memory(r: ScenarioRecord) -> float | None:
    """Peak memory when it is the scenario's own (CUDA), ``None`` for a whole-process CPU figure."""
    return r.train.peak_memory_mb if r.train.memory_kind == MEMORY_KIND_CUDA else None


def _ratio(numerator: float | None, denominator: int | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


SEED_COUNT_TASKS = "100 tasks: the seed's count, drawn here"  # test_seed: the seed's own tasks are not known


def _seed_test(r: ScenarioRecord, attribute: str) -> float | None:
    return None if r.test_seed is None else getattr(r.test_seed, attribute)


# Row label -> (value of one scenario, display format). Relative rows are added by _relative_rows.
Getter = Callable[[ScenarioRecord], Any]
BASE_ROWS: dict[str, tuple[Getter, str]] = {
    "Description": (lambda r: r.description, "s"),
    "Architecture": (lambda r: r.architecture, "s"),
    "Pretraining source": (lambda r: r.pretrained_source, "s"),
    "Parameters: total": (lambda r: r.params["total"], ",d"),
    "Parameters: trainable": (lambda r: r.params["trainable"], ",d"),
    "Parameters: body": (lambda r: r.params["body"], ",d"),
    "Parameters: head": (lambda r: r.params["head"], ",d"),
    "Parameters: BatchNorm": (lambda r: r.params["batchnorm"], ",d"),
    "Training tasks: pool": (lambda r: r.train_tasks, ",d"),
    "Training tasks: seen (iterations × meta-batch)": (tasks_seen, ",d"),
    "Training tasks: distinct seen": (distinct_tasks_seen, ",d"),
    "Params/task ratio (trainable / distinct tasks seen)": (
        lambda r: _ratio(r.params["trainable"], distinct_tasks_seen(r)),
        ",.1f",
    ),
    "Iterations": (lambda r: r.train.iterations_done, ",d"),
    INITIAL_LOSS: (lambda r: smoothed_loss(r.train.losses, "first"), ".3f"),
    FINAL_LOSS: (lambda r: smoothed_loss(r.train.losses, "last"), ".3f"),
    "Loss: best (minimum)": (lambda r: min(r.train.losses), ".3f"),
    "Loss: maximum": (lambda r: max(r.train.losses), ".3f"),
    "Training accuracy (first 10% of iterations)": (lambda r: training_accuracy(r.train, "first"), ".3f"),
    "Training accuracy (last 10% of iterations)": (lambda r: training_accuracy(r.train), ".3f"),
    "Training time (s)": (lambda r: r.train.wall_time_s, ",.1f"),
    "Iterations/s": (lambda r: r.train.iterations_per_s, ".2f"),
    "GPU utilisation (%)": (lambda r: r.train.gpu_utilisation, ".0f"),
    "Peak memory (MB)": (lambda r: r.train.peak_memory_mb, ",.0f"),
    "Memory measure": (lambda r: MEMORY_KIND_LABELS.get(r.train.memory_kind, r.train.memory_kind), "s"),
    "Device": (lambda r: r.train.device, "s"),
    "Test tasks": (lambda r: r.test.num_tasks, ",d"),
    "Accuracy before adaptation": (lambda r: r.test.acc_before, ".3f"),
    "Inner steps: training": (lambda r: r.test.train_steps, "d"),
    "Inner steps: test": (lambda r: r.test.steps, "d"),
    "Accuracy after adaptation": (lambda r: r.test.acc_after, ".3f"),
    "Accuracy after the training's inner steps": (lambda r: r.test.acc_at_train_steps, ".3f"),
    "Adaptation gain": (lambda r: r.test.gain, "+.3f"),
    "95% CI (±, after adaptation)": (lambda r: r.test.ci_after, ".3f"),
    "NIL accuracy (no inner loop)": (lambda r: r.test.nil_acc, ".3f"),
    f"Accuracy after adaptation ({SEED_COUNT_TASKS})": (lambda r: _seed_test(r, "acc_after"), ".3f"),
    f"95% CI (±, {SEED_COUNT_TASKS})": (lambda r: _seed_test(r, "ci_after"), ".3f"),
}
RELATIVE_ROWS: dict[str, str] = {
    "Speed-up vs reference (it/s ratio)": ".2f",
    "Memory vs reference (ratio, CUDA only)": ".2f",
    "Train–test accuracy gap (same inner steps)": "+.3f",
    "Rank: training loss (final, 1 = lowest)": "d",
    "Rank: test accuracy (1 = highest)": "d",
    "Rank: speed (1 = fastest)": "d",
    "Rank: memory (1 = least, CUDA only)": "d",
    "Meta-overfitting flag": "flag",
}
ROW_FORMATS = {**{label: fmt for label, (_, fmt) in BASE_ROWS.items()}, **RELATIVE_ROWS}
REQUIRED_ROWS = tuple(ROW_FORMATS)


def _rank(row: pd.Series, lowest_first: bool) -> pd.Series:
    """Competition ranks (1, 2, 2, 4) of a row of numbers; missing values stay missing."""
    ranks = pd.to_numeric(row, errors="coerce").rank(method="min", ascending=lowest_first)
    return ranks.map(lambda v: None if pd.isna(v) else int(v)).astype(object)


def _relative_rows(table: pd.DataFrame, scenarios: Mapping[str, ScenarioRecord], reference: str) -> pd.DataFrame:
    """Rows comparing scenarios: ratios to ``reference``, ranks, the train-test gap, the overfitting flag."""
    speed = table.loc["Iterations/s"].astype(float)
    memory = pd.Series({name: comparable_memory(r) for name, r in scenarios.items()}, dtype=float)
    test_acc = table.loc["Accuracy after adaptation"].astype(float)
    final_loss = table.loc[FINAL_LOSS].astype(float)
    gap = pd.Series({name: train_test_gap(r) for name, r in scenarios.items()}, dtype=float)
    loss_rank = _rank(final_loss, lowest_first=True)
    best_but_worse = (loss_rank == 1) & (test_acc < test_acc.median())
    rows = {
        "Speed-up vs reference (it/s ratio)": speed / speed[reference],
        "Memory vs reference (ratio, CUDA only)": memory / memory[reference],
        "Train–test accuracy gap (same inner steps)": gap,
        "Rank: training loss (final, 1 = lowest)": loss_rank,
        "Rank: test accuracy (1 = highest)": _rank(test_acc, lowest_first=False),
        "Rank: speed (1 = fastest)": _rank(speed, lowest_first=False),
        "Rank: memory (1 = least, CUDA only)": _rank(memory, lowest_first=True),
        "Meta-overfitting flag": (gap > OVERFIT_GAP) | best_but_worse,  # NaN > x is False
    }
    return pd.DataFrame(rows).T.astype(object)


def comparison_table(scenarios: Mapping[str, ScenarioRecord], reference: str | None = None) -> pd.DataFrame:
    """The comparison table: one row per metric (:data:`REQUIRED_ROWS`), one column per scenario.

    Args:
        scenarios: column name -> record, in display order (e.g. S1, S2, S3, S4, MAML).
        reference: column that speed-up and memory ratios are relative to; the first column by default (S1).

    Returns:
        An object-dtype DataFrame of raw values (``None`` where not measured, e.g. GPU utilisation on a CPU);
        ``attrs["notes"]`` lists the notes and ``attrs["reference"]`` the reference column.
    """
    if not scenarios:
        raise ValueError("comparison_table needs at least one scenario.")
    reference = next(iter(scenarios)) if reference is None else reference
    if reference not in scenarios:
        raise ValueError(f"reference {reference!r} is not a scenario; choose one of {list(scenarios)}.")
    base = pd.DataFrame(
        {name: [get(r) for get, _ in BASE_ROWS.values()] for name, r in scenarios.items()},
        index=list(BASE_ROWS),
        dtype=object,
    )
    table = pd.concat([base, _relative_rows(base, scenarios, reference)]).loc[list(ROW_FORMATS)]
    table.attrs["reference"] = reference
    ratio_note = f"Speed-up and memory ratios are relative to {reference}."
    table.attrs["notes"] = [
        RESNET_FROZEN_TOTAL_NOTE, OVERFIT_RULE, GAP_NOTE, TASKS_NOTE, CI_NOTE, MEMORY_NOTE, ratio_note,
    ]
    return table


def _format_value(value: Any, fmt: str) -> str:
    """Display string of one table cell; ``None`` and NaN become ``"n/a"``."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if fmt == "flag":
        return "yes" if value else "no"
    return format(value, fmt)


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """Display version of :func:`comparison_table`: thousands separators, 3-decimal accuracies, ``"n/a"``."""
    formatted = pd.DataFrame(
        {col: [_format_value(v, ROW_FORMATS.get(row, "")) for row, v in table[col].items()] for col in table},
        index=table.index,
    )
    formatted.attrs = dict(table.attrs)
    return formatted


class BudgetPoint(NamedTuple):
    """One validation of a scenario: ``iteration``, training seconds so far, accuracy and per-task accuracies."""

    iteration: int
    wall_time_s: float | None
    acc: float
    per_task: list[float] | None


def _budget_points(train: TrainResult) -> list[BudgetPoint]:
    return [
        BudgetPoint(int(v["iteration"]), v.get("wall_time_s"), float(v["acc"]), v.get("per_task"))
        for v in train.val_history
    ]


def equal_budget_points(a: TrainResult, b: TrainResult) -> dict[str, tuple[BudgetPoint, BudgetPoint] | None]:
    """Validation results of two runs at equal iterations and at (about) equal training time.

    * ``"iterations"``: both runs' validations at the largest iteration count that both validated at.
    * ``"time"``: with ``T`` the earlier of the two runs' last validation times, each run's last validation at or
      before ``T``; one of the two is exactly at ``T``, the other at most ``T`` (validations are ``val_every``
      iterations apart, so the times match only as closely as that allows; the points carry their own times).

    Training time is ``TrainResult.wall_time_s`` as it stood at the validation (validations excluded).

    Returns:
        ``{"iterations": (point_a, point_b) or None, "time": (point_a, point_b) or None}``; ``None`` when the runs
        share no validated iteration, or when validation times were not recorded.
    """
    points_a, points_b = _budget_points(a), _budget_points(b)
    common = sorted({p.iteration for p in points_a} & {p.iteration for p in points_b})
    by_iteration = None
    if common:
        by_iteration = tuple(next(p for p in pts if p.iteration == common[-1]) for pts in (points_a, points_b))
    timed_a, timed_b = ([p for p in pts if p.wall_time_s is not None] for pts in (points_a, points_b))
    by_time = None
    if timed_a and timed_b:
        budget = min(timed_a[-1].wall_time_s, timed_b[-1].wall_time_s)
        within = [[p for p in pts if p.wall_time_s <= budget] for pts in (timed_a, timed_b)]
        by_time = (within[0][-1], within[1][-1]) if all(within) else None
    return {"iterations": by_iteration, "time": by_time}
