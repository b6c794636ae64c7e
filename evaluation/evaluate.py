"""Few-shot evaluation: query accuracy before and after adaptation, with 95% confidence intervals.

Protocol of ANIL (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, arXiv:1909.09157) and MAML on Omniglot (Lake et al., Science 2015): a
fixed, seeded pool of N-way K-shot tasks from characters never seen in training (``images_evaluation``); each
task's head starts from the learnt initialisation, takes ``steps`` SGD steps on the support set and is scored
on the query set. The accuracy *before* adaptation (``steps=0``, the head at its initialisation) is chance
level, ``1 / n_way``, on average: every task assigns its labels by a random permutation.

Confidence interval: ``mean ± 1.96 · s / √n`` over the ``n`` per-task accuracies, with ``s`` the **sample**
standard deviation (``ddof=1``). 1.96 is the normal quantile; for 100 tasks (the seed's count) Student's t would give
1.984, 1% wider. The field's standard is ``n >= 600`` tasks.

Paired differences (:func:`paired_difference`): two methods evaluated on the *same* tasks are compared by the
mean of their per-task differences, ``mean(a - b) ± 1.96 · s_d / √n`` with ``s_d`` the sample standard deviation
of the differences. Pairing removes the variation between tasks that both methods share (a hard task is hard for
both), so the interval is usually much narrower than the two separate intervals suggest. When it contains 0 the
two methods are not distinguishable on these tasks.

NIL ("No Inner Loop", :mod:`algorithms.nil`) classifies the same queries by the cosine similarities of their
features to the support features, without any head.

Every function takes any :class:`algorithms.learner.Learner` and chooses its path from the contract: a learner
with a head-only fast path (``learner.head_path()``, ANIL) has its body run once per set, which serves every step
count and NIL, and its inner loop continues from the previous step count; any other learner (MAML, NIL) is adapted
afresh with its own ``adapt`` and ``predict`` for every step count. The accuracy at the *training* number of inner
steps (``acc_at_train_steps``) is measured alongside when it costs no extra body forward (the fast path), so that a
training accuracy can be compared with a test accuracy after the same number of steps.

Everything runs under ``torch.no_grad``: ANIL's inner loop uses the closed-form head gradient, and MAML's
``adapt`` re-enables autograd for itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from algorithms.learner import HeadPath, Learner, validate_tasks
from algorithms.nil import nil_logits, nil_scores_from_features
from evaluation.serialise import dataclass_kwargs
from utils.tasks import TaskBatch, TaskPool

Z_95 = 1.96  # two-sided 95% quantile of the normal distribution


@dataclass
class EvalResult:
    """Accuracies on a pool of evaluation tasks; accuracies are fractions in ``[0, 1]``.

    Attributes:
        num_tasks: tasks evaluated.
        n_way: classes per task (chance level is ``1 / n_way``).
        steps: inner steps of the adaptation.
        acc_before: mean query accuracy with the head at its initialisation.
        ci_before: 95% CI half-width of ``acc_before``.
        acc_after: mean query accuracy after ``steps`` inner steps.
        ci_after: 95% CI half-width of ``acc_after``.
        gain: ``acc_after - acc_before``.
        gain_ci: 95% CI half-width of the per-task (paired) gains.
        per_task_before: accuracy of every task before adaptation.
        per_task_after: accuracy of every task after adaptation.
        nil_acc: mean NIL accuracy, ``None`` when not measured.
        nil_ci: 95% CI half-width of ``nil_acc``.
        per_task_nil: NIL accuracy of every task.
        eval_time_s: wall time of the evaluation.
        train_steps: inner steps of meta-training (``learner.inner_steps``), ``None`` when not measured.
        acc_at_train_steps: mean query accuracy after ``train_steps`` inner steps, ``None`` when not measured.
        ci_at_train_steps: 95% CI half-width of ``acc_at_train_steps``.
    """

    num_tasks: int
    n_way: int
    steps: int
    acc_before: float
    ci_before: float
    acc_after: float
    ci_after: float
    gain: float
    gain_ci: float
    per_task_before: list[float]
    per_task_after: list[float]
    nil_acc: float | None = None
    nil_ci: float | None = None
    per_task_nil: list[float] | None = None
    eval_time_s: float = 0.0
    train_steps: int | None = None
    acc_at_train_steps: float | None = None
    ci_at_train_steps: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_dict`; ``ValueError`` naming missing fields."""
        return cls(**dataclass_kwargs(cls, data))


