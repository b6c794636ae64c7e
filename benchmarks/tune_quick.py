"""Choose the ``quick`` preset's inner learning rate and test-time inner steps for S2, on validation tasks only.

ANIL (Raghu et al., ICLR 2020, arXiv:1909.09157), scenario S2 (conv4, first order). For every ``inner_lr`` and
seed, S2 is trained exactly as the notebook trains it (same pools, ``run_scenario``'s learner and ``train``), then
query accuracy is measured after several numbers of test-time inner steps on the *validation* tasks (held-out
background characters), which choose the values, and on the test tasks, which only report them::

    python -m benchmarks.tune_quick --data-root data --inner-lr 0.05 0.1 0.2 0.4 --seeds 0
    python -m benchmarks.tune_quick --data-root data --inner-lr 0.1 --bf16-body on off   # bf16 accuracy A/B
    python -m benchmarks.tune_quick --data-root data --inner-lr 0.1 --bf16-body off --meta-batch-size 8 \
        --outer-lr 0.006 --iterations 900                                                   # a budget of tasks

It writes ``results/tune_quick.csv`` (one row per run and split) and prints it. Each run takes 3-5 minutes on a
2-core CPU. Run several processes side by side only with ``OMP_NUM_THREADS=1`` each.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from evaluation.evaluate import per_task_accuracies
from experiments.records import TrainResult
from experiments.results import save_table
from experiments.scenarios import SCENARIOS, TaskPools, build_network, make_learner, make_pools
from experiments.training import train
from utils.config import PRESETS, Config, resolve_config
from utils.data import OmniglotSplit, load_omniglot

STEPS = (0, 5, 10, 20, 40, 50, 80, 160)


def train_tuned(config: Config, splits: list[OmniglotSplit], scenario: str = "S2", train_k_query: int | None = None,
                progress: bool = False) -> tuple[Any, TaskPools, TrainResult]:
    """Train S2 (or S1) with ``config`` on the CPU exactly as the notebook trains it.

    Args:
        config: the run's configuration (a quick preset with overrides).
        splits: the background and evaluation splits at ``config.image_size``, loaded once by the caller.
        scenario: ``"S2"`` or ``"S1"``.
        train_k_query: query images per class of the *training* tasks (default ``config.k_query``); validation
            and test tasks keep ``config.k_query``.
        progress: show a progress bar.

    Returns:
        ``(learner, pools, result)``: the trained learner, the task pools and its training history.
    """
    pools = make_pools(*splits, config)
    if train_k_query is not None and train_k_query != config.k_query:  # same characters and seeds, more queries
        pools = dataclasses.replace(pools, train=make_pools(*splits, config.replace(k_query=train_k_query)).train)
    spec = SCENARIOS[scenario]
    iterations = config.s2_iterations if scenario == "S2" else config.s1_iterations
    learner = make_learner(spec, *build_network(spec.architecture, config), config)
    result = train(learner, pools.train, iterations, config.meta_batch_size,
                   generator=torch.Generator().manual_seed(config.seed), device=torch.device("cpu"),
                   scenario=spec.name, progress=progress, lr_schedule=config.outer_lr_schedule)
    return learner, pools, result


def tune_run(config: Config, splits: list[OmniglotSplit], steps: tuple[int, ...], scenario: str = "S2",
             train_k_query: int | None = None) -> list[dict]:
    """Train S2 (or S1) with :func:`train_tuned`; accuracy (%) after each of ``steps`` on validation and test tasks.

    Arguments as in :func:`train_tuned`; ``steps`` are the test-time inner-step counts to measure.
    """
    started = time.perf_counter()
    learner, pools, result = train_tuned(config, splits, scenario, train_k_query)
    seconds = time.perf_counter() - started
    rows = []
    for split, pool in (("validation", pools.val), ("test", pools.test)):
        accs, nil = per_task_accuracies(learner, pool, steps, 50, torch.device("cpu"), nil=True, progress=False)
        row = {"scenario": scenario, "iterations": result.iterations_done, "meta_batch_size": config.meta_batch_size,
               "train_k_query": train_k_query or config.k_query,
               "outer_lr": config.outer_lr, "inner_lr": config.inner_lr, "bf16_body": config.bf16_body,
               "seed": config.seed, "split": split, "tasks": len(pool),
               "train_s": round(seconds, 1), "nil": round(100 * nil.mean().item(), 2)}
        rows.append(row | {f"steps_{s}": round(100 * a.mean().item(), 2) for s, a in zip(steps, accs, strict=True)})
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--inner-lr", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--iterations", type=int, default=None, help="S2 outer steps (default: the preset's)")
    p.add_argument("--meta-batch-size", type=int, default=None, help="tasks per outer step (default: the preset's)")
    p.add_argument("--outer-lr", type=float, default=None, help="peak Adam rate (default: the preset's)")
    p.add_argument("--scenario", default="S2", choices=["S1", "S2"], help="the conv4 scenario to tune")
    p.add_argument("--train-k-query", type=int, default=None,
                   help="query images per class of the training tasks only (default: the preset's k_query)")
    p.add_argument("--bf16-body", choices=["on", "off"], nargs="+", default=["on"],
                   help="bfloat16 autocast of the body; 'on off' runs an A/B of its accuracy effect")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    rows = []
    splits = [load_omniglot(args.data_root, s, PRESETS["quick"].image_size, cache_dir=args.cache_dir,
                            progress=False) for s in ("background", "evaluation")]
    grid = [(seed, lr, bf16) for seed in args.seeds for lr in args.inner_lr for bf16 in args.bf16_body]
    for seed, inner_lr, bf16 in grid:
        config = resolve_config("quick", torch.device("cpu"), inner_lr=inner_lr, seed=seed,
                                s1_iterations=args.iterations, s2_iterations=args.iterations,
                                meta_batch_size=args.meta_batch_size, outer_lr=args.outer_lr, bf16_body=bf16 == "on")
        rows += tune_run(config, splits, STEPS, args.scenario, args.train_k_query)
        print(pd.DataFrame(rows[-2:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    save_table(table, args.results_dir, "tune_quick")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n{table.to_string(index=False)}")
    return table


if __name__ == "__main__":
    main()
