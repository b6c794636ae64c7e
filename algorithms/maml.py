"""MAML (Finn, Abbeel & Levine, ICML 2017), beside ANIL (Raghu et al., ICLR 2020, arXiv:1909.09157).

MAML adapts *every* parameter, body and head, in the inner loop, so the body must be re-run on the support set at
every inner step and, in second order, differentiated through all of them. ANIL's claim is that adapting the head
alone is nearly as accurate and much cheaper; this class keeps ANIL's contract (:class:`algorithms.learner.Learner`:
``adapt``, ``predict``, ``features``, ``meta_train_step``, with ``adapts = "all"`` and no head-only fast path) and
its ``meta_loss``, so the notebook and ``benchmarks/`` can measure that claim on the same tasks. Two layouts compute
the same numbers:

* ``"loop"``: one task at a time with :func:`torch.func.functional_call` and :func:`torch.autograd.grad`, as
  MAML is usually written. It is the reference the tests compare against.
* ``"vmap"``: all tasks of a meta-batch at once, :func:`torch.func.grad` of the support loss under
  :func:`torch.func.vmap` over tasks; each task's adapted weights become a batch dimension, so a convolution with
  per-task weights is one grouped kernel. On a GPU this removes the per-task Python loop and most kernel launches.

``"auto"`` resolves per device from measurements (:func:`resolve_maml_layout`).

The outer loop is ANIL's (:class:`algorithms.learner.OuterLoop`), so the two methods get the same engineering:
:meth:`MAML.meta_train_step` returns device tensors and checks a meta-batch's labels once per signature on an
accelerator (no host synchronisation per step), and on CUDA ``cuda_graph="auto"`` captures the whole step (inner
loop, backward, capturable Adam) in one CUDA graph and replays it, with an eager fallback and a notice.

BatchNorm policy, and how it relates to the reference code:

* **What matches the MAML reference code** (Finn's TensorFlow ``maml``, ``utils.normalize`` with
  ``tf.contrib.layers.batch_norm``): BatchNorm always normalises with the *current batch's* statistics, in
  training and at test time, and each forward sees one set, so every support set and every query set is normalised
  with its own statistics (transductive: a query image's features depend on the other query images of its task).
  Here too (``eval_bn="batch"``, the default); tasks never share statistics in either layout.
* **What does not match.** The reference's ``batch_norm`` is called with its defaults, ``scale=False``: there is no
  learnt scale γ, only an offset β, and that offset is a TensorFlow variable *outside* the ``weights`` dict that the
  inner loop updates, so the reference adapts no BatchNorm parameter in the inner loop (β is learnt by the outer
  loop only). Here every BatchNorm layer has both γ and β (PyTorch's ``affine=True``) and the inner loop adapts
  them with all the other parameters, as MAML's definition ("all parameters") reads. The reference keeps no running
  statistics that are ever used; here they are tracked during meta-training (``eval_bn="running"`` can use them).
  In ``"loop"`` they are updated sequentially, task after task; in ``"vmap"`` each task updates its own copy,
  inner steps then query forward in order, and the copies are averaged
  (:func:`algorithms.features.per_set_buffers`, as ANIL's vmapped features do). Outputs and gradients do not
  depend on them.
* Inside ``vmap`` BatchNorm is computed by :func:`algorithms.features.grouped_batch_norm` with one group per task,
  written with plain differentiable operations: in torch 2.x the batching rule of the native BatchNorm kernel gives
  second-order gradients that are off by about 1e-3 (relative) under ``vmap`` of ``grad``, while the same network
  without BatchNorm, or outside ``vmap``, is exact. ``tests/test_maml.py`` holds both layouts to 1e-6 in float64.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from algorithms.cuda_graph import GraphMode
from algorithms.features import (
    BNMode,
    body_mode,
    grouped_statistics,
    merge_set_buffers,
    per_set_buffers,
    set_features,
)
from algorithms.learner import Adapts, OuterLoop, check_lr

Params = dict[str, Tensor]
MAMLLayout = Literal["auto", "loop", "vmap"]
MAML_LAYOUTS: tuple[str, ...] = get_args(MAMLLayout)
HEAD_PREFIX = "head."  # parameter names of the head in ``MAML.model``; the body's start with "body."


def resolve_maml_layout(layout: MAMLLayout, device: torch.device) -> Literal["loop", "vmap"]:
    """Pick MAML's layout for a device (both give the same losses and gradients; only speed differs).

    ``"auto"``: ``"vmap"`` on CUDA, where batching the tasks removes per-task kernel launches: on an NVIDIA H200
    (conv4, 5-way 1-shot 5-query, meta-batch 16, 5 inner steps) it took 66 / 130 ms per step (first / second
    order) at 28×28 against 289 / 784 ms for the loop, and 92 / 272 ms against 294 / 775 ms at 105×105
    (``benchmarks/measured/gpu_h200_maml_layouts.csv``). ``"loop"`` on a CPU: at 28×28 on a shared 2-core CPU
    the vmapped form was slower in both orders (best of 3: 5.7 s against 3.3 s first order, 10.3 s against 9.7 s
    second order; ``python -m benchmarks.maml_layouts``), because there a grouped convolution over per-task
    weights costs more than 16 small ones. So ``"auto"`` is never slower than the loop on either device.
    """
    if layout not in MAML_LAYOUTS:
        raise ValueError(f"layout must be one of {MAML_LAYOUTS}, got {layout!r}.")
    if layout != "auto":
        return layout
    return "vmap" if device.type == "cuda" else "loop"


class MAML(OuterLoop):
    """MAML meta-learner over a ``(body, head)`` pair; all parameters are adapted per task.

    Args:
        body: feature extractor, ``(n, C, H, W)`` -> ``(n, features)``.
        head: ``nn.Linear(features, n_way)``.
        inner_lr: inner SGD step size.
        outer_lr: Adam learning rate.
        inner_steps: inner steps per task.
        first_order: detach the inner gradients (FOMAML).
        eval_bn: BatchNorm policy at evaluation, ``"batch"`` or ``"running"``.
        layout: ``"loop"`` (per task), ``"vmap"`` (batched over tasks) or ``"auto"`` (:func:`resolve_maml_layout`).
        cuda_graph: as :class:`algorithms.anil.ANIL`'s: ``"auto"`` captures :meth:`meta_train_step` (inner loop,
            backward and Adam) in a CUDA graph on CUDA and replays it, so that ANIL and MAML get the same
            engineering; eager elsewhere, and eager with a notice if capture fails.
    """

    adapts: Adapts = "all"
    GRAPH_SETTINGS = ("inner_lr", "inner_steps", "first_order", "layout")

    def __init__(
        self,
        body: nn.Module,
        head: nn.Linear,
        inner_lr: float = 0.01,
        outer_lr: float = 0.001,
        inner_steps: int = 5,
        first_order: bool = True,
        eval_bn: BNMode = "batch",
        layout: MAMLLayout = "auto",
        cuda_graph: GraphMode = "auto",
    ) -> None:
        if not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an integer >= 0, got {inner_steps!r}.")
        self.body, self.head = body, head
        self.model = nn.Sequential(OrderedDict(body=body, head=head))
        self.inner_lr, self.outer_lr = check_lr("inner_lr", inner_lr), check_lr("outer_lr", outer_lr)
        self.inner_steps, self.first_order, self.eval_bn = inner_steps, first_order, eval_bn
        self.device = head.weight.device
        self.layout = resolve_maml_layout(layout, self.device)
        self._setup_outer_loop(list(self.model.parameters()), cuda_graph, "MAML meta-train step")

    def _sgd(self, params: Params, grads: Params) -> Params:
        """One inner SGD step on the parameters named in ``grads``; the others are kept."""
        return {**params, **{name: params[name] - self.inner_lr * g for name, g in grads.items()}}

    def _adapt_task(self, x: Tensor, y: Tensor, steps: int, create_graph: bool, trainable: str = "") -> Params:
        """Loop layout: inner SGD for one task. ``x``: ``(n, C, H, W)``, ``y``: ``(n,)``.

        ``trainable``: only parameters whose names start with it are adapted (``""``: all; ``"head."``: the head).
        """
        params = dict(self.model.named_parameters())
        names = [name for name in params if name.startswith(trainable)]
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(self.model, params, (x,)), y)
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
            params = self._sgd(params, dict(zip(names, grads, strict=True)))
        return params

    def _adapt_vmapped(self, params: Params, buffers: Params, x: Tensor, y: Tensor, steps: int,
                       create_graph: bool, trainable: str = "") -> Params:
        """Vmap layout, the body of the vmapped function: inner SGD for one task (no task dimension here).

        ``buffers`` are this task's BatchNorm buffers; they are an explicit argument of the differentiated
        function because the forward updates them in place. Other arguments as in :meth:`_adapt_task`.
        """
        def support_loss(adapted: Params, fixed: Params, buffers: Params) -> Tensor:
            return F.cross_entropy(functional_call(self.model, ({**fixed, **adapted}, buffers), (x,)), y)

        for _ in range(steps):
            adapted = {name: p for name, p in params.items() if name.startswith(trainable)}
            fixed = {name: p for name, p in params.items() if name not in adapted}
            grads = grad(support_loss)(adapted, fixed, buffers)
            if not create_graph:
                grads = {name: g.detach() for name, g in grads.items()}
            params = self._sgd(params, grads)
        return params

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None, trainable: str = "") -> Params:
        """Adapted parameters of every task (evaluation BatchNorm policy; first order, no graph kept).

        Args:
            support_x: ``(tasks, n_way * k_shot, C, H, W)``.
            support_y: ``(tasks, n_way * k_shot)``.
            steps: inner steps, defaulting to ``inner_steps``.
            trainable: adapt only the parameters whose names start with this prefix: ``""`` all (MAML),
                ``"head."`` the head only (test-time freezing of the body, as in the ANIL paper).

        Returns:
            ``{name: (tasks, *shape)}`` for every parameter of :attr:`model`, adapted or not.
        """
        self._validate(support_x, support_y, support_x, support_y)
        steps = self.inner_steps if steps is None else steps
        with torch.enable_grad(), body_mode(self.body, self.eval_bn, False, dropout=False):
            if self.layout == "vmap":
                with grouped_statistics(self.body, 1):
                    adapted = vmap(
                        lambda b, x, y: self._adapt_vmapped(dict(self.model.named_parameters()), b, x, y, steps,
                                                            False, trainable),
                        in_dims=(0, 0, 0),
                    )(per_set_buffers(self.model, len(support_x)), support_x, support_y)
            else:
                per_task = [self._adapt_task(x, y, steps, False, trainable)
                            for x, y in zip(support_x, support_y, strict=True)]
                adapted = {name: torch.stack([p[name] for p in per_task]) for name in per_task[0]}
        return {name: p.detach() for name, p in adapted.items()}

    def predict(self, query_x: Tensor, fast: Params) -> Tensor:
        """Query logits ``(tasks, n_query, n_way)`` with each task's adapted parameters ``fast`` (:meth:`adapt`)."""
        with body_mode(self.body, self.eval_bn, False, dropout=False):
            if self.layout == "vmap":
                buffers = dict(self.model.named_buffers())
                with grouped_statistics(self.body, 1):
                    return vmap(lambda p, x: functional_call(self.model, (p, buffers), (x,)))(fast, query_x)
            return torch.stack(
                [functional_call(self.model, {k: v[i] for k, v in fast.items()}, (x,)) for i, x in enumerate(query_x)]
            )

    def head_path(self) -> None:
        """No fast path: MAML's inner loop changes the body too, so its features do not stay fixed."""
        return None

    def features(self, x: Tensor, training: bool) -> Tensor:
        """Body features per set with the meta-learnt (unadapted) body, as :meth:`algorithms.anil.ANIL.features`.

        Args:
            x: ``(tasks, n, C, H, W)``.
            training: training BatchNorm policy (batch statistics, running averages updated) or evaluation's.

        Returns:
            ``(tasks, n, features)``.
        """
        bn = "batch" if training else self.eval_bn
        return set_features(self.body, x, self.layout, bn, update_running_stats=training, dropout=False)

    def _loop_meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                        query_y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-task query losses ``(tasks,)`` and accuracies ``(tasks,)``, one task at a time."""
        losses, correct = [], []
        for sx, sy, qx, qy in zip(support_x, support_y, query_x, query_y, strict=True):
            params = self._adapt_task(sx, sy, self.inner_steps, create_graph=not self.first_order)
            logits = functional_call(self.model, params, (qx,))
            losses.append(F.cross_entropy(logits, qy))
            correct.append((logits.argmax(-1) == qy).float().mean())
        return torch.stack(losses), torch.stack(correct)

    def _vmap_meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                        query_y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-task query losses and accuracies, all tasks in one vmapped call; shapes as the loop's."""
        def task(params: Params, buffers: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            fast = self._adapt_vmapped(params, buffers, sx, sy, self.inner_steps, not self.first_order)
            logits = functional_call(self.model, (fast, buffers), (qx,))
            return F.cross_entropy(logits, qy), (logits.argmax(-1) == qy).float().mean()

        buffers = per_set_buffers(self.model, len(support_x))
        with grouped_statistics(self.body, 1):
            out = vmap(task, in_dims=(None, 0, 0, 0, 0, 0))(
                dict(self.model.named_parameters()), buffers, support_x, support_y, query_x, query_y
            )
        merge_set_buffers(self.model, buffers)
        return out

    def meta_loss(self, tasks: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Mean query loss over tasks after per-task adaptation of all parameters, and the query accuracy.

        Args:
            tasks: a ``TaskBatch`` or a 4-tuple ``(support_x, support_y, query_x, query_y)``.
        """
        support_x, support_y, query_x, query_y = tasks
        self._validate(support_x, support_y, query_x, query_y)
        with body_mode(self.body, "batch", update_running_stats=True, dropout=False):
            per_task = self._vmap_meta_loss if self.layout == "vmap" else self._loop_meta_loss
            losses, correct = per_task(support_x, support_y, query_x, query_y)
        return losses.mean(), correct.mean()

    def _step(self, *tasks: Tensor) -> Tensor:
        """The meta-train step itself, free of host synchronisation; ``(loss, acc)`` as one tensor ``(2,)``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, acc = self.meta_loss(tasks)
        loss.backward()
        self.optimizer.step()
        return torch.stack([loss.detach(), acc.detach()])