def confidence_interval(per_task_acc: Sequence[float] | Tensor) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 · s / √n`` (``s``: sample standard deviation, ddof=1).

    Args:
        per_task_acc: ``(n,)`` per-task accuracies.

    Returns:
        ``(mean, half_width)``; the half-width is ``nan`` for a single task.
    """
    values = torch.as_tensor(per_task_acc, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("confidence_interval needs at least one per-task accuracy, got none.")
    mean = values.mean().item()
    if values.numel() == 1:
        return mean, math.nan
    return mean, Z_95 * values.std(correction=1).item() / math.sqrt(values.numel())


def paired_difference(a: Sequence[float] | Tensor, b: Sequence[float] | Tensor) -> tuple[float, float]:
    """Mean per-task difference ``a - b`` and its paired 95% CI half-width, for two methods on the same tasks.

    Args:
        a: ``(n,)`` per-task accuracies of the first method.
        b: ``(n,)`` per-task accuracies of the second method, on the same tasks in the same order.

    Returns:
        ``(mean, half_width)`` with ``half_width = 1.96 · s_d / √n`` (``s_d``: sample std of ``a - b``);
        the interval ``mean ± half_width`` containing 0 means "not distinguishable".

    Raises:
        ValueError: the lengths differ (then the tasks cannot be the same), or there are no tasks.
    """
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.numel() != b.numel():
        raise ValueError(
            f"paired_difference needs per-task accuracies on the same tasks, got {a.numel()} and {b.numel()} "
            "values; evaluate both methods on the same task pool."
        )
    return confidence_interval(a - b)


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-task accuracy ``(tasks,)`` of logits ``(tasks, n, n_way)`` against labels ``(tasks, n)``."""
    return (logits.argmax(-1) == labels).float().mean(1)


