"""The meta-training loop shared by every scenario: ANIL and MAML on a fixed pool of Omniglot tasks.

ANIL (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, arXiv:1909.09157) and MAML are trained alike: each outer iteration takes a
meta-batch from a fixed pool of training tasks (the seed: 2,000 tasks in meta-batches of 16) and calls
``meta_train_step``. The pool is visited in epochs; every epoch is a fresh permutation drawn from the caller's
``torch.Generator``, and a final partial meta-batch is skipped so that every step sees ``meta_batch_size``
tasks.

Reproducibility: the generator is the only source of randomness, so on a CPU the same seed and configuration
give an identical loss history. On CUDA, cuDNN's default kernels are non-deterministic (two uninterrupted
20-step runs on an H200 differed by up to 0.02 in a weight); with ``torch.use_deterministic_algorithms(True)``
and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` runs, and resumed runs, were bit-identical there too. A checkpoint
stores the generator state, the current epoch's permutation and the position in it
(:mod:`experiments.checkpoint`), so an interrupted and resumed run ends bit-identical to an uninterrupted one.

Stopping: ``KeyboardInterrupt`` (the notebook's stop button, or raised by ``callback``) ends training cleanly:
the history so far is kept, a final checkpoint is written when a path was given, and the result has
``interrupted=True``. An interrupt that lands inside the optimizer's own update (microseconds per step) can
leave that step half-applied; the checkpoint then still describes the previous iteration's task order and
history.

Host synchronisation: a learner's ``meta_train_step`` may return its ``loss`` and ``acc`` as device tensors
(ANIL does) or as floats (any learner). Tensors are kept on the device and read together, with one
synchronisation, every ``READ_EVERY`` iterations (when the progress bar refreshes), before a validation, a
checkpoint or a callback needs them, and at the end; the recorded history is the same as reading them at every
step. On a GPU the host thus queues the next meta-batches while the device computes.

A non-finite loss raises :class:`NonFiniteLossError` (a ``FloatingPointError``) naming the scenario, the
iteration and the likely cause; no checkpoint is written after it, so the last good one stays intact. It is
detected when the statistics are read, so up to ``READ_EVERY - 1`` further steps may already have run on the
ruined parameters; the history ends before the non-finite iteration, which the message names.

Cost: ``wall_time_s`` counts task materialisation and outer steps only (not validation or checkpoint writes);
peak memory and GPU utilisation are measured as described in :mod:`evaluation.resources`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from algorithms.learner import TrainableLearner
from evaluation.evaluate import evaluate
from evaluation.resources import ResourceMonitor, device_name
from experiments.checkpoint import checkpoint_metadata, read_checkpoint, restore_learner, save_checkpoint
from experiments.records import TrainResult
from utils.config import LR_SCHEDULES
from utils.io import ensure_writable_dir, error_path
from utils.tasks import TaskPool

SMOOTHING = 0.9  # EMA factor of the running loss and accuracy shown in the progress bar
READ_EVERY = 20  # iterations between reads of device-side statistics (each read synchronises a GPU once)
Callback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(FloatingPointError):
    """The meta-training loss became NaN or infinite (usually a learning rate that is too high)."""


class TaskOrder:
    """Endless stream of meta-batch indices: epochs over the pool, each a permutation from ``generator``.

    Args:
        num_tasks: size of the task pool.
        meta_batch_size: tasks per meta-batch; a final partial meta-batch of an epoch is skipped.
        generator: seeded CPU ``torch.Generator``.
    """

    def __init__(self, num_tasks: int, meta_batch_size: int, generator: torch.Generator) -> None:
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError(f"generator must be a seeded CPU torch.Generator, got {generator!r}.")
        self.num_tasks, self.meta_batch_size, self.generator = num_tasks, meta_batch_size, generator
        self.permutation: torch.Tensor | None = None
        self.position, self.epoch = 0, 0

    def next_indices(self) -> torch.Tensor:
        """Indices ``(meta_batch_size,)`` of the next meta-batch."""
        if self.permutation is None or self.position + self.meta_batch_size > self.num_tasks:
            self.permutation = torch.randperm(self.num_tasks, generator=self.generator)
            self.position, self.epoch = 0, self.epoch + 1
        indices = self.permutation[self.position : self.position + self.meta_batch_size]
        self.position += self.meta_batch_size
        return indices

    def state_dict(self) -> dict[str, Any]:
        """Everything that determines the following meta-batches."""
        return {
            "generator": self.generator.get_state(),
            "permutation": self.permutation,
            "position": self.position,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken."""
        self.generator.set_state(state["generator"])
        self.permutation, self.position, self.epoch = state["permutation"], state["position"], state["epoch"]


