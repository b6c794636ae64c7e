"""ANIL: Almost No Inner Loop, batched over the tasks of a meta-batch.

Reference: A. Raghu, M. Raghu, S. Bengio and O. Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding
the Effectiveness of MAML", ICLR 2020, arXiv:1909.09157. ANIL keeps MAML's outer loop (Finn et al., ICML 2017)
but adapts *only the linear head* in the inner loop; the body is shared by all tasks and learnt by the outer loop.

Semantics (tested against a plain per-task loop in ``tests/test_anil.py``):

* **Inner loop.** Only the head ``(W, b)`` is adapted: ``inner_steps`` SGD steps of size ``inner_lr`` on the
  mean support cross-entropy, each task starting from the shared initialisation. The body's features are computed
  **once per task and set**; the body is never re-run inside the inner loop. Because the head is linear, its
  gradient has a closed form, ``dL/dW = (softmax(z) - onehot(y))^T phi / n`` and ``dL/db = sum(softmax(z) -
  onehot(y)) / n``, so the inner loop is a few tiny batched matrix products for all tasks at once.
* **First and second order.** With ``first_order=False`` the inner gradients stay on the autograd graph (they are
  written with differentiable operations), so the meta-gradient flows through the inner loop into the head
  initialisation and, through the support features, into the body. With ``first_order=True`` the inner gradients
  are detached (FOMAML-style); the support features then receive no gradient, so their forward runs without one.
* **Meta loss.** The mean over tasks of the mean query cross-entropy of the adapted head; ``acc`` is the query
  accuracy after adaptation.
* **Freezing the body.** ``freeze_body=True`` gives every body weight except BatchNorm's ``requires_grad=False``;
  BatchNorm's affine parameters stay trainable and BatchNorm stays in batch-statistics mode; Dropout is off.
  Without trainable BatchNorm (``freeze_batchnorm=True``, an ablation) the outer loop cannot change the frozen
  body's features at all; only the head's initialisation is learnt.
* **BatchNorm.** Training normalises each task's support set and each query set with its own statistics, exactly
  as if every set were forwarded alone in train mode (as in the MAML and ANIL reference code); tasks never share
  statistics. Evaluation uses the same policy by default; ``eval_bn="running"`` uses running statistics instead.
  See :mod:`algorithms.features`.
* **No host synchronisation.** :meth:`ANIL.meta_train_step` (the outer step of
  :class:`algorithms.learner.OuterLoop`, which MAML shares; ANIL supplies ``_step``) returns its loss and accuracy
  as detached 0-d tensors on the learner's device and never reads a GPU value on the host: a meta-batch's shapes
  are validated every time, its labels only the first time a signature (shapes, dtypes, device) is seen on an
  accelerator (always on a CPU, where the check costs no synchronisation). The training loop reads the statistics
  in batches (:mod:`experiments.training`).
* **CUDA graphs.** With ``cuda_graph="auto"`` (the default) a learner on CUDA runs two eager steps, then captures
  the whole meta-train step (forward, backward, capturable Adam) in one CUDA graph and replays it for every
  meta-batch of the same shape (:mod:`algorithms.cuda_graph`); it falls back to eager steps with a one-line
  notice when capture fails. Graphs are never used on a CPU or MPS. Replayed and eager steps agree to float32
  rounding (capturable Adam computes its bias correction on the GPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from algorithms.cuda_graph import GraphMode
from algorithms.features import BNMode, Layout, resolve_layout, set_features
from algorithms.learner import Adapts, HeadParams, HeadPath, OuterLoop, check_lr
from utils.networks import freeze_body as freeze_body_weights

LARGE_IMAGE = 64  # image side from which a CPU meta-batch is back-propagated one task at a time


def head_logits(features: Tensor, head: HeadParams) -> Tensor:
    """Batched linear head: ``(tasks, n, features)`` -> logits ``(tasks, n, n_way)``."""
    return torch.baddbmm(head.bias.unsqueeze(1), features, head.weight.transpose(1, 2))


def head_gradient(features: Tensor, labels: Tensor, head: HeadParams) -> HeadParams:
    """Closed-form gradient of each task's mean cross-entropy with respect to its own head.

    Written with differentiable operations, so autograd can differentiate through it (second order).

    Args:
        features: ``(tasks, n, features)``.
        labels: ``(tasks, n)`` in ``[0, n_way)``.
        head: current per-task head.
    """
    logits = head_logits(features, head)
    residual = (logits.softmax(-1) - F.one_hot(labels, logits.shape[-1]).to(logits.dtype)) / labels.shape[1]
    return HeadParams(residual.transpose(1, 2) @ features, residual.sum(1))


def inner_loop(
    features: Tensor, labels: Tensor, init: HeadParams, steps: int, lr: float, first_order: bool
) -> HeadParams:
    """``steps`` SGD steps on the support loss of every task at once, from the shared head ``init``.

    Args:
        features: support features ``(tasks, n_way * k_shot, features)``.
        labels: support labels ``(tasks, n_way * k_shot)``.
        init: head initialisation, broadcast to ``(tasks, ...)``.
        steps: number of inner steps (0 returns the initialisation).
        lr: inner learning rate.
        first_order: detach the inner gradients (no second-order terms).
    """
    tasks = features.shape[0]
    fast = HeadParams(init.weight.expand(tasks, -1, -1), init.bias.expand(tasks, -1))
    for _ in range(steps):
        grad = head_gradient(features, labels, fast)
        if first_order:
            grad = HeadParams(grad.weight.detach(), grad.bias.detach())
        fast = HeadParams(fast.weight - lr * grad.weight, fast.bias - lr * grad.bias)
    return fast


class ANIL(OuterLoop):
    """ANIL meta-learner: body learnt by the outer loop, linear head adapted per task.

    Args:
        body: maps ``(n, C, H, W)`` images to ``(n, features)``.
        head: ``nn.Linear(features, n_way)``; its parameters are the shared head initialisation.
        inner_lr: inner-loop SGD step size.
        outer_lr: Adam learning rate of the outer loop.
        inner_steps: inner SGD steps (``0`` disables adaptation).
        freeze_body: train only BatchNorm affine parameters of the body (and the head).
        freeze_batchnorm: with ``freeze_body``, freeze the BatchNorm affine parameters too, so that only the
            head is trained (an ablation; BatchNorm still normalises each set with its own statistics).
        first_order: detach inner gradients.
        layout: feature layout, ``"auto"`` picks per device (:func:`algorithms.features.resolve_layout`).
        task_chunk: tasks per forward/backward in :meth:`meta_train_step` (gradients are accumulated over
            chunks, which changes nothing but memory and speed); ``None`` picks all tasks at once, except on a
            CPU with images of 64 px or more, where one task at a time keeps the working set in cache.
        eval_bn: BatchNorm policy at evaluation, ``"batch"`` (as in training) or ``"running"``.
        amp_dtype: run the body under :func:`torch.autocast` with this dtype (e.g. ``torch.bfloat16`` on a CPU
            with AMX); the features are cast back to float32, so the head and its inner loop stay float32.
        cuda_graph: ``"auto"`` captures :meth:`meta_train_step` in a CUDA graph on CUDA (eager elsewhere, and
            eager with a notice if capture fails); ``True`` requires it (``ValueError`` off CUDA,
            :class:`algorithms.cuda_graph.GraphCaptureError` when capture fails); ``False`` never captures.
        channels_last: keep the body and the images in ``channels_last`` with the ``"vmap"`` and ``"grouped"``
            layouts (``"loop"`` on a CPU always uses it). Off: on an H200 (S2, 105×105, CUDA graph) it took the
            grouped step from 29.5 to 28.8 ms, 2%, within the run-to-run spread
            (``benchmarks/measured/gpu_h200_levers_105.csv``).
        compile_body: run the ``"grouped"`` body forward through :func:`torch.compile` (other layouts ignore it).
            Off: it has never been timed on a GPU (``benchmarks/gpu_run.sh`` times it last), and on a CPU, whose
            layout is not ``"grouped"`` anyway, its first step took 45 s to compile for the same losses
            (``benchmarks/README.md``).
        fused_bn: with the ``"grouped"`` layout, normalise each set through
            :class:`algorithms.features.GroupedNorm`, whose written-out backward makes fewer passes over the
            activations than autograd's (same numbers). On by default wherever the grouped layout runs: on a CPU it
            cut the grouped S2 step by 19% and its memory by 27%
            (``benchmarks/measured/cpu_2core_epyc_groupednorm_105.csv``). ``False`` is the autograd reference
            that the tests compare against and ``benchmarks/`` times (lever ``autograd_bn``). A compiled body
            uses the autograd formula, which the compiler fuses itself. Which layout ``"auto"`` picks, and why
            never ``"grouped"`` yet, is :func:`algorithms.features.resolve_layout`'s docstring.
    """

    adapts: Adapts = "head"
    GRAPH_SETTINGS = ("inner_lr", "inner_steps", "first_order", "layout", "task_chunk", "amp_dtype", "freeze_body")

    def __init__(
        self,
        body: nn.Module,
        head: nn.Linear,
        inner_lr: float = 0.01,
        outer_lr: float = 0.001,
        inner_steps: int = 5,
        freeze_body: bool = False,
        first_order: bool = True,
        layout: Layout = "auto",
        task_chunk: int | None = None,
        eval_bn: BNMode = "batch",
        amp_dtype: torch.dtype | None = None,
        cuda_graph: GraphMode = "auto",
        channels_last: bool = False,
        compile_body: bool = False,
        freeze_batchnorm: bool = False,
        fused_bn: bool = True,
    ) -> None:
        if not isinstance(head, nn.Linear):
            raise ValueError(f"head must be an nn.Linear, got {type(head).__name__}.")
        if freeze_batchnorm and not freeze_body:
            raise ValueError("freeze_batchnorm=True needs freeze_body=True (it freezes the whole body).")
        if not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an integer >= 0, got {inner_steps!r}.")
        self.body, self.head = body, head
        self.inner_lr, self.outer_lr = check_lr("inner_lr", inner_lr), check_lr("outer_lr", outer_lr)
        self.inner_steps, self.first_order, self.freeze_body = inner_steps, first_order, freeze_body
        self.eval_bn, self.amp_dtype, self.freeze_batchnorm = eval_bn, amp_dtype, freeze_batchnorm
        if freeze_body:
            freeze_body_weights(body, train_batchnorm=not freeze_batchnorm)
        self.device = head.weight.device
        # Resolved on the first meta-batch, once the image size is known.
        resolve_layout(layout, self.device)  # validates the name now
        self._layout_request, self.layout, self.task_chunk, self._resolved = layout, layout, task_chunk, False
        if task_chunk is not None and (not isinstance(task_chunk, int) or task_chunk < 1):
            raise ValueError(f"task_chunk must be a positive integer or None, got {task_chunk!r}.")
        self.channels_last, self.compile_body, self.fused_bn = bool(channels_last), bool(compile_body), bool(fused_bn)
        self._compiled: nn.Module | None = None
        self._setup_outer_loop(self.trainable_parameters(), cuda_graph, "ANIL meta-train step")

    def _begin_step(self, tasks: tuple[Tensor, ...]) -> None:
        """Fix the layout and task chunk for the meta-batch's image size before a step (a graph's key holds them)."""
        self._resolve_layout(tasks[0].shape[-1])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the outer loop updates (frozen body weights excluded)."""
        return [p for p in (*self.body.parameters(), *self.head.parameters()) if p.requires_grad]

    def _resolve_layout(self, image_size: int) -> None:
        """Fix the layout and task chunk for this device and image size, once (see ``resolve_layout``)."""
        if self._resolved:
            return
        self.layout = resolve_layout(self._layout_request, self.device, self.body, image_size)
        if (self.layout == "loop" and self.device.type == "cpu") or (self.channels_last and self.layout != "loop"):
            self.body.to(memory_format=torch.channels_last)
        if self.compile_body and self.layout == "grouped":
            self._compiled = torch.compile(self.body, dynamic=False)
        if self.task_chunk is None:
            self.task_chunk = 1 if self.device.type == "cpu" and image_size >= LARGE_IMAGE else 1_000_000
        self._resolved = True

    def features(self, x: Tensor, training: bool) -> Tensor:
        """Body features per set, ``(tasks, n, C, H, W)`` -> ``(tasks, n, features)``."""
        self._resolve_layout(x.shape[-1])
        bn = "batch" if training else self.eval_bn
        dropout = training and not self.freeze_body
        if self.channels_last and self.layout != "loop":
            x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, x.shape[:2])
        # Autocast's cache of cast weights would outlive a graph replay's inputs (PyTorch: disable it when graphing).
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None,
                            cache_enabled=self._graph is None):
            feats = set_features(self.body, x, self.layout, bn, update_running_stats=training, dropout=dropout,
                                 forward=self._compiled, fused_bn=self.fused_bn and self._compiled is None)
        feats = feats.to(self.head.weight.dtype)
        if feats.shape[-1] != self.head.in_features:
            raise ValueError(
                f"The body produced {feats.shape[-1]} features for images of shape {tuple(x.shape[-3:])}, "
                f"but the head expects {self.head.in_features}. Build the network for this image size."
            )
        return feats

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> HeadParams:
        """Inner loop only, for all tasks at once; evaluation-mode BatchNorm policy.

        Args:
            support_x: ``(tasks, n_way * k_shot, C, H, W)``.
            support_y: ``(tasks, n_way * k_shot)``.
            steps: inner steps, defaulting to ``inner_steps`` (0 gives the unadapted head).

        Returns:
            Adapted head, ``weight (tasks, n_way, features)`` and ``bias (tasks, n_way)``.
        """
        self._validate(support_x, support_y, support_x, support_y)
        steps = self.inner_steps if steps is None else steps
        return self.adapt_head(self.features(support_x, False), support_y, self.initial_head(), steps)

    def predict(self, query_x: Tensor, fast: HeadParams) -> Tensor:
        """Query logits ``(tasks, n_query, n_way)`` of the adapted heads ``fast``."""
        return head_logits(self.features(query_x, False), fast)

    def head_path(self) -> HeadPath:
        """ANIL itself: its inner loop adapts only the linear head, on features the body computes once per set."""
        return self

    def initial_head(self) -> HeadParams:
        """The shared head initialisation as a batch of one: ``weight (1, n_way, features)``, ``bias (1, n_way)``."""
        return HeadParams(self.head.weight.unsqueeze(0), self.head.bias.unsqueeze(0))

    def adapt_head(self, features: Tensor, labels: Tensor, head: HeadParams, steps: int) -> HeadParams:
        """``steps`` more evaluation inner steps (first order, ``inner_lr``) from ``head`` on support features.

        Args:
            features: support features ``(tasks, n_way * k_shot, features)`` (:meth:`features`).
            labels: support labels ``(tasks, n_way * k_shot)``.
            head: where to start, e.g. :meth:`initial_head` or the head after fewer steps.
            steps: further inner steps.
        """
        return inner_loop(features, labels, head, steps, self.inner_lr, first_order=True)

    head_logits = staticmethod(head_logits)  # the fast path's logits: the module's batched linear head

    def meta_loss(self, tasks: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Differentiable mean query loss over tasks after adaptation, and the query accuracy; no step.

        Args:
            tasks: a ``TaskBatch`` or a 4-tuple ``(support_x, support_y, query_x, query_y)``.
        """
        support_x, support_y, query_x, query_y = tasks
        self._validate(support_x, support_y, query_x, query_y)
        # First order: the support features only enter through detached gradients, so build no graph for them.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.first_order):
            support = self.features(support_x, training=True)
        init = HeadParams(self.head.weight, self.head.bias)
        fast = inner_loop(support, support_y, init, self.inner_steps, self.inner_lr, self.first_order)
        logits = head_logits(self.features(query_x, training=True), fast)
        loss = F.cross_entropy(logits.flatten(0, 1), query_y.flatten())
        return loss, (logits.argmax(-1) == query_y).float().mean()

    def _step(self, *tasks: Tensor) -> Tensor:
        """The meta-train step itself, free of host synchronisation; returns ``(loss, acc)`` as one tensor ``(2,)``.

        The meta-loss is a mean over independent tasks, so it is evaluated and back-propagated ``task_chunk``
        tasks at a time with gradients accumulated: the same gradient, a smaller working set. Over several chunks
        the statistics are accumulated in float64 (float32 on MPS, which has no float64), as Python floats were.
        """
        self.optimizer.zero_grad(set_to_none=True)
        num_tasks = len(tasks[0])
        chunks = range(0, num_tasks, self.task_chunk)
        total = None
        for start in chunks:
            chunk = [t[start : start + self.task_chunk] for t in tasks]
            loss, acc = self.meta_loss(chunk)
            (loss * (len(chunk[0]) / num_tasks)).backward()
            stats = torch.stack([loss.detach(), acc.detach()])
            if len(chunks) > 1:
                dtype = torch.float32 if stats.device.type == "mps" else torch.float64
                stats = stats.to(dtype) * len(chunk[0])
                total = stats if total is None else total + stats
        self.optimizer.step()
        return stats if total is None else total / num_tasks