def _set_features(learner: Learner, batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """Support and query features ``(tasks, n, features)`` of a validated batch, evaluation BatchNorm policy."""
    validate_tasks(*batch, learner.head.out_features, learner.body)
    return learner.features(batch.support_x, False), learner.features(batch.query_x, False)


def _head_path_accuracies(path: HeadPath, batch: TaskBatch, steps: Sequence[int],
                          features: tuple[Tensor, Tensor]) -> Tensor:
    """Query accuracy after each number of inner steps along a head-only fast path, reusing the body's features.

    Identical to ``learner.predict(query_x, learner.adapt(support_x, support_y, steps=s))`` for every ``s``: the
    body ran once per set and the inner loop continues from the previous step count instead of restarting.

    Args:
        path: the learner's :class:`algorithms.learner.HeadPath`.
        batch: the tasks.
        steps: inner step counts.
        features: the batch's ``(support, query)`` features (:func:`_set_features`).

    Returns:
        ``(len(steps), tasks)`` accuracies.
    """
    support, query = features
    fast, done, by_steps = path.initial_head(), 0, {}
    for target in sorted(set(steps)):
        fast = path.adapt_head(support, batch.support_y, fast, target - done)
        by_steps[target], done = accuracy(path.head_logits(query, fast), batch.query_y), target
    return torch.stack([by_steps[s] for s in steps])


def accuracies_by_steps(learner: Learner, batch: TaskBatch, steps: Sequence[int]) -> Tensor:
    """Query accuracy of every task of ``batch`` after each number of inner steps in ``steps``.

    Args:
        learner: any learner; one with a head-only fast path runs its body once per set.
        batch: tasks, ``support_x (tasks, n_way * k_shot, 1, H, W)`` etc.
        steps: inner step counts, e.g. ``[0, 5]``.

    Returns:
        ``(len(steps), tasks)`` accuracies in ``[0, 1]``.
    """
    path = learner.head_path()
    if path is not None:
        return _head_path_accuracies(path, batch, steps, _set_features(learner, batch))
    support_x, support_y, query_x, query_y = batch
    return torch.stack(
        [accuracy(learner.predict(query_x, learner.adapt(support_x, support_y, steps=s)), query_y) for s in steps]
    )


def per_task_accuracies(
    learner: Learner,
    pool: TaskPool,
    steps: Sequence[int],
    batch_size: int,
    device: Any,
    nil: bool,
    progress: bool,
) -> tuple[Tensor, Tensor | None]:
    """Query accuracy of every task of ``pool`` after each inner-step count, and NIL accuracy if asked.

    Args:
        learner: any learner (ANIL, MAML, NIL).
        pool: evaluation (or validation) tasks.
        steps: inner-step counts, e.g. ``(0, 10)``.
        batch_size: tasks materialised at once.
        device: where the tasks are sent.
        nil: also compute NIL accuracy on the learner's body features.
        progress: show a progress bar.

    Returns:
        ``(len(steps), tasks)`` accuracies, and ``(tasks,)`` NIL accuracies or ``None``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    accs, nils = [], []
    starts = range(0, len(pool), batch_size)
    path = learner.head_path()
    with torch.no_grad():
        for start in tqdm(starts, desc="Evaluating", unit="batch", disable=not progress, leave=False):
            batch = pool.batch(slice(start, start + batch_size), device)
            if path is not None:  # one body forward per set serves every step count and NIL
                support, query = features = _set_features(learner, batch)
                accs.append(_head_path_accuracies(path, batch, steps, features).cpu())
                scores = nil_scores_from_features(support, batch.support_y, query, pool.n_way) if nil else None
            else:
                accs.append(accuracies_by_steps(learner, batch, steps).cpu())
                scores = nil_logits(learner, *batch[:3]) if nil else None
            if scores is not None:
                nils.append(accuracy(scores, batch.query_y).cpu())
    return torch.cat(accs, dim=1), torch.cat(nils) if nil else None


def evaluate(
    learner: Learner,
    task_pool: TaskPool,
    *,
    batch_size: int = 32,
    device: torch.device | str,
    steps: int | None = None,
    nil: bool = False,
    progress: bool = True,
    train_steps: int | None = None,
) -> EvalResult:
    """Query accuracy before and after adaptation on every task of ``task_pool``.

    Args:
        learner: any learner (ANIL, MAML, NIL).
        task_pool: fixed evaluation tasks (from ``images_evaluation``, or held-out background characters
            for validation).
        batch_size: tasks materialised and evaluated at once.
        device: where the tasks are sent (the learner's device).
        steps: inner steps; defaults to ``learner.inner_steps``.
        nil: also measure NIL accuracy on the learner's body features.
        progress: show a progress bar.
        train_steps: also measure the accuracy after this many steps (the training count), for a like-for-like
            train-test gap; defaults to ``learner.inner_steps`` for a learner with a head-only fast path, where it
            costs no extra body forward, and to nothing for other learners (MAML would adapt once more).

    Returns:
        An :class:`EvalResult` with means, 95% CI half-widths and per-task accuracies.
    """
    return _evaluate(learner, task_pool, steps, train_steps, (), batch_size, device, nil, progress)[0]


def evaluate_with_curve(
    learner: Learner,
    task_pool: TaskPool,
    curve_steps: int,
    *,
    batch_size: int = 32,
    device: torch.device | str,
    steps: int | None = None,
    nil: bool = False,
    progress: bool = True,
) -> tuple[EvalResult, list[float]]:
    """:func:`evaluate` and the adaptation curve (accuracy after ``0..curve_steps`` inner steps) from **one** pass.

    With a head-only fast path (ANIL) the curve's step counts cost only head steps, from one body forward per set;
    two separate passes would run the body over every task twice (for ResNet18 on a CPU, about 20 s per 600
    tasks). Any other learner is adapted afresh for every step count: for MAML, whose inner loop re-runs the body,
    that is ``curve_steps + 1`` adaptations of every task.

    Args:
        learner: any learner.
        task_pool: evaluation tasks, support ``(tasks, n_way * k_shot, 1, H, W)`` each.
        curve_steps: largest inner-step count of the curve.
        batch_size, device, steps, nil, progress: as for :func:`evaluate`.

    Returns:
        ``(result, curve)``: ``result`` as :func:`evaluate` gives it (``result.eval_time_s`` covers both),
        ``curve[s]`` the mean query accuracy after ``s`` inner steps, ``s = 0..curve_steps``.
    """
    _check_steps("curve_steps", curve_steps)
    result, extra = _evaluate(learner, task_pool, steps, None, range(curve_steps + 1), batch_size, device, nil,
                              progress)
    return result, extra.mean(1).tolist()


def _evaluate(learner: Learner, task_pool: TaskPool, steps: int | None, train_steps: int | None,
              extra_steps: Sequence[int], batch_size: int, device: torch.device | str, nil: bool,
              progress: bool) -> tuple[EvalResult, Tensor]:
    """:func:`evaluate`, plus the ``(len(extra_steps), tasks)`` accuracies after ``extra_steps`` from the same pass."""
    steps = learner.inner_steps if steps is None else steps
    if train_steps is None and learner.head_path() is not None:
        train_steps = learner.inner_steps
    started = time.perf_counter()
    step_counts = [0, steps] + ([] if train_steps is None or train_steps == steps else [train_steps])
    accs, nils = per_task_accuracies(learner, task_pool, [*step_counts, *extra_steps], batch_size, device, nil,
                                     progress)
    accs, extra = accs[: len(step_counts)], accs[len(step_counts):]
    (before, ci_before), (after, ci_after) = confidence_interval(accs[0]), confidence_interval(accs[1])
    at_train = (None, None) if train_steps is None else confidence_interval(accs[-1])
    nil_acc, nil_ci = confidence_interval(nils) if nils is not None else (None, None)
    result = EvalResult(
        num_tasks=len(task_pool),
        n_way=task_pool.n_way,
        steps=steps,
        acc_before=before,
        ci_before=ci_before,
        acc_after=after,
        ci_after=ci_after,
        gain=after - before,
        gain_ci=confidence_interval(accs[1] - accs[0])[1],
        per_task_before=accs[0].tolist(),
        per_task_after=accs[1].tolist(),
        nil_acc=nil_acc,
        nil_ci=nil_ci,
        per_task_nil=None if nils is None else nils.tolist(),
        eval_time_s=time.perf_counter() - started,
        train_steps=train_steps,
        acc_at_train_steps=at_train[0],
        ci_at_train_steps=at_train[1],
    )
    return result, extra


def _check_steps(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