@dataclass
class _RunState:
    """The mutable part of a run that a checkpoint stores."""

    iteration: int = 0
    losses: list[float] = field(default_factory=list)
    accs: list[float] = field(default_factory=list)
    val_history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0


@dataclass(frozen=True)
class _Settings:
    """The fixed part of a run."""

    scenario: str
    iterations: int
    device: torch.device | str
    metadata: dict[str, Any]
    val_pool: TaskPool | None
    val_every: int
    checkpoint_path: Path | None
    checkpoint_every: int
    lr_schedule: str = "constant"


def outer_lr_factor(schedule: str, iteration: int, iterations: int) -> float:
    """Multiplier of the outer learning rate at 0-based ``iteration`` of ``iterations``.

    ``"cosine"`` anneals from 1 to 0 (Loshchilov & Hutter, SGDR, 2017). The factor is a pure function of the
    iteration, so a resumed run follows exactly the schedule of an uninterrupted one without extra state.
    """
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * iteration / iterations))
    return 1.0


def _to_floats(values: list[Any]) -> list[float]:
    """Python floats of ``values`` (floats or 0-d tensors), reading every tensor in one transfer."""
    tensors = [v.reshape(1) for v in values if isinstance(v, torch.Tensor)]
    read = iter(torch.cat(tensors).tolist() if tensors else [])
    return [next(read) if isinstance(v, torch.Tensor) else float(v) for v in values]


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_arguments(learner: TrainableLearner, pool: TaskPool, iterations: int, meta_batch_size: int,
                     **counts: Any) -> None:
    """Reject bad arguments before any compute, naming the value and how to fix it."""
    _check_count("iterations", iterations, 1)
    _check_count("meta_batch_size", meta_batch_size, 1)
    for name, value in counts.items():
        _check_count(name, value, 0)
    if meta_batch_size > len(pool):
        raise ValueError(
            f"meta_batch_size={meta_batch_size} exceeds the {len(pool)} tasks of the training pool; "
            "lower meta_batch_size or draw more training tasks."
        )
    if learner.head.out_features != pool.n_way:
        raise ValueError(
            f"The head has {learner.head.out_features} outputs but the tasks are {pool.n_way}-way; "
            "build the network with num_classes equal to n_way."
        )


def _smoothed(running: dict[str, float], stats: dict[str, float]) -> dict[str, float]:
    """Progress-bar statistics: moving averages of ``loss`` and ``acc``, and the latest ``val_acc``.

    Each average starts at its first value; ``val_acc``, measured every ``val_every`` iterations, is kept as is.
    """
    new = {
        k: SMOOTHING * running[k] + (1 - SMOOTHING) * v if k in running and k in ("loss", "acc") else v
        for k, v in stats.items()
    }
    return {**running, **new}


