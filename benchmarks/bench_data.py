"""Time Omniglot loading (cold decode vs warm cache reload) and meta-batch sampling.

ANIL (Raghu, Raghu, Bengio & Vinyals, ICLR 2020, arXiv:1909.09157) meta-trains on meta-batches of few-shot
Omniglot tasks (Lake et al., Science 2015); this script checks that the data side stays cheap:

* cold decode: every PNG decoded into a fresh, empty cache folder;
* warm reload: the same call again, served from the cache (the target is <= 1 s);
* sampling: ``sample_tasks`` of 16 tasks, 5-way 1-shot 5-query, median of 20 (target < 5% of a meta-iteration:
  ~6 ms at 28 px); ``pool.batch`` shows the gather alone for a fixed pool.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_data [--root ../shared/data] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from utils.data import SPLIT_FOLDERS, load_omniglot
from utils.tasks import make_task_pool, sample_tasks

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = (28, 105)
TASKS, N_WAY, K_SHOT, K_QUERY = 16, 5, 1, 5


def _seconds(call: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median milliseconds over ``repeats`` calls, after one untimed warm-up call."""
    call()
    return 1e3 * statistics.median(_seconds(call) for _ in range(repeats))


def loading_row(root: Path, cache_dir: Path, split: str, size: int) -> dict:
    """Cold decode (empty cache) then warm reload (from the cache just written) of one split at one size."""

    def load() -> object:
        return load_omniglot(root, split, image_size=size, cache_dir=cache_dir, progress=False)

    return {"what": f"load {split}", "size": size, "cold_s": _seconds(load), "warm_s": _seconds(load)}


def sampling_row(images: torch.Tensor, rotations: bool, repeats: int) -> dict:
    """Median time to sample 16 fresh tasks, and to gather 16 tasks of a fixed pool, from ``images``."""
    generator = torch.Generator().manual_seed(0)
    pool = make_task_pool(images, TASKS, N_WAY, K_SHOT, K_QUERY, generator, rotations=rotations)

    def sample() -> object:
        return sample_tasks(images, TASKS, N_WAY, K_SHOT, K_QUERY, generator, rotations=rotations)

    return {
        "what": f"{TASKS} tasks {N_WAY}-way {K_SHOT}-shot {K_QUERY}-query" + (" +rot" if rotations else ""),
        "size": images.shape[-1],
        "sample_tasks_ms": _median_ms(sample, repeats),
        "pool.batch_ms": _median_ms(lambda: pool.batch(slice(None)), repeats),
    }


def main() -> None:
    """Parse arguments, run both benchmarks in a fresh temporary cache and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_root = Path(os.environ.get("OMNIGLOT_ROOT", REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--root", type=Path, default=default_root, help="folder that contains omniglot-py/")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per sampling median")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="omniglot-bench-") as cache:
        loading = pd.DataFrame(
            [loading_row(args.root, Path(cache), split, size) for size in SIZES for split in SPLIT_FOLDERS]
        )
        sampling = []
        for size in SIZES:
            split = load_omniglot(args.root, "background", image_size=size, cache_dir=cache, progress=False)
            sampling += [sampling_row(split.images, rotations, args.repeats) for rotations in (False, True)]
    sampling = pd.DataFrame(sampling)
    print(loading.to_string(index=False, float_format="{:.3f}".format))
    print()
    print(sampling.to_string(index=False, float_format="{:.2f}".format))


if __name__ == "__main__":
    main()
