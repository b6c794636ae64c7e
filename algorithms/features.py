"""Per-set feature extraction with explicit BatchNorm semantics, shared by ANIL, MAML's baseline and NIL.

Meta-learning code for Omniglot (MAML, Finn et al. 2017; ANIL, Raghu et al., "Rapid Learning or Feature Reuse?
Towards Understanding the Effectiveness of MAML", ICLR 2020, arXiv:1909.09157) forwards every support set and
every query set *on its own* through a body in training mode, so that BatchNorm normalises each set with that
set's own statistics ("transductive" BatchNorm). This module reproduces exactly that, for a whole meta-batch at
once, in one of three memory layouts that give identical outputs and gradients:

* ``"loop"``: one forward per set, in ``channels_last``. On a CPU small batches stay in cache and are faster
  than one large batch (see ``benchmarks/``), so this is also the fastest layout there.
* ``"vmap"``: :func:`torch.func.vmap` over the sets. Convolutions become one large batched kernel while
  BatchNorm still sees each set separately; on a GPU this removes most kernel launches. Its BatchNorm batching
  rule moves the set dimension into the channels, which costs a copy of every activation on the way in and out.
* ``"grouped"``: one plain forward over all images, with each BatchNorm layer computing its statistics per set
  (:func:`grouped_batch_norm`, a reshape instead of a copy). No ``vmap`` and no per-set loop; on a CPU it behaves
  like one large batch, so it is meant for accelerators. ANIL runs it with :class:`GroupedNorm`, a per-set
  BatchNorm whose backward is written out (fewer passes over the activations, first derivatives only); MAML,
  which differentiates the body twice, keeps autograd's formula.

BatchNorm policy, in one place:

* ``bn="batch"`` (default, used in training and evaluation): each set is normalised with its own batch
  statistics; running statistics are updated only when ``update_running_stats`` is true (training).
  With ``"vmap"`` and ``"grouped"`` each set's moving-average update is applied to a copy and the copies are
  averaged, so the running statistics differ slightly from the sequential ``"loop"`` update; outputs and gradients
  do not.
* ``bn="running"``: the body runs in eval mode and uses its running statistics (the classic supervised
  convention). Sets no longer influence each other's normalisation, but the statistics come from training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call, vmap

Layout = Literal["auto", "loop", "vmap", "grouped"]
LAYOUTS: tuple[str, ...] = get_args(Layout)
BNMode = Literal["batch", "running"]
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
DEEP_BODY_CONVS = 10  # conv layers from which a body counts as deep (ResNet18 has 20, conv4 has 4)
SMALL_IMAGE = 32  # image side up to which per-operation overhead dominates on a CPU


def resolve_layout(layout: Layout, device: torch.device, body: nn.Module | None = None,
                   image_size: int | None = None) -> Literal["loop", "vmap", "grouped"]:
    """Pick the feature layout for a device (all give identical outputs and gradients; only speed differs).

    ``"auto"`` follows measurements (``benchmarks/run.py``): on CUDA one vmapped call, which removes kernel
    launches; on a CPU a loop over sets, whose small batches stay in cache, except for deep bodies (ResNet18)
    on small images, where per-operation overhead dominates and one vmapped call over all sets is faster.

    ``"auto"`` never picks ``"grouped"`` yet. On a CPU the loop or vmap was faster in every measured case (S1-S4 at
    28×28, S3/S4 at 105×105, and S1/S2 at 105×105 with :class:`GroupedNorm`: ``benchmarks/measured/cpu_2core_*``
    ``layouts_28.csv``, ``resnet_105.csv``, ``epyc_groupednorm_105.csv``). On CUDA a learner captures its step in a
    CUDA graph by default, and there the H200 timed ``"grouped"`` against ``"vmap"`` at 29.3 / 29.8 ms (S2) and 33.6
    / 34.0 ms (S1) at 105×105, within the run-to-run spread, and 3.6 / 3.5 ms and 4.6 / 4.3 ms, slower, at 28×28
    (``benchmarks/measured/gpu_h200_graph_benchmark.csv``); it was faster only in eager steps (S2: 33.8 against 36.7
    ms at 105×105, 12.9 against 16.1 ms at 28×28), which a learner on CUDA takes only with ``cuda_graph=False`` or
    after a failed capture. Those runs predate :class:`GroupedNorm`, which removes about a fifth of the grouped step
    on a CPU and has not been timed on a GPU: ``benchmarks/gpu_run.sh`` times it, and ``"auto"`` should pick
    ``"grouped"`` on CUDA where that run shows it faster with the graph. Its lower memory (6.3 against 7.6 GB for S2
    at 105×105) is the reason to pass ``layout="grouped"`` today.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    if layout != "auto":
        return layout
    if device.type == "cuda":
        return "vmap"
    convs = 0 if body is None else sum(isinstance(m, nn.Conv2d) for m in body.modules())
    return "vmap" if convs >= DEEP_BODY_CONVS and (image_size or 0) <= SMALL_IMAGE else "loop"


