"""The ``quick`` preset's S2 accuracy as a distribution over training seeds, not one draw.

ANIL (Raghu et al., ICLR 2020, arXiv:1909.09157), scenario S2 (conv4, first order), trained exactly as the
notebook trains it (:func:`benchmarks.tune_quick.train_tuned`) once per seed, then scored after the preset's
``test_inner_steps`` on the validation tasks and on the 600 test tasks, with NIL on the same tasks. The seed
changes the task pools' draw of training tasks, the task order and the initialisation; the validation and test
pools are drawn from their own seeds and stay the same. Nothing here is tuned: the preset is used as it is::

    python -m benchmarks.quick_seeds --data-root data --seeds 0 1 2 3 4

It writes ``benchmarks/measured/<cpu>_quick_s2_seeds.csv`` (one row per seed and split: ``scenario``, ``preset``,
``seed``, ``split``, ``acc_after``, ``nil``, the CPU model and ISA), each seed's loss history to
``results/quick_seeds/`` (to compare histories across code changes), and prints mean ± sd, min and max per
split. A seed takes about 9-10 minutes with one thread on a 2-core AVX2 CPU; run two seeds side by side with
``OMP_NUM_THREADS=1`` each, never two 2-thread torch processes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import torch

from benchmarks.tune_quick import train_tuned
from evaluation.evaluate import per_task_accuracies
from evaluation.resources import cpu_isa, cpu_model
from utils.config import PRESETS, resolve_config
from utils.data import load_omniglot
from utils.io import atomic_write_json, atomic_write_text

MEASURED = Path(__file__).resolve().parent / "measured"


def seed_rows(seed: int, splits: list, history_dir: Path) -> list[dict]:
    """Train the quick preset's S2 with ``seed``; one row per split with accuracy after adaptation and NIL."""
    config = resolve_config("quick", torch.device("cpu"), seed=seed)
    learner, pools, result = train_tuned(config, splits, "S2")
    atomic_write_json(history_dir / f"S2-seed{seed}.json", {"losses": result.losses, "accs": result.accs})
    rows = []
    for split, pool in (("validation", pools.val), ("test", pools.test)):
        (acc,), nil = per_task_accuracies(learner, pool, (config.test_inner_steps,), 50, torch.device("cpu"),
                                          nil=True, progress=False)
        rows.append({"scenario": "S2", "preset": "quick", "seed": seed, "split": split, "tasks": len(pool),
                     "acc_after": round(acc.mean().item(), 5), "nil": round(nil.mean().item(), 5),
                     "iterations": result.iterations_done, "train_s": round(result.wall_time_s, 1),
                     "cpu": cpu_model(), "isa": cpu_isa(), "torch": torch.__version__,
                     "threads": torch.get_num_threads()})
    return rows


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd (over seeds), min and max of ``acc_after`` and ``nil`` per split, in percent."""
    stats = table.groupby("split")[["acc_after", "nil"]].agg(["mean", "std", "min", "max", "count"]) * 100
    stats[("acc_after", "count")] /= 100
    stats[("nil", "count")] /= 100
    return stats.round(2)


def csv_name(model: str, isa: str) -> str:
    """File name of the measured CSV, naming the CPU and its ISA, e.g. ``amd_epyc_avx2_quick_s2_seeds.csv``."""
    slug = re.sub(r"[^a-z0-9]+", "_", f"{model} {isa}".lower()).strip("_")
    return f"{slug}_quick_s2_seeds.csv"


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out-dir", type=Path, default=MEASURED)
    p.add_argument("--history-dir", type=Path, default=Path("results") / "quick_seeds")
    args = p.parse_args(argv)
    splits = [load_omniglot(args.data_root, s, PRESETS["quick"].image_size, cache_dir=args.cache_dir,
                            progress=False) for s in ("background", "evaluation")]
    rows: list[dict] = []
    out = args.out_dir / csv_name(cpu_model(), cpu_isa())
    for seed in args.seeds:
        rows += seed_rows(seed, splits, args.history_dir)
        table = pd.DataFrame(rows)
        atomic_write_text(out, table.to_csv(index=False))  # after every seed: a stopped run keeps what it measured
        print(table.tail(2).to_string(index=False), flush=True)
    print(f"{cpu_model()} ({cpu_isa()}), torch {torch.__version__}, {torch.get_num_threads()} threads; {out.name}")
    print(summary(table).to_string())
    print(json.dumps({"seeds": args.seeds}))
    return table


if __name__ == "__main__":
    main()