class _Trainer:
    """One training run; :meth:`run` is the loop, the other methods its parts."""

    def __init__(self, learner: TrainableLearner, pool: TaskPool, order: TaskOrder, settings: _Settings) -> None:
        self.learner, self.pool, self.order, self.settings = learner, pool, order, settings
        self.state, self.monitor = _RunState(), ResourceMonitor(settings.device)
        self.order_state = order.state_dict()  # the task order after the last *completed* iteration
        self.last_checkpoint: int | None = None
        self.pending: list[tuple[Any, Any]] = []  # (loss, acc) of completed iterations not yet read, in order

    def resume(self, path: str | os.PathLike) -> None:
        """Restore learner, task order, history and statistics from a checkpoint."""
        payload = read_checkpoint(path, self.settings.metadata)
        state = _RunState(**payload["progress"]["state"])
        if state.iteration > self.settings.iterations:
            raise ValueError(
                f"Checkpoint {path} is at iteration {state.iteration}, beyond iterations="
                f"{self.settings.iterations}; raise iterations or start afresh (resume_from=None)."
            )
        restore_learner(self.learner, payload)
        self.order.load_state_dict(payload["order"])
        self.state, self.order_state = state, self.order.state_dict()
        self.monitor = ResourceMonitor(self.settings.device, payload["progress"]["monitor"])
        if (
            self.settings.checkpoint_path is not None
            and Path(path).resolve() == self.settings.checkpoint_path.resolve()
        ):
            self.last_checkpoint = state.iteration  # that file already holds this state
        print(f"Resuming {self.settings.scenario} from {error_path(path)} at iteration {state.iteration}.")

    def step(self) -> None:
        """One outer iteration on the next meta-batch; its loss and accuracy wait, unread, in ``pending``."""
        started = time.perf_counter()
        tasks = self.pool.batch(self.order.next_indices(), self.settings.device)
        factor = outer_lr_factor(self.settings.lr_schedule, self.state.iteration, self.settings.iterations)
        self.learner.set_outer_lr(self.learner.outer_lr * factor)
        stats = self.learner.meta_train_step(tasks)
        self.monitor.sample()
        self.state.wall_time_s += time.perf_counter() - started
        self.state.iteration += 1
        self.pending.append((stats["loss"], stats["acc"]))
        self.order_state = self.order.state_dict()

    def read_pending(self) -> list[dict[str, float]]:
        """Read the pending statistics (one device synchronisation) into the history, in order.

        Returns:
            ``{"loss", "acc"}`` of each newly recorded iteration.

        Raises:
            NonFiniteLossError: a pending loss is NaN or infinite; the history stops before it.
        """
        if not self.pending:
            return []
        started, first = time.perf_counter(), self.state.iteration - len(self.pending)
        values = _to_floats([v for pair in self.pending for v in pair])
        self.pending = []
        self.state.wall_time_s += time.perf_counter() - started  # the device's backlog is training time too
        read = []
        for offset, (loss, acc) in enumerate(zip(values[::2], values[1::2], strict=True)):
            if not math.isfinite(loss):
                self.state.iteration = first + offset
                raise NonFiniteLossError(self._non_finite_message(loss))
            self.state.losses.append(loss)
            self.state.accs.append(acc)
            read.append({"loss": loss, "acc": acc})
        return read

    def _non_finite_message(self, loss: float) -> str:
        s, lrn = self.settings, self.learner
        kept = (
            f"the last good checkpoint {error_path(s.checkpoint_path)} (iteration {self.last_checkpoint}) "
            "is unchanged"
            if self.last_checkpoint is not None
            else "no checkpoint had been written"
        )
        return (
            f"Scenario {s.scenario!r}: the meta-training loss became {loss} at iteration "
            f"{self.state.iteration + 1} of {s.iterations}. The learning rate is most likely too high "
            f"(inner_lr={getattr(lrn, 'inner_lr', None)}, outer_lr={getattr(lrn, 'outer_lr', None)}): "
            f"lower it and train again. The learner's parameters are no longer usable; {kept}."
        )

    def validation_due(self) -> bool:
        """Whether this iteration validates: every ``val_every`` iterations, and at the last one, so that a run
        shorter than ``val_every`` (or not a multiple of it) still ends with its final validation accuracy."""
        s, it = self.settings, self.state.iteration
        return s.val_pool is not None and bool(s.val_every) and (it % s.val_every == 0 or it == s.iterations)

    def checkpoint_due(self) -> bool:
        """Whether this iteration's periodic checkpoint is still to be written."""
        s, it = self.settings, self.state.iteration
        return bool(s.checkpoint_every) and it % s.checkpoint_every == 0 and self.last_checkpoint != it

    def validate(self) -> float | None:
        """Post-adaptation accuracy on the validation pool when :meth:`validation_due` (else ``None``)."""
        s = self.settings
        if not self.validation_due():
            return None
        result = evaluate(self.learner, s.val_pool, device=s.device, progress=False)
        # Training seconds so far and per-task accuracies make equal-time and paired comparisons possible.
        self.state.val_history.append(
            {"iteration": self.state.iteration, "acc": result.acc_after, "ci": result.ci_after,
             "wall_time_s": self.state.wall_time_s, "per_task": result.per_task_after}
        )
        return result.acc_after

    def checkpoint(self, force: bool = False) -> None:
        """Write a checkpoint every ``checkpoint_every`` iterations (or now, with ``force``); reads pending stats."""
        s, it = self.settings, self.state.iteration
        due = force or (s.checkpoint_every and it % s.checkpoint_every == 0)
        if s.checkpoint_path is None or not due or self.last_checkpoint == it:
            return
        self.read_pending()  # never save a history with a hole, nor one that hides a non-finite loss
        progress = {"state": asdict(self.state), "monitor": self.monitor.state_dict()}
        save_checkpoint(s.checkpoint_path, self.learner, s.metadata, self.order_state, progress)
        self.last_checkpoint = it

    def run(self, callback: Callback | None, progress: bool) -> TrainResult:
        """The loop: step, validate, checkpoint, report, until ``iterations`` or an interrupt."""
        s = self.settings
        bar = tqdm(
            total=s.iterations,
            initial=self.state.iteration,
            desc=f"Training {s.scenario}",
            unit="it",
            disable=not progress,
        )
        running: dict[str, float] = {}
        try:
            while self.state.iteration < s.iterations:
                self.step()
                bar.update(1)
                it = self.state.iteration
                if (callback is not None or it % READ_EVERY == 0 or it == s.iterations or self.validation_due()
                        or (s.checkpoint_path is not None and self.checkpoint_due())):
                    read = self.read_pending()
                    for stats in read:
                        running = _smoothed(running, stats)
                    val_acc = self.validate()
                    if val_acc is not None:
                        running = _smoothed(running, {"val_acc": val_acc})
                    self.checkpoint()
                    bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()}, refresh=False)
                    if callback is not None:
                        callback(it, {**read[-1], **({} if val_acc is None else {"val_acc": val_acc})})
        except KeyboardInterrupt:
            return self._stop()
        finally:
            bar.close()
        self.checkpoint(force=True)
        return self.result(interrupted=False)

    def _stop(self) -> TrainResult:
        """Clean end after ``KeyboardInterrupt``: final checkpoint, notice, partial result."""
        self.read_pending()
        self.checkpoint(force=True)
        checkpoint = self.settings.checkpoint_path
        saved = f"; checkpoint: {error_path(checkpoint)}" if self.last_checkpoint is not None else ""
        print(
            f"Training of {self.settings.scenario} interrupted after {self.state.iteration} of "
            f"{self.settings.iterations} iterations; the history so far is kept{saved}."
        )
        return self.result(interrupted=True)

    def result(self, interrupted: bool) -> TrainResult:
        """The run so far as a :class:`TrainResult`."""
        self.read_pending()
        st = self.state
        return TrainResult(
            scenario=self.settings.scenario,
            losses=list(st.losses),
            accs=list(st.accs),
            val_history=[dict(v) for v in st.val_history],
            wall_time_s=st.wall_time_s,
            iterations_per_s=st.iteration / st.wall_time_s if st.wall_time_s > 0 else 0.0,
            peak_memory_mb=self.monitor.peak_memory_mb,
            memory_kind=self.monitor.memory_kind,
            gpu_utilisation=self.monitor.gpu_utilisation,
            device=device_name(self.settings.device),
            interrupted=interrupted,
            iterations_done=st.iteration,
            iterations_planned=self.settings.iterations,
        )


