"""Choose the ``full`` preset's budgets from validation curves: train scenarios long, watch them level off.

ANIL (Raghu et al., ICLR 2020, arXiv:1909.09157) against MAML only means something after both have converged.
This trains the chosen scenarios exactly as the notebook does (``run_scenario``: same pools, learner and
``train``) with a validation pass every ``--val-every`` outer steps on the *validation* tasks (held-out
background characters; test tasks are never looked at to choose a budget), and applies the levelling-off rule:
the last 20% of the iterations gain under 0.5 point of validation accuracy::

    python -m benchmarks.full_budget --data-root data --scenarios MAML S1 --iterations 1000 --val-every 50

It writes ``benchmarks/measured/<cpu>_full_budget_<scenario>.csv`` (iteration, training seconds, validation
accuracy and its CI) and prints the rule's verdict per scenario.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import pandas as pd
import torch

from evaluation.curves import levelled_off
from evaluation.resources import cpu_isa, cpu_model
from experiments.scenarios import ABLATIONS, MAML_SPEC, SCENARIOS, load_pretrained_body, make_pools, run_scenario
from utils.config import resolve_config
from utils.data import load_omniglot
from utils.io import atomic_write_text

MEASURED = Path(__file__).resolve().parent / "measured"
SPECS = {**SCENARIOS, **ABLATIONS, "MAML": MAML_SPEC}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--preset", default="quick")
    p.add_argument("--scenarios", nargs="+", default=["MAML", "S1"], choices=list(SPECS))
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--results-dir", type=Path, default=Path("results") / "full_budget")
    args = p.parse_args(argv)
    device = torch.device("cpu")
    fields = {SPECS[name].iterations_field for name in args.scenarios}
    config = resolve_config(args.preset, device, val_every=args.val_every,
                            **{field: args.iterations for field in fields})
    splits = [load_omniglot(args.data_root, s, config.image_size, cache_dir=args.cache_dir, progress=False)
              for s in ("background", "evaluation")]
    pools = make_pools(*splits, config)
    body = None
    for name in args.scenarios:
        spec = SPECS[name]
        resnet = spec.architecture == "resnet18"
        if resnet and body is None:
            body = load_pretrained_body("omniglot", config, pools.train_images, device,
                                        args.results_dir / "pretrained", progress=False)
        started = time.perf_counter()
        record = run_scenario(spec, config, pools, device, results_dir=args.results_dir, progress=False,
                              reuse=False, body_state=body.state_dict if resnet else None,
                              source=body.source if resnet else "random")
        curve = pd.DataFrame([{"scenario": name, "iteration": v["iteration"], "train_s": v.get("wall_time_s"),
                               "val_acc": v["acc"], "val_ci": v["ci"]} for v in record.train.val_history])
        slug = re.sub(r"[^a-z0-9]+", "_", f"{cpu_model()} {cpu_isa()}".lower()).strip("_")
        atomic_write_text(MEASURED / f"{slug}_full_budget_{re.sub(r'[^A-Za-z0-9]+', '_', name)}.csv",
                          curve.to_csv(index=False))
        verdict = levelled_off(record.train.val_history)
        print(curve.to_string(index=False))
        reading = ("too few validations to tell" if verdict is None else
                   f"iterations {verdict.start_iteration}->{verdict.end_iteration} gained {verdict.gain_points:+.2f} "
                   f"points -> {'levelled off' if verdict.levelled else 'still rising'}")
        print(f"{name}: {args.iterations} iterations in {time.perf_counter() - started:.0f} s "
              f"({record.train.iterations_per_s:.2f} it/s); {reading}; test {100 * record.test.acc_after:.1f}% "
              f"(reported only, not used to choose); {cpu_model()} ({cpu_isa()})", flush=True)


if __name__ == "__main__":
    main()
