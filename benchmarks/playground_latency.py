"""Redraw latency of the adaptation playground (conv4, 28x28, 5-way 1-shot, 5 queries per class).

One redraw = what the live widget does on a slider move: set the control, re-adapt the head and encode its two
images (:meth:`report.playground.Playground.live_images`: the predictions mosaic by PIL, the support-loss panel
by matplotlib). Prints the median wall and CPU time of 10 redraws per control.
``python -m benchmarks.playground_latency [--data-root data]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from experiments.scenarios import SCENARIOS, build_network, make_learner
from report.playground import Playground
from utils.config import PRESETS
from utils.data import load_omniglot
from utils.tasks import make_task_pool

CHANGES = {
    "inner steps": lambda i: {"steps": 10 + 9 * i},
    "inner lr": lambda i: {"inner_lr": 0.05 * (1 + i)},
    "next task": lambda i: {"task": "next"},
    "k_shot": lambda i: {"k_shot": 1 + i % 5},
}


def measure(playground: Playground, change, repeats: int = 10) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` redraws, each applying ``change(i)``."""
    walls, cpus = [], []
    for i in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        playground.set(**change(i))
        playground.live_images()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("OMNIGLOT_ROOT", "data"))
    parser.add_argument("--bf16", action="store_true", help="run the body under bfloat16 autocast (quick preset)")
    args = parser.parse_args()
    config = PRESETS["quick"].replace(bf16_body=args.bf16)
    evaluation = load_omniglot(args.data_root, "evaluation", 28, cache_dir=os.environ.get("OMNIGLOT_CACHE"),
                               progress=False)
    pool = make_task_pool(evaluation.images, 50, 5, 1, 5, torch.Generator().manual_seed(0))
    learner = make_learner(SCENARIOS["S2"], *build_network("conv4", config), config)
    playground = Playground({"S2": learner}, pool, steps=config.test_inner_steps)
    playground.live_images()  # warm-up: fonts, layout choice
    print(f"torch threads: {torch.get_num_threads()}")
    for name, change in CHANGES.items():
        wall, cpu = measure(playground, change)
        print(f"{name:12s} median redraw {1000 * wall:5.0f} ms wall, {1000 * cpu:5.0f} ms CPU")


if __name__ == "__main__":
    main()