@contextmanager
def body_mode(body: nn.Module, bn: BNMode, update_running_stats: bool, dropout: bool) -> Iterator[None]:
    """Temporarily set BatchNorm and Dropout behaviour of ``body``; restores every flag afterwards.

    Args:
        body: the feature extractor.
        bn: ``"batch"`` to normalise with each set's statistics, ``"running"`` to use running statistics.
        update_running_stats: with ``bn="batch"``, whether the running averages are updated.
        dropout: whether Dropout layers are active.
    """
    if bn not in ("batch", "running"):
        raise ValueError(f"bn must be 'batch' or 'running', got {bn!r}.")
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in body.modules()]
    try:
        for module in body.modules():
            if isinstance(module, _BN_TYPES):
                module.train(bn == "batch")
                # With track_running_stats off, a BN layer in train mode neither reads nor writes its averages.
                module.track_running_stats = bn == "running" or update_running_stats
            elif isinstance(module, nn.Dropout):
                module.train(dropout)
        yield
    finally:
        for module, training, track in saved:
            module.training = training
            if track is not None:
                module.track_running_stats = track


def _loop_features(body: nn.Module, x: Tensor) -> Tensor:
    """One forward per set. ``x``: ``(sets, n, C, H, W)`` -> ``(sets, n, features)``."""
    return torch.stack([body(xs.contiguous(memory_format=torch.channels_last)) for xs in x])


def _vmap_features(body: nn.Module, x: Tensor) -> Tensor:
    """All sets in one vmapped call, each BatchNorm seeing one set. Shapes as in :func:`_loop_features`."""
    params = dict(body.named_parameters())
    buffers = per_set_buffers(body, x.shape[0])
    out = vmap(lambda b, xs: functional_call(body, (params, b), (xs,)), in_dims=(0, 0))(buffers, x)
    merge_set_buffers(body, buffers)
    return out


def per_set_buffers(module: nn.Module, sets: int) -> dict[str, Tensor]:
    """A copy of every buffer of ``module`` per set, ``(sets, *shape)``, for :func:`torch.func.vmap` over sets.

    Each set then updates its own copy of the BatchNorm running statistics; :func:`merge_set_buffers` averages
    the copies back into ``module``.
    """
    return {name: buf.unsqueeze(0).repeat(sets, *([1] * buf.dim())) for name, buf in module.named_buffers()}


