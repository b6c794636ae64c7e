"""The learner contract, and the outer loop that ANIL and MAML share.

Reference: A. Raghu, M. Raghu, S. Bengio and O. Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding
the Effectiveness of MAML", ICLR 2020, arXiv:1909.09157. ANIL keeps MAML's outer loop (Finn et al., ICML 2017) and
changes only what the inner loop adapts: the head alone (ANIL), every layer (MAML) or nothing (NIL). Code that
evaluates, trains or shows a learner therefore needs to know three things of it, and this module states them:

* :class:`Learner`, a :class:`typing.Protocol`: ``adapt`` a learner to support sets, ``predict`` query logits with
  what ``adapt`` returned, take a ``meta_train_step``, its ``inner_lr`` and ``inner_steps``, and what generic code
  would otherwise ask with ``isinstance``: which parameters the inner loop adapts (:data:`Adapts`) and an optional
  fast path (:class:`HeadPath`) for a learner that adapts only a linear head on features computed once.
* :class:`TrainableLearner`: a :class:`Learner` with an outer optimizer, what the training loop and its
  checkpoints need besides.
* :class:`OuterLoop`, the one implementation of the outer step (checked meta-batch, Adam step, CUDA-graph replay)
  and of the outer learning rate's setter; a learner supplies its ``_step`` and the settings a captured step
  depends on (``GRAPH_SETTINGS``).

The meta-batch check (:func:`validate_tasks`) and the learning-rate check (:func:`check_lr`) live here too, so that
every learner, and every caller, uses the same ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from algorithms.cuda_graph import GraphedStep, GraphMode, make_capturable, resolve_graph_mode

Adapts = Literal["head", "all", "none"]  # what the inner loop adapts: the linear head, every layer, or nothing


class HeadParams(NamedTuple):
    """Per-task head parameters: ``weight (tasks, n_way, features)``, ``bias (tasks, n_way)``."""

    weight: Tensor
    bias: Tensor


class HeadPath(Protocol):
    """The fast path of a learner whose inner loop adapts only a linear head on features that stay fixed.

    For such a learner ``adapt(x, y, steps)`` equals ``adapt_head(features(x, False), y, initial_head(), steps)``
    and ``predict(q, fast)`` equals ``head_logits(features(q, False), fast)``, so generic code may run the body once
    per set and continue the inner loop from an earlier step count instead of adapting again from the start.
    """

    def features(self, x: Tensor, training: bool) -> Tensor:
        """Body features per set, ``(tasks, n, C, H, W)`` -> ``(tasks, n, features)``."""
        ...

    def initial_head(self) -> HeadParams:
        """The head every task starts from: ``weight (1, n_way, features)``, ``bias (1, n_way)``."""
        ...

    def adapt_head(self, features: Tensor, labels: Tensor, head: HeadParams, steps: int) -> HeadParams:
        """``steps`` more inner steps from ``head`` on support ``features (tasks, n, d)`` and ``labels (tasks, n)``."""
        ...

    def head_logits(self, features: Tensor, head: HeadParams) -> Tensor:
        """Logits ``(tasks, n, n_way)`` of features ``(tasks, n, features)`` under the per-task heads ``head``."""
        ...


class Learner(Protocol):
    """What evaluation, the figures and the playground may rely on: ANIL, MAML and NIL all provide it.

    Attributes:
        body: maps ``(n, C, H, W)`` images to ``(n, features)``.
        head: ``nn.Linear(features, n_way)``, the head's initialisation (its ``out_features`` is the tasks' n_way).
        inner_lr: inner-loop SGD step size (a learner that adapts nothing keeps the one it was trained with).
        inner_steps: inner steps that ``adapt`` takes by default (0 for a learner that adapts nothing).
        adapts: which parameters the inner loop adapts: ``"head"``, ``"all"`` or ``"none"``.
    """

    body: nn.Module
    head: nn.Linear
    inner_steps: int
    adapts: Adapts

    @property
    def inner_lr(self) -> float:
        """Inner-loop SGD step size."""
        ...

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Any:
        """What each task keeps after ``steps`` inner steps on ``support_x (tasks, n, C, H, W)``, ``support_y (tasks,
        n)``, in the evaluation BatchNorm policy; ``predict`` takes it."""
        ...

    def predict(self, query_x: Tensor, fast: Any) -> Tensor:
        """Query logits ``(tasks, n_query, n_way)`` of ``query_x (tasks, n_query, C, H, W)`` from ``adapt``'s result."""
        ...

    def features(self, x: Tensor, training: bool) -> Tensor:
        """Features of the meta-learnt (unadapted) body per set, ``(tasks, n, C, H, W)`` -> ``(tasks, n, features)``."""
        ...

    def head_path(self) -> HeadPath | None:
        """The fast path when the inner loop adapts only a linear head on fixed features, else ``None``."""
        ...

    def meta_train_step(self, tasks: Sequence[Tensor]) -> dict[str, Tensor]:
        """One outer step on ``(support_x, support_y, query_x, query_y)``: ``{"loss", "acc"}``, 0-d tensors."""
        ...


