"""Iterations per second of the whole training loop, ``experiments.training.train``, for S2 (conv4, first order).

The benchmark suite (``benchmarks/run.py``) times one meta-step on fixed tensors; this script times what the
notebook runs: task sampling from the seed-preset pool, the host-to-device copy, the ANIL step (Raghu et al.,
ICLR 2020, arXiv:1909.09157), statistics and the progress bar. For each image size and CUDA-graph mode it builds
the S2 learner of the ``seed`` preset, trains ``--warmup`` iterations (capture happens there), then times a second
``train`` call of ``--iterations`` iterations on the same learner (steady state), and writes
``train_throughput.csv``::

    python -m benchmarks.train_throughput --data-root data --sizes 28 105 --cuda-graph on off --iterations 300
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from algorithms.anil import ANIL
from evaluation.resources import device_name
from experiments.scenarios import SCENARIOS, build_network
from experiments.training import train
from utils.config import Config, pick_device, resolve_config
from utils.data import load_omniglot
from utils.io import atomic_write_text
from utils.tasks import TaskPool, make_task_pool


def s2_learner(config: Config, device: torch.device, cuda_graph: bool) -> ANIL:
    """The S2 learner of ``config`` (as ``experiments.scenarios.make_learner`` builds it), graph on or off."""
    spec = SCENARIOS["S2"]
    body, head = build_network(spec.architecture, config)
    return ANIL(body.to(device), head.to(device), config.inner_lr, config.outer_lr, config.inner_steps,
                freeze_body=spec.freeze_body, first_order=spec.first_order, cuda_graph=cuda_graph)


def timed_train(learner: ANIL, pool: TaskPool, config: Config, device: torch.device, iterations: int,
                progress: bool) -> tuple[float, float]:
    """``(iterations per second as train() reports it, wall-clock iterations per second)`` of one ``train`` call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = train(learner, pool, iterations, config.meta_batch_size, generator=torch.Generator().manual_seed(0),
                   device=device, scenario="S2", progress=progress)
    return result.iterations_per_s, iterations / (time.perf_counter() - started)


def measure(size: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Rows of one image size: each CUDA-graph mode, warm-up call then timed call."""
    config = resolve_config("seed", device, image_size=size)
    background = load_omniglot(args.data_root, "background", size, download=False, cache_dir=args.cache_dir,
                               progress=False)
    pool = make_task_pool(background.images, config.train_tasks, config.n_way, config.k_shot, config.k_query,
                          torch.Generator().manual_seed(config.seed))
    rows = []
    for mode in args.cuda_graph:
        learner = s2_learner(config, device, cuda_graph=mode == "on")
        warm_its, _ = timed_train(learner, pool, config, device, args.warmup, progress=False)
        its, wall_its = timed_train(learner, pool, config, device, args.iterations, args.progress)
        rows.append({"scenario": "S2", "size": size, "cuda_graph": mode, "graph_captured": learner.graph_captured,
                     "meta_batch_size": config.meta_batch_size, "iterations": args.iterations,
                     "it_per_s": its, "wall_it_per_s": wall_its, "warmup_it_per_s": warm_its,
                     "device": device_name(device), "torch": torch.__version__})
        print(f"S2 {size}x{size} graph {mode}: {its:.1f} it/s (train), {wall_its:.1f} it/s (wall), captured "
              f"{learner.graph_captured}; first {args.warmup} iterations {warm_its:.1f} it/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=[28, 105])
    p.add_argument("--cuda-graph", nargs="+", default=["on"], choices=["on", "off"])
    p.add_argument("--iterations", type=int, default=300, help="timed iterations per size and mode")
    p.add_argument("--warmup", type=int, default=10, help="iterations before timing (the graph is captured here)")
    p.add_argument("--progress", action="store_true", help="show the progress bar while timing, as the notebook")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    device = pick_device(args.device)
    if "on" in args.cuda_graph and device.type != "cuda":
        p.error("--cuda-graph on needs a CUDA device; pass --cuda-graph off on a CPU")
    table = pd.DataFrame([row for size in args.sizes for row in measure(size, args, device)])
    atomic_write_text(args.out / "train_throughput.csv", table.to_csv(index=False))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return table


if __name__ == "__main__":
    main()