def merge_set_buffers(module: nn.Module, buffers: dict[str, Tensor]) -> None:
    """Write the mean over sets of :func:`per_set_buffers`' copies into ``module`` (counters: their maximum)."""
    with torch.no_grad():
        for name, buf in module.named_buffers():
            new = buffers[name]
            buf.copy_(_at_least_float32(new).mean(0).to(buf.dtype) if buf.is_floating_point() else new.max(0).values)


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 if it already is (BatchNorm statistics are never averaged in half precision)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def grouped_batch_norm(module: nn.modules.batchnorm._BatchNorm, x: Tensor, sets: int, fused: bool = False) -> Tensor:
    """Training-mode BatchNorm of ``x`` with separate statistics for each of ``sets`` consecutive groups.

    Equal to running ``module`` in train mode on each group alone: biased variance for normalising, unbiased for
    the running averages, whose per-group updates are averaged (as the ``"vmap"`` layout does).

    Args:
        module: a BatchNorm layer (its ``eps``, ``momentum``, affine parameters and running buffers are used).
        x: ``(sets * n, C, ...)``, the images of set ``i`` at rows ``i * n`` to ``(i + 1) * n - 1``.
        sets: number of groups.
        fused: normalise with :class:`GroupedNorm`, whose hand-written backward makes fewer passes over ``x``
            (first-order only: it refuses a second derivative). ``False`` composes autograd operations, which
            can be differentiated twice and vmapped (MAML needs both).
    """
    groups = x.reshape(sets, x.shape[0] // sets, x.shape[1], -1)
    # Statistics in at least float32, as nn.BatchNorm computes them under autocast.
    stats_input = groups if groups.dtype in (torch.float32, torch.float64) else groups.float()
    with torch.set_grad_enabled(torch.is_grad_enabled() and not fused):
        var, mean = torch.var_mean(stats_input, dim=(1, 3), correction=0, keepdim=True)  # (sets, 1, C, 1)
    if module.track_running_stats and module.running_mean is not None:
        _update_running_stats(module, mean.detach(), var.detach(), groups.shape[1] * groups.shape[3])
    rstd = torch.rsqrt(var + module.eps)
    if fused:
        return GroupedNorm.apply(groups, mean, rstd, module.weight, module.bias).reshape(x.shape)
    scale, shift = _affine(mean, rstd, module.weight, module.bias)
    return (groups * scale + shift).to(x.dtype).reshape(x.shape)


def _affine(mean: Tensor, rstd: Tensor, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-(set, channel) ``scale, shift`` with ``batch_norm(x) = x * scale + shift``, both ``(sets, 1, C, 1)``."""
    scale = rstd if weight is None else rstd * weight.view(1, 1, -1, 1)
    shift = -mean * scale if bias is None else bias.view(1, 1, -1, 1) - mean * scale
    return scale, shift


class GroupedNorm(torch.autograd.Function):
    """Per-set normalisation ``y = (x - mean) * rstd * weight + bias`` with BatchNorm's backward written out.

    ``mean`` and ``rstd`` are the statistics of ``x`` itself (computed without a graph); the backward accounts
    for their dependence on ``x`` analytically, as a BatchNorm backward does. Counted in reads and writes of a
    full-size tensor (``python -m benchmarks.batchnorm``), autograd's version of the same formula makes 25 passes
    in 13 kernels per forward+backward; this one makes 13 in 7 (``var_mean`` and one ``addcmul`` forward; two
    reductions and two ``addcmul`` backward). A memory-bound GPU step at 105x105 pays per pass (issue 14).
    Shapes: ``groups (sets, n, C, L)``, ``mean`` and ``rstd (sets, 1, C, 1)``, ``weight`` and ``bias (C,)`` or
    ``None``.
    """

    @staticmethod
    def forward(ctx, groups: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor | None,
                bias: Tensor | None) -> Tensor:
        scale, shift = _affine(mean, rstd, weight, bias)
        ctx.save_for_backward(groups, mean, rstd, scale)
        ctx.affine = (weight is not None, bias is not None)
        return torch.addcmul(shift, groups, scale).to(groups.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, Tensor | None, Tensor | None]:
        groups, mean, rstd, scale = ctx.saved_tensors
        count = groups.shape[1] * groups.shape[3]
        # Sums of grad and grad * x_hat per (set, channel); x_hat = (x - mean) * rstd, expanded to avoid a pass.
        sum_g = grad.sum((1, 3), keepdim=True, dtype=scale.dtype)
        sum_gx = (grad * groups).sum((1, 3), keepdim=True, dtype=scale.dtype)
        sum_g_xhat = rstd * (sum_gx - mean * sum_g)
        # dx = scale * (grad - sum_g / count - x_hat * sum_g_xhat / count), regrouped as grad * a + x * b + c.
        b = -scale * rstd * sum_g_xhat / count
        c = -scale * sum_g / count - mean * b
        grad_x = torch.addcmul(c, groups, b).addcmul_(grad, scale).to(groups.dtype)
        has_weight, has_bias = ctx.affine
        grad_w = sum_g_xhat.sum((0, 1, 3)) if has_weight and ctx.needs_input_grad[3] else None
        grad_b = sum_g.sum((0, 1, 3)) if has_bias and ctx.needs_input_grad[4] else None
        return grad_x if ctx.needs_input_grad[0] else None, None, None, grad_w, grad_b


def _update_running_stats(module: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, count: int) -> None:
    """The average over sets of each set's moving-average update, as ``nn.BatchNorm`` would apply it."""
    with torch.no_grad():
        module.num_batches_tracked.add_(1)
        momentum = module.momentum if module.momentum is not None else 1.0 / module.num_batches_tracked.item()
        unbiased = var * (count / max(count - 1, 1))
        # mul_/add_ rather than lerp_, which has no vmap batching rule (MAML's vmap layout runs this per task).
        for running, batch in ((module.running_mean, mean), (module.running_var, unbiased)):
            update = _at_least_float32(batch).mean(0).flatten().to(running.dtype)
            running.mul_(1 - momentum).add_(update, alpha=momentum)


@contextmanager
def grouped_statistics(body: nn.Module, sets: int, fused: bool = False) -> Iterator[None]:
    """Make every BatchNorm layer of ``body`` in training mode use :func:`grouped_batch_norm` for a while."""
    patched = [m for m in body.modules() if isinstance(m, _BN_TYPES) and m.training]
    try:
        for module in patched:
            module.forward = lambda x, m=module: grouped_batch_norm(m, x, sets, fused)
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def _grouped_features(body: nn.Module, x: Tensor, forward: Callable[[Tensor], Tensor] | None = None,
                      fused: bool = False) -> Tensor:
    """All sets in one forward, BatchNorm statistics per set. Shapes as in :func:`_loop_features`.

    ``forward`` replaces ``body``'s own call, e.g. a :func:`torch.compile` of it; ``fused`` as in
    :func:`grouped_batch_norm`.
    """
    with grouped_statistics(body, x.shape[0], fused):
        return (forward or body)(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def set_features(
    body: nn.Module,
    x: Tensor,
    layout: Literal["loop", "vmap", "grouped"] = "loop",
    bn: BNMode = "batch",
    update_running_stats: bool = True,
    dropout: bool = False,
    forward: Callable[[Tensor], Tensor] | None = None,
    fused_bn: bool = False,
) -> Tensor:
    """Body features of every image, each set normalised on its own.

    Args:
        body: maps ``(n, C, H, W)`` images to ``(n, features)``.
        x: a batch of sets, ``(sets, n, C, H, W)``; typically ``(tasks, n_way * k_shot, 1, 28, 28)``.
        layout: ``"loop"``, ``"vmap"`` or ``"grouped"`` (same numbers, different speed; see the module docstring).
        bn: BatchNorm policy, ``"batch"`` or ``"running"``.
        update_running_stats: update BatchNorm running averages (training only).
        dropout: whether Dropout is active.
        forward: with ``"grouped"``, called instead of ``body`` (e.g. ``torch.compile(body)``); else ignored.
        fused_bn: with ``"grouped"``, normalise with :class:`GroupedNorm` (fewer passes; the body can then be
            differentiated only once, which is all ANIL needs); else ignored.

    Returns:
        Features of shape ``(sets, n, features)``.
    """
    with body_mode(body, bn, update_running_stats, dropout):
        if layout == "grouped":
            return _grouped_features(body, x, forward, fused_bn)
        has_buffers = next(body.buffers(), None) is not None
        if layout == "vmap" and has_buffers and bn == "batch" and update_running_stats:
            return _vmap_features(body, x)
        if layout == "vmap":
            params_and_buffers = {**dict(body.named_parameters()), **dict(body.named_buffers())}
            return vmap(lambda xs: functional_call(body, params_and_buffers, (xs,)))(x)
        return _loop_features(body, x)
