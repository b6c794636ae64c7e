"""Builders shared by the tests of ``evaluation``, ``experiments`` and ``report``: tiny learners, pools, records."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from algorithms.anil import ANIL
from algorithms.learner import Learner, TrainableLearner
from evaluation.evaluate import EvalResult, confidence_interval
from experiments.records import ScenarioRecord, TrainResult
from experiments.training import train
from utils.data import OmniglotSplit
from utils.networks import ImageBody, create_anil_network, parameter_table
from utils.tasks import TaskPool, make_task_pool

N_WAY = 5


def conv4(seed: int = 0, n_way: int = N_WAY, image_size: int = 28) -> tuple[ImageBody, nn.Linear]:
    """A conv4 ``(body, head)`` whose initial weights depend only on ``seed``."""
    with torch.random.fork_rng():  # the network builders initialise from the global RNG: keep it untouched
        torch.manual_seed(seed)
        return create_anil_network(num_classes=n_way, image_size=image_size)


def make_anil(seed: int = 0, n_way: int = N_WAY, **kwargs: Any) -> ANIL:
    """A conv4 ANIL learner for 28x28 images whose initial weights depend only on ``seed``."""
    body, head = conv4(seed, n_way)
    return ANIL(body, head, **{"inner_lr": 0.4, "outer_lr": 0.003, "inner_steps": 2, **kwargs})


def make_pool(split: OmniglotSplit, num_tasks: int, seed: int, k_query: int = 2, n_way: int = N_WAY) -> TaskPool:
    """A seeded pool of ``n_way``-way 1-shot tasks from ``split``."""
    return make_task_pool(split.images, num_tasks, n_way, 1, k_query, torch.Generator().manual_seed(seed))


def run(learner: TrainableLearner, pool: TaskPool, iterations: int, meta_batch_size: int = 2, seed: int = 0,
        **kwargs: Any):
    """:func:`experiments.training.train` on the CPU without a progress bar, scenario ``"S1"`` by default."""
    options = {"scenario": "S1", "progress": False, **kwargs}
    generator = torch.Generator().manual_seed(seed)
    return train(learner, pool, iterations, meta_batch_size, generator=generator, device="cpu", **options)


def state_tensors(learner: Learner) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of body and head."""
    return {
        **{f"body.{k}": v for k, v in learner.body.state_dict().items()},
        **{f"head.{k}": v for k, v in learner.head.state_dict().items()},
    }


def fake_train(
    losses: list[float],
    accs: list[float],
    its: float = 10.0,
    memory: float = 500.0,
    memory_kind: str = "cpu_peak_rss",
    val_history: list[dict] | None = None,
) -> TrainResult:
    """A hand-made TrainResult (pure-logic tests of the comparison table)."""
    return TrainResult(
        scenario="fake",
        losses=losses,
        accs=accs,
        val_history=val_history or [],
        wall_time_s=len(losses) / its,
        iterations_per_s=its,
        peak_memory_mb=memory,
        memory_kind=memory_kind,
        gpu_utilisation=None,
        device="cpu (2 threads)",
        interrupted=False,
        iterations_done=len(losses),
        iterations_planned=len(losses),
    )


def fake_eval(
    before: list[float], after: list[float], n_way: int = N_WAY, nil: list[float] | None = None,
    at_train_steps: float | None = None,
) -> EvalResult:
    """A hand-made EvalResult from per-task accuracies (5 test steps; 5 training steps, so the accuracy at the
    training's steps is ``acc_after`` unless ``at_train_steps`` says otherwise)."""
    gains = [a - b for a, b in zip(after, before, strict=True)]
    (acc_before, ci_before), (acc_after, ci_after) = confidence_interval(before), confidence_interval(after)
    return EvalResult(
        num_tasks=len(after),
        n_way=n_way,
        steps=5,
        acc_before=acc_before,
        ci_before=ci_before,
        acc_after=acc_after,
        ci_after=ci_after,
        gain=acc_after - acc_before,
        gain_ci=confidence_interval(gains)[1],
        per_task_before=before,
        per_task_after=after,
        nil_acc=None if nil is None else confidence_interval(nil)[0],
        nil_ci=None if nil is None else confidence_interval(nil)[1],
        per_task_nil=nil,
        train_steps=5,
        acc_at_train_steps=acc_after if at_train_steps is None else at_train_steps,
        ci_at_train_steps=ci_after,
    )


def fake_record(
    name: str, train_result: TrainResult, test: EvalResult, source: str = "random", meta_batch_size: int | None = 4
) -> ScenarioRecord:
    """A ScenarioRecord with the parameter counts of a real 28x28 conv4 network."""
    learner = make_anil()
    return ScenarioRecord(
        name=name,
        description=f"{name}: conv4",
        architecture="conv4",
        pretrained_source=source,
        params=parameter_table(learner.body, learner.head),
        train=train_result,
        test=test,
        train_tasks=100,
        meta_batch_size=meta_batch_size,
    )