def train(
    learner: TrainableLearner,
    task_pool: TaskPool,
    iterations: int,
    meta_batch_size: int,
    *,
    generator: torch.Generator,
    device: torch.device | str,
    scenario: str,
    val_pool: TaskPool | None = None,
    val_every: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume_from: str | os.PathLike | None = None,
    callback: Callback | None = None,
    progress: bool = True,
    lr_schedule: str = "constant",
) -> TrainResult:
    """Meta-train ``learner`` for ``iterations`` outer steps on meta-batches of ``task_pool``.

    Args:
        learner: an ANIL or MAML learner (:class:`algorithms.learner.TrainableLearner`); every step sets its outer
            rate through ``learner.set_outer_lr``.
        task_pool: the fixed training tasks.
        iterations: total outer steps; a resumed run continues up to this number.
        meta_batch_size: tasks per outer step.
        generator: seeded CPU ``torch.Generator``; the task order's only source of randomness.
        device: where the tasks are sent (the learner's device).
        scenario: scenario name for messages, checkpoints and results.
        val_pool: validation tasks (held-out *background* characters; never evaluation tasks).
        val_every: validate every this many iterations (0: never).
        checkpoint_path: checkpoint file, written atomically; ``None`` writes none.
        checkpoint_every: checkpoint every this many iterations (0: only at the end or on interrupt).
        resume_from: checkpoint to continue from (may equal ``checkpoint_path``).
        callback: ``callback(iteration, stats)`` after every iteration; ``iteration`` counts completed steps,
            ``stats`` holds ``loss``, ``acc`` (and ``val_acc`` after a validation) as floats. A callback makes
            the loop read the statistics at every iteration (one device synchronisation each).
        progress: show a progress bar with the smoothed loss and accuracy.
        lr_schedule: outer learning-rate schedule, ``"constant"`` or ``"cosine"`` (see :func:`outer_lr_factor`).

    Returns:
        The :class:`TrainResult`; ``interrupted=True`` after a ``KeyboardInterrupt``.

    Raises:
        ValueError: bad arguments, or a corrupt or mismatched ``resume_from`` checkpoint.
        PermissionError: the checkpoint folder cannot be written (checked before training).
        NonFiniteLossError: the loss became NaN or infinite.
    """
    _check_arguments(
        learner,
        task_pool,
        iterations,
        meta_batch_size,
        val_every=val_every,
        checkpoint_every=checkpoint_every,
    )
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}.")
    if val_every and val_pool is None:
        raise ValueError(f"val_every={val_every} needs a val_pool (tasks from held-out background characters).")
    if checkpoint_path is not None:
        ensure_writable_dir(Path(checkpoint_path).parent)
    settings = _Settings(
        scenario=scenario,
        iterations=iterations,
        device=device,
        metadata=checkpoint_metadata(learner, scenario, len(task_pool), meta_batch_size),
        val_pool=val_pool,
        val_every=val_every,
        checkpoint_path=None if checkpoint_path is None else Path(checkpoint_path),
        checkpoint_every=checkpoint_every,
        lr_schedule=lr_schedule,
    )
    trainer = _Trainer(learner, task_pool, TaskOrder(len(task_pool), meta_batch_size, generator), settings)
    if resume_from is not None:
        trainer.resume(resume_from)
    return trainer.run(callback, progress)