class TrainableLearner(Learner, Protocol):
    """A :class:`Learner` that owns its outer optimizer: what the training loop and its checkpoints need.

    Attributes:
        outer_lr: the base Adam learning rate (a schedule multiplies it).
        optimizer: the outer optimizer, whose state a checkpoint saves.
    """

    outer_lr: float
    optimizer: torch.optim.Optimizer

    def set_outer_lr(self, value: float) -> None:
        """Set the outer learning rate for the next steps."""
        ...


def check_lr(name: str, value: float) -> float:
    """``value`` as a float when it is a positive finite number; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return float(value)


class OuterLoop:
    """The outer loop's machinery shared by :class:`algorithms.anil.ANIL` and :class:`algorithms.maml.MAML`.

    Adam over the trainable parameters, checked meta-batches, and on CUDA a :class:`GraphedStep` that captures the
    learner's ``_step(*tasks) -> (loss, acc)`` (see :mod:`algorithms.cuda_graph`). A subclass sets ``body``,
    ``head``, ``device`` and ``outer_lr``, defines ``_step`` and ``GRAPH_SETTINGS``, and calls
    :meth:`_setup_outer_loop` in its ``__init__``.
    """

    GRAPH_SETTINGS: ClassVar[tuple[str, ...]] = ()  # attributes a captured step depends on besides input shapes
    body: nn.Module
    head: nn.Linear
    device: torch.device
    outer_lr: float

    def _setup_outer_loop(self, params: list[nn.Parameter], cuda_graph: GraphMode, name: str) -> None:
        """Create the Adam optimizer, capturable with a GPU learning rate when the step is graphed."""
        self._validated: set[tuple] = set()  # meta-batch signatures whose labels were checked
        self._graph: GraphedStep | None = None
        if resolve_graph_mode(cuda_graph, self.device):
            # A graph reads the learning rate from GPU memory, so the schedule updates this tensor in place.
            self._lr = torch.tensor(self.outer_lr, dtype=torch.float32, device=self.device)
            self.optimizer = torch.optim.Adam(params, lr=self._lr, capturable=True)
            self._graph = GraphedStep(self._step, self._graph_state, self._prepare_graph,
                                      strict=cuda_graph is True, name=name)
        else:
            self.optimizer = torch.optim.Adam(params, lr=self.outer_lr)

    def _step(self, *tasks: Tensor) -> Tensor:
        """The meta-train step, free of host synchronisation: ``(loss, acc)`` as one tensor ``(2,)``."""
        raise NotImplementedError(f"{type(self).__name__} must define _step.")

    def _begin_step(self, tasks: tuple[Tensor, ...]) -> None:
        """Called first by :meth:`meta_train_step`: fix what depends on the meta-batch's shapes (nothing here)."""

    def meta_train_step(self, tasks: Sequence[Tensor]) -> dict[str, Tensor]:
        """One outer step: zero_grad, meta-loss, backward, Adam step; replayed from a CUDA graph when captured.

        Args:
            tasks: a ``TaskBatch`` or a 4-tuple ``(support_x, support_y, query_x, query_y)``.

        Returns:
            ``{"loss", "acc"}``, detached 0-d tensors on the learner's device; reading them (``float(...)``)
            synchronises a GPU, so the training loop reads them in batches.
        """
        tasks = tuple(tasks)
        self._begin_step(tasks)
        self._validate(*tasks)
        if self._graph is None:
            stats = self._step(*tasks)
        else:
            settings = tuple(getattr(self, name) for name in self.GRAPH_SETTINGS)
            stats = self._graph(tasks, (tuple((t.shape, t.dtype, t.device) for t in tasks), settings))
        return {"loss": stats[0], "acc": stats[1]}

    @property
    def graph_captured(self) -> bool:
        """Whether :meth:`meta_train_step` currently replays a CUDA graph."""
        return self._graph is not None and self._graph.captured

    def set_outer_lr(self, value: float) -> None:
        """Set the Adam learning rate for the next steps (the training loop's schedule calls this every step).

        With a CUDA graph the rate is a GPU tensor written in place, so a captured step sees the new value.
        """
        if self._graph is not None and self.optimizer.param_groups[0]["lr"] is not self._lr:
            self._prepare_graph()  # e.g. after optimizer.load_state_dict brought back a float rate
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value

    def _prepare_graph(self) -> None:
        make_capturable(self.optimizer, self._lr)

    def _graph_state(self) -> list[Tensor]:
        """Every tensor a captured step reads or updates in place (their addresses must not change)."""
        tensors = [*self.body.parameters(), *self.head.parameters(), *self.body.buffers()]
        for group in self.optimizer.param_groups:
            tensors += [group["lr"]] if isinstance(group["lr"], Tensor) else []
            for param in group["params"]:
                tensors += [v for v in self.optimizer.state.get(param, {}).values() if isinstance(v, Tensor)]
        return tensors

    def _validate(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> None:
        """:func:`validate_tasks`, once per signature off the CPU (its label checks synchronise a GPU)."""
        tasks = (support_x, support_y, query_x, query_y)
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in tasks)
        if key in self._validated and support_y.device.type != "cpu":
            return
        validate_tasks(*tasks, self.head.out_features, self.body)
        self._validated.add(key)


