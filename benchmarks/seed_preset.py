"""Train the four scenarios (and MAML) with a GPU preset, headless, and print both comparison tables.

This is the notebook's pipeline without the notebook (ANIL: Raghu et al., ICLR 2020, arXiv:1909.09157), for a
GPU machine without Jupyter: same ``run_scenario``, same pools, same caching. It reports iterations per second,
peak memory and accuracy with the device's name, the seed notebook's reported figures beside this run's
(:mod:`report.seed_reference`), and the total wall time; it writes
``results/<preset>_preset_comparison.{csv,json}`` and ``results/<preset>_seed_vs_run.{csv,json}``::

    python -m benchmarks.seed_preset --data-root data --preset seed   # the seed's protocol, 125 iterations
    python -m benchmarks.seed_preset --data-root data --preset gpu    # 1,000 iterations per scenario
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from evaluation.resources import device_name
from experiments.results import save_table
from experiments.scenarios import (
    ANIL_AT_MAML_BUDGET,
    MAML_SPEC,
    SCENARIOS,
    ScenarioRecord,
    load_pretrained_body,
    make_pools,
    run_scenario,
)
from report.compare import comparison_table, format_table
from report.seed_reference import format_seed_vs_run, seed_agreement_markdown, seed_vs_run_table
from utils.config import PRESETS, pick_device, resolve_config
from utils.data import load_omniglot


def _flat_columns(table: pd.DataFrame) -> pd.DataFrame:
    """``(S1, "this run")`` columns as ``"S1: this run"``, which CSV and JSON hold unambiguously."""
    flat = table.copy()
    flat.columns = [f"{name}: {side}" for name, side in table.columns]
    flat.attrs = dict(table.attrs)
    flat.attrs["notes"] = [table.attrs["caption"], *table.attrs.get("notes", [])]
    return flat


def _print(table: pd.DataFrame) -> None:
    with pd.option_context("display.max_rows", 100, "display.width", 250, "display.max_colwidth", 40):
        print(table.to_string())


def _print_record(name: str, record: ScenarioRecord) -> None:
    """One line per scenario: speed, memory, accuracy, and where the time went (training against evaluation)."""
    train, test = record.train, record.test
    print(f"{name}: {train.iterations_per_s:.2f} it/s, peak {train.peak_memory_mb:.0f} MB, accuracy "
          f"{test.acc_after:.4f} ± {test.ci_after:.4f}; training {train.wall_time_s:.1f} s, evaluation "
          f"{test.eval_time_s:.1f} s ({test.num_tasks} tasks, {test.steps} steps)", flush=True)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--preset", default="seed", choices=["auto", *PRESETS])
    p.add_argument("--pretrained", default="imagenet")
    p.add_argument("--maml-iterations", type=int, default=None)
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    started = time.perf_counter()
    device = pick_device("auto")
    config = resolve_config(args.preset, device, maml_iterations=args.maml_iterations)
    splits = [load_omniglot(args.data_root, s, config.image_size, download=True, cache_dir=args.cache_dir,
                            progress=False) for s in ("background", "evaluation")]
    pools = make_pools(*splits, config)
    body = load_pretrained_body(args.pretrained, config, pools.train_images, device,
                                args.results_dir / "pretrained", progress=False)
    print(f"S3/S4 body: ResNet18, pretrained on: {body.source}", flush=True)
    records = {}
    for name, spec in SCENARIOS.items():
        resnet = spec.architecture == "resnet18"
        records[name] = run_scenario(
            spec, config, pools, device, results_dir=args.results_dir, progress=False, reuse=False,
            body_state=body.state_dict if resnet else None, source=body.source if resnet else "random")
        _print_record(name, records[name])
    if config.maml_iterations:
        for spec in (ANIL_AT_MAML_BUDGET, MAML_SPEC):
            records[spec.name] = run_scenario(spec, config, pools, device, results_dir=args.results_dir,
                                              progress=False, reuse=False)
    table = comparison_table(records)
    save_table(table, args.results_dir, f"{config.preset}_preset_comparison")
    _print(format_table(table))
    label = device_name(device)
    versus = seed_vs_run_table(records, config, label)
    save_table(_flat_columns(versus), args.results_dir, f"{config.preset}_seed_vs_run")
    print(f"\n{versus.attrs['caption']}")
    _print(format_seed_vs_run(versus))
    print(f"\n{seed_agreement_markdown(records, config, label)}\n")
    print(f"Total wall time {time.perf_counter() - started:.0f} s, preset {config.preset!r}, device {label}.")
    return table


if __name__ == "__main__":
    main()
