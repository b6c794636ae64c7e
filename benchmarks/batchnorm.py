"""Per-set BatchNorm alone: passes over the activations and forward+backward time, three ways (issue 14).

ANIL (Raghu et al., ICLR 2020, arXiv:1909.09157) normalises every support and query set with its own statistics.
At 105x105 on a GPU the meta-step is memory-bound, and its gap to the supervised floor sits in that per-set
BatchNorm. This script isolates one BatchNorm layer at conv4's first-layer shape and compares:

* ``nn.BatchNorm2d`` over all images as one batch: the floor's BatchNorm (cuDNN on a GPU), not per-set;
* ``GroupedNorm``: :func:`algorithms.features.grouped_batch_norm` with ``fused=True``, the written-out backward;
* ``autograd``: the same function with ``fused=False``, autograd's backward of the composed formula.

For each it counts, with ``torch.profiler`` on a small copy, the kernels that read a full-size tensor and the
full-size tensors they read and write ("passes": what a memory-bound GPU pays for), then times forward+backward at
the given shape (median of ``--repeats`` after one warm-up)::

    python -m benchmarks.batchnorm --device cpu --sets 8 --images 30 --size 105 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from algorithms.features import grouped_batch_norm
from evaluation.resources import device_name
from utils.io import atomic_write_text

VARIANTS = ("nn.BatchNorm2d, one batch", "GroupedNorm", "autograd")
# Allocation, views, casts and bookkeeping: they move no activation data.
_NOT_COMPUTE = {"aten::" + name for name in ("view", "reshape", "_reshape_alias", "as_strided", "expand", "empty",
                                            "empty_like", "empty_strided", "detach", "to", "fill_", "zero_",
                                            "batch_norm", "_batch_norm_impl_index")}


def normalise(variant: str, layer: nn.BatchNorm2d, x: Tensor, sets: int) -> Tensor:
    """``x (sets * n, C, H, W)`` normalised by ``variant`` (one of :data:`VARIANTS`)."""
    if variant == VARIANTS[0]:
        return layer(x)
    return grouped_batch_norm(layer, x, sets, fused=variant == "GroupedNorm")


def count_passes(variant: str, sets: int, device: torch.device) -> tuple[int, int]:
    """``(kernels, passes)`` of one forward+backward on a small ``(sets * 6, 8, 10, 10)`` input.

    A kernel is an innermost ATen compute call with a full-size operand; its passes are its full-size operands
    read plus one full-size write (none for a reduction). A fused native kernel (``nn.BatchNorm2d``) counts what
    it is given and returns, not the extra passes it makes inside (its statistics pass, for one).
    """
    x = torch.randn(sets * 6, 8, 10, 10, device=device, requires_grad=True)
    grad, layer, full = torch.randn_like(x), nn.BatchNorm2d(8).to(device), x.numel()

    def full_size_reads(event) -> int:
        return sum(torch.Size(s).numel() == full for s in event.input_shapes or [] if isinstance(s, list) and s)

    def is_compute(event) -> bool:
        return event.name.startswith("aten::") and event.name not in _NOT_COMPUTE and full_size_reads(event) > 0

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        normalise(variant, layer, x, sets).backward(grad)
    kernels = passes = 0
    for event in prof.events():
        if is_compute(event) and not any(is_compute(child) for child in event.cpu_children):
            reduction = any(name in event.name for name in ("sum", "mean", "var"))
            kernels, passes = kernels + 1, passes + full_size_reads(event) + (not reduction)
    return kernels, passes


def time_variant(variant: str, x: Tensor, grad: Tensor, sets: int, repeats: int) -> float:
    """Median milliseconds of forward+backward of ``variant`` on ``x``."""
    layer = nn.BatchNorm2d(x.shape[1]).to(x.device)

    def step() -> None:
        normalise(variant, layer, x.detach().requires_grad_(), sets).backward(grad)

    return _median_ms(step, x.device, repeats)


def _median_ms(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls of ``step`` after one warm-up call."""
    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    times = []
    for _ in range(repeats):
        synchronise()
        start = time.perf_counter()
        step()
        synchronise()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    shape = (args.sets * args.images, args.channels, args.size, args.size)
    x, grad = (torch.randn(shape, generator=g, device=device) for _ in range(2))
    rows = []
    for variant in VARIANTS:
        kernels, passes = count_passes(variant, args.sets, device)
        ms = time_variant(variant, x, grad, args.sets, args.repeats)
        rows.append({"variant": variant, "kernels": kernels, "passes": passes, "ms": ms})
    table = pd.DataFrame(rows).assign(device=device_name(device), torch=torch.__version__,
                                      shape="x".join(map(str, shape)), sets=args.sets)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "batchnorm.csv", table.to_csv(index=False))
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sets", type=int, default=16, help="sets normalised separately (a meta-batch's query sets)")
    p.add_argument("--images", type=int, default=30, help="images per set")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=105, help="side of the activation (conv4's first layer: the image)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("results"))
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
