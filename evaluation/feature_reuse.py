"""Feature reuse in a trained MAML, measured as the ANIL paper measured it.

Raghu, Raghu, Bengio & Vinyals ("Rapid Learning or Feature Reuse? Towards Understanding the Effectiveness of
MAML", ICLR 2020, arXiv:1909.09157, Section 3) asked, of a *trained MAML* network, how much its inner loop changes
the body. Two experiments answer it, both here:

* **Test-time freezing** (:func:`freezing_accuracies`): on the same test tasks, the query accuracy when the inner
  loop adapts all layers (MAML as trained), only the head (the body frozen at its meta-learnt weights), and
  nothing at all (NIL, :func:`algorithms.nil.nil_logits`, which drops the head). The paper found "all layers" and
  "head only" almost equal.
* **Representation similarity** (:func:`layer_cka`): per layer, linear CKA (Kornblith, Norouzi, Lee & Hinton,
  "Similarity of Neural Network Representations Revisited", ICML 2019) between the layer's output before and
  after the inner loop, on the same images. CKA 1 means the representation is unchanged up to rotation and
  scale. The paper found the conv blocks' CKA close to 1 and the head's far lower.

Both use the learner's evaluation BatchNorm policy (by default each set normalised with its own statistics, so
features are transductive: they depend on the other images of the set).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from algorithms.features import body_mode
from algorithms.learner import Learner
from algorithms.maml import HEAD_PREFIX, MAML
from algorithms.nil import nil_logits
from evaluation.evaluate import accuracy, confidence_interval, paired_difference
from utils.tasks import TaskPool

FREEZING_COLUMNS = ("all layers", "head only", "none (NIL)")


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA between two representations of the same ``n`` examples (Kornblith et al., ICML 2019, eq. 5).

    ``CKA = ‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F ‖Yᶜᵀ Yᶜ‖_F)`` with column-centred ``Xᶜ``, ``Yᶜ``, computed through the
    ``n × n`` Gram matrices, so wide layers (a conv block's whole feature map) cost ``O(n² d)``. It lies in
    ``[0, 1]``, is 1 for identical representations and is invariant to orthogonal transforms and isotropic
    scaling of either one. A constant representation has no similarity defined: the result is ``nan``.

    Args:
        x: ``(n, d1)`` features.
        y: ``(n, d2)`` features of the same examples.

    Returns:
        A scalar tensor (float64).
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"linear_cka needs (n, d1) and (n, d2) features of the same n examples, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}; flatten each example's activations first."
        )
    x, y = x.double(), y.double()
    x, y = x - x.mean(0), y - y.mean(0)
    gram_x, gram_y = x @ x.T, y @ y.T
    return (gram_x * gram_y).sum() / (gram_x.norm() * gram_y.norm())


def _check_maml(learner: Learner) -> None:
    """Both measurements compare a body adapted by the inner loop with the meta-learnt one: only MAML's changes."""
    if learner.adapts != "all":
        raise ValueError(f"Feature-reuse measurements need a trained MAML learner (its inner loop adapts every "
                         f"layer), got {type(learner).__name__}, whose inner loop adapts {learner.adapts!r}.")


