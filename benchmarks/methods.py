"""The training steps that the benchmark compares, each one meta-iteration (or supervised pass) on a meta-batch.

(a) ``anil``: :meth:`algorithms.anil.ANIL.meta_train_step` (Raghu et al., ICLR 2020, arXiv:1909.09157).
(b) ``floor``: a plain supervised forward+backward+Adam pass of the same body and a linear head over the same
    images, in chunks of ``chunk`` images and a given memory format; the benchmark keeps the fastest setting.
(c) ``per_task``: ANIL as tutorials write it: per task, separate support and query forwards, head adaptation
    with ``torch.autograd.grad``, then backward.
(d) ``seed``: the seed notebook's pseudocode, which re-runs the body inside every inner step.
(e) ``maml``: MAML with all parameters adapted (:mod:`algorithms.maml`), first or second order, one task at a time
    (``"loop"``, the usual MAML code) or batched over tasks with ``torch.func`` (``"vmap"``).

:func:`time_steps` times a few meta-training steps of any learner, for ratios that need no full training run.

Each builder takes a freshly built ``(body, head)`` and returns a zero-argument step function.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from algorithms.anil import ANIL
from algorithms.features import Layout
from algorithms.maml import MAML, MAMLLayout
from utils.tasks import TaskBatch

Step = Callable[[], None]


def anil_step(
    body: nn.Module,
    head: nn.Linear,
    tasks: TaskBatch,
    first_order: bool,
    freeze: bool,
    inner_steps: int,
    layout: Layout = "auto",
    cuda_graph: bool = False,
    channels_last: bool = False,
    compile_body: bool = False,
    fused_bn: bool = True,
) -> Step:
    """(a) Our batched ANIL meta-iteration, in the feature ``layout`` (``"auto"``: the device's default).

    ``cuda_graph``, ``channels_last``, ``compile_body`` and ``fused_bn`` are :class:`algorithms.anil.ANIL`'s
    options; a graph is strict here, so a failed capture fails the measurement instead of timing eager steps under
    its name.
    """
    anil = ANIL(
        body, head, inner_lr=0.1, inner_steps=inner_steps, first_order=first_order, freeze_body=freeze,
        layout=layout, cuda_graph=cuda_graph, channels_last=channels_last, compile_body=compile_body,
        fused_bn=fused_bn,
    )
    return lambda: anil.meta_train_step(tasks)


def floor_step(body: nn.Module, head: nn.Linear, tasks: TaskBatch, chunk: int, channels_last: bool) -> Step:
    """(b) Supervised pass over all ``tasks`` images in chunks of ``chunk``, one backward per chunk."""
    images = torch.cat([tasks.support_x.flatten(0, 1), tasks.query_x.flatten(0, 1)])
    labels = torch.cat([tasks.support_y.flatten(), tasks.query_y.flatten()])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    body.to(memory_format=fmt)
    images = images.contiguous(memory_format=fmt)
    optimizer = torch.optim.Adam([p for p in (*body.parameters(), *head.parameters()) if p.requires_grad])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, len(images), chunk):
            x, y = images[start : start + chunk], labels[start : start + chunk]
            (F.cross_entropy(head(body(x)), y) * (len(x) / len(images))).backward()
        optimizer.step()

    return step


def _adapt_head(
    body: nn.Module, x, y, head: nn.Linear, lr: float, steps: int, first_order: bool, rerun_body: bool
):
    """Head SGD with autograd.grad on one task; the seed's version re-runs the body at every step."""
    weight, bias = head.weight, head.bias
    features = body(x)
    for step in range(steps):
        if rerun_body and step:
            features = body(x)
        loss = F.cross_entropy(F.linear(features, weight, bias), y)
        gw, gb = torch.autograd.grad(loss, (weight, bias), create_graph=not first_order)
        weight, bias = weight - lr * gw, bias - lr * gb
    return weight, bias


def per_task_step(
    body: nn.Module,
    head: nn.Linear,
    tasks: TaskBatch,
    first_order: bool,
    inner_steps: int,
    rerun_body: bool = False,
) -> Step:
    """(c) Plain per-task ANIL loop; with ``rerun_body`` it is (d), the seed's pseudocode."""
    optimizer = torch.optim.Adam([p for p in (*body.parameters(), *head.parameters()) if p.requires_grad])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        body.train()
        for sx, sy, qx, qy in zip(*tasks, strict=True):
            weight, bias = _adapt_head(body, sx, sy, head, 0.1, inner_steps, first_order, rerun_body)
            (F.cross_entropy(F.linear(body(qx), weight, bias), qy) / len(tasks.support_x)).backward()
        optimizer.step()

    return step


def maml_step(
    body: nn.Module, head: nn.Linear, tasks: TaskBatch, first_order: bool, inner_steps: int,
    layout: MAMLLayout = "loop", cuda_graph: bool = False,
) -> Step:
    """(e) MAML, all parameters adapted: one task at a time (``"loop"``) or batched over tasks (``"vmap"``).

    ``cuda_graph`` as for ANIL (strict), so that both methods of a row get the same engineering.
    """
    maml = MAML(body, head, inner_lr=0.1, inner_steps=inner_steps, first_order=first_order, layout=layout,
                cuda_graph=cuda_graph)
    return lambda: maml.meta_train_step(tasks)


def time_steps(learner: ANIL | MAML, tasks: TaskBatch, steps: int = 3, warmup: int = 1) -> float:
    """Median wall time in seconds of one ``learner.meta_train_step(tasks)``, after ``warmup`` untimed steps.

    The learner is trained by these steps: pass a throwaway copy (e.g. a freshly built learner) when its weights
    matter. Lets the notebook time per-task (``"loop"``) MAML for a few steps instead of training it fully.

    Args:
        learner: an ANIL or MAML learner, on the device of ``tasks``.
        tasks: one meta-batch, ``support_x (tasks, n_way * k_shot, C, H, W)`` etc.
        steps: timed steps (>= 1).
        warmup: untimed steps first (allocator, cuDNN autotuning, lazy layouts).
    """
    if not isinstance(steps, int) or steps < 1 or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"steps must be an integer >= 1 and warmup >= 0, got steps={steps!r}, warmup={warmup!r}.")
    device = tasks.support_x.device
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        learner.meta_train_step(tasks)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