def _first_conv_channels(body: nn.Module) -> int | None:
    conv = next((m for m in body.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def validate_tasks(
    support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, n_way: int, body: nn.Module
) -> None:
    """Check a meta-batch before any compute; raise ``ValueError`` naming what is wrong.

    Expects ``support_x (tasks, n_way * k_shot, C, H, W)``, ``support_y (tasks, n_way * k_shot)`` and the same
    for the query set, with labels in ``[0, n_way)`` and ``C`` matching the body's first convolution.
    """
    channels = _first_conv_channels(body)
    for name, x, y in (("support", support_x, support_y), ("query", query_x, query_y)):
        if x.dim() != 5 or (channels is not None and x.shape[2] != channels):
            raise ValueError(
                f"{name}_x must have shape (tasks, n_images, {channels or 'C'}, H, W), got {tuple(x.shape)}."
            )
        if y.shape != x.shape[:2]:
            raise ValueError(f"{name}_y must have shape {tuple(x.shape[:2])}, got {tuple(y.shape)}.")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_way):
            raise ValueError(
                f"{name}_y has labels in [{int(y.min())}, {int(y.max())}], outside [0, {n_way}): the head has "
                f"{n_way} outputs. Build the head with num_classes equal to the tasks' n_way."
            )
    tasks_n_way = int(support_y.max()) + 1 if support_y.numel() else n_way
    if tasks_n_way != n_way:
        raise ValueError(
            f"The head has {n_way} outputs but the tasks are {tasks_n_way}-way. "
            "Build the head with num_classes equal to the tasks' n_way."
        )