def freezing_accuracies(
    maml: MAML, pool: TaskPool, steps: int | None = None, *, batch_size: int = 32, device: Any = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Query accuracy of every task when the inner loop adapts all layers, the head only, or nothing (NIL).

    Args:
        maml: a trained MAML learner.
        pool: test tasks.
        steps: inner steps at test time (defaults to ``maml.inner_steps``); the same for both adapted variants.
        batch_size: tasks materialised at once.
        device: where the tasks are sent (the learner's device).
        progress: show a progress bar.

    Returns:
        One row per task, columns :data:`FREEZING_COLUMNS`, accuracies in ``[0, 1]``; the columns are paired
        (same tasks), so compare them with :func:`paired_summary`.
    """
    _check_maml(maml)
    rows = []
    starts = range(0, len(pool), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="Freezing", unit="batch", disable=not progress, leave=False):
            support_x, support_y, query_x, query_y = pool.batch(slice(start, start + batch_size), device)
            accs = [
                accuracy(maml.predict(query_x, maml.adapt(support_x, support_y, steps, trainable=prefix)), query_y)
                for prefix in ("", HEAD_PREFIX)
            ]
            accs.append(accuracy(nil_logits(maml, support_x, support_y, query_x), query_y))
            rows.append(torch.stack(accs, 1).cpu())
    return pd.DataFrame(torch.cat(rows).numpy(), columns=list(FREEZING_COLUMNS))


def paired_summary(per_task: pd.DataFrame, reference: str = FREEZING_COLUMNS[0]) -> pd.DataFrame:
    """Mean and 95% CI of each column, and of each column's per-task difference from ``reference`` (paired).

    The differences are :func:`evaluation.evaluate.paired_difference`, the helper behind every paired sentence of
    :mod:`report.narrative`: narrower than the two accuracies' CIs when tasks vary in difficulty. An interval
    that contains 0 means not distinguishable.

    Args:
        per_task: one row per task, one column per variant (e.g. :func:`freezing_accuracies`).
        reference: the column the differences are taken from.

    Returns:
        One row per column: ``accuracy``, ``ci``, ``diff_vs_<reference>``, ``diff_ci``, ``distinguishable``.
    """
    if reference not in per_task:
        raise ValueError(f"reference {reference!r} is not a column of {list(per_task.columns)}.")
    rows = {}
    for column in per_task:
        mean, ci = confidence_interval(per_task[column].to_numpy(dtype=float, copy=True))
        diff, diff_ci = paired_difference(per_task[column].to_numpy(dtype=float),
                                          per_task[reference].to_numpy(dtype=float))
        rows[column] = {"accuracy": mean, "ci": ci, f"diff_vs_{reference}": diff, "diff_ci": diff_ci,
                        "distinguishable": column != reference and abs(diff) > diff_ci}
    return pd.DataFrame.from_dict(rows, orient="index")


def default_cka_layers(maml: MAML) -> list[str]:
    """The body's children that hold parameters (conv4: ``body.block1`` ... ``body.block4``), then ``head``."""
    children = maml.body.named_children()
    return [*(f"body.{name}" for name, child in children if any(True for _ in child.parameters())), "head"]


def _activations(model: nn.Module, params: dict[str, Tensor], x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """Outputs ``(n, -1)`` of the named modules of ``model`` run with ``params`` on one set ``x (n, C, H, W)``."""
    modules, outputs = dict(model.named_modules()), {}
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"Unknown layers {missing}; choose among the model's modules, e.g. {list(modules)[1:8]}.")
    hooks = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
             for name in layers]
    try:
        functional_call(model, params, (x,))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: outputs[name].flatten(1) for name in layers}


def layer_cka(
    maml: MAML, pool: TaskPool, steps: int | None = None, *, layers: Sequence[str] | None = None,
    inputs: str = "query", batch_size: int = 32, device: Any = "cpu", progress: bool = True,
) -> pd.DataFrame:
    """Per layer, mean linear CKA between its output before and after MAML's inner loop, over the tasks of ``pool``.

    For each task the inner loop adapts all parameters on the support set (:meth:`MAML.adapt`); the meta-learnt
    and the adapted network then process the same images, and :func:`linear_cka` compares each layer's outputs.

    Args:
        maml: a trained MAML learner.
        pool: test tasks.
        steps: inner steps (defaults to ``maml.inner_steps``).
        layers: names of modules of ``maml.model`` (default :func:`default_cka_layers`).
        inputs: ``"query"`` (the task's query images) or ``"support+query"`` (both, one set).
        batch_size: tasks adapted at once.
        device: where the tasks are sent.
        progress: show a progress bar.

    Returns:
        One row per layer, in order: ``cka`` (mean over tasks), ``ci`` (95% half-width), ``tasks``.
    """
    _check_maml(maml)
    if inputs not in ("query", "support+query"):
        raise ValueError(f"inputs must be 'query' or 'support+query', got {inputs!r}.")
    layers = list(layers or default_cka_layers(maml))
    before = dict(maml.model.named_parameters())
    values: dict[str, list[float]] = {name: [] for name in layers}
    with torch.no_grad():
        for start in tqdm(range(0, len(pool), batch_size), desc="CKA", unit="batch", disable=not progress,
                          leave=False):
            support_x, support_y, query_x, _ = pool.batch(slice(start, start + batch_size), device)
            fast = maml.adapt(support_x, support_y, steps)
            images = query_x if inputs == "query" else torch.cat([support_x, query_x], 1)
            with body_mode(maml.body, maml.eval_bn, False, dropout=False):
                for i, x in enumerate(images):
                    old = _activations(maml.model, before, x, layers)
                    new = _activations(maml.model, {k: v[i] for k, v in fast.items()}, x, layers)
                    for name in layers:
                        values[name].append(linear_cka(old[name], new[name]).item())
    rows = [(name, *confidence_interval(values[name]), len(values[name])) for name in layers]
    return pd.DataFrame(rows, columns=["layer", "cka", "ci", "tasks"]).set_index("layer")
