"""Choose the ``full`` preset's budgets from validation curves: train scenarios long, watch them level off.

ANIL (Raghu et al., ICLR 2020, arXiv:1909.09157) against MAML only means something after both have converged.
This trains the chosen scenarios exactly as the notebook does (``run_scenario``: same pools, learner and
``train``) with a validation pass every ``--val-every`` outer steps on the *validation* tasks (held-out
background characters; test tasks are never looked at to choose a budget), and applies the levelling-off rule:
the last 20% of the iterations gain under 0.5 point of validation accuracy::

    python -m benchmarks.full_budget --data-root data --scenarios MAML S1 --iterations 1000 --val-every 50

It writes ``benchmarks/measured/<cpu>_full_budget_<scenario>.csv`` (iteration, training seconds, validation
accuracy and its CI) and prints the rule's verdict per scenario. ``--from-results results --preset full`` trains
nothing: it applies the rule to the scenarios a notebook run cached (``make notebook`` runs ``full`` into
``results/``) and writes their curves to ``benchmarks/measured/<cpu>_full_run_validation.csv``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import torch

from evaluation.curves import levelled_off
from evaluation.resources import cpu_isa, cpu_model
from experiments.records import ScenarioRecord
from experiments.scenarios import ABLATIONS, MAML_SPEC, SCENARIOS, load_pretrained_body, make_pools, run_scenario
from utils.config import resolve_config
from utils.data import load_omniglot
from utils.io import atomic_write_text

MEASURED = Path(__file__).resolve().parent / "measured"
SPECS = {**SCENARIOS, **ABLATIONS, "MAML": MAML_SPEC}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def validation_curve(name: str, record: ScenarioRecord) -> pd.DataFrame:
    """One row per validation: scenario, iteration, training seconds so far, accuracy and its 95% half-width."""
    return pd.DataFrame([{"scenario": name, "iteration": v["iteration"], "train_s": v.get("wall_time_s"),
                          "val_acc": v["acc"], "val_ci": v["ci"]} for v in record.train.val_history])


def verdict_line(name: str, record: ScenarioRecord) -> str:
    """The rule's verdict on one scenario, with its speed and (reported only) test accuracy."""
    verdict = levelled_off(record.train.val_history)
    reading = ("too few validations to tell" if verdict is None else
               f"iterations {verdict.start_iteration}->{verdict.end_iteration} gained {verdict.gain_points:+.2f} "
               f"points -> {'levelled off' if verdict.levelled else 'still rising'}")
    return (f"{name}: {record.train.iterations_done} iterations, {record.train.wall_time_s:.0f} s of training "
            f"({record.train.iterations_per_s:.2f} it/s); {reading}; test {100 * record.test.acc_after:.1f}% "
            "(reported only, not used to choose)")


def from_results(results_dir: Path, preset: str, measured: Path = MEASURED) -> Path:
    """Apply the rule to every scenario a notebook run of ``preset`` cached in ``results_dir``; one CSV for all,
    written to ``measured``, whose path is returned.

    Raises:
        FileNotFoundError: ``results_dir`` holds no result of ``preset`` (names the folder and the fix).
    """
    records = {}
    for path in sorted(results_dir.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("config", {}).get("preset") == preset and "record" in document:
            records[document["scenario"]] = ScenarioRecord.from_dict(document["record"])
    if not records:
        raise FileNotFoundError(f"No result of preset {preset!r} in {results_dir.resolve()}: run the notebook with "
                                f"ANIL_PRESET={preset} (or `make notebook`) first.")
    curves = pd.concat([validation_curve(name, record) for name, record in records.items()])
    out = measured / f"{_slug(f'{cpu_model()} {cpu_isa()}')}_{preset}_run_validation.csv"
    atomic_write_text(out, curves.to_csv(index=False))
    for name, record in records.items():
        print(verdict_line(name, record))
    print(f"{len(curves)} validations of {len(records)} scenarios -> {out.name}; {cpu_model()} ({cpu_isa()})")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--preset", default="quick")
    p.add_argument("--scenarios", nargs="+", default=["MAML", "S1"], choices=list(SPECS))
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--results-dir", type=Path, default=Path("results") / "full_budget")
    p.add_argument("--from-results", type=Path, default=None,
                   help="train nothing: apply the rule to the runs of --preset cached in this folder (a notebook's)")
    args = p.parse_args(argv)
    if args.from_results is not None:
        from_results(args.from_results, args.preset)
        return
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
        record = run_scenario(spec, config, pools, device, results_dir=args.results_dir, progress=False,
                              reuse=False, body_state=body.state_dict if resnet else None,
                              source=body.source if resnet else "random")
        curve = validation_curve(name, record)
        atomic_write_text(MEASURED / f"{_slug(f'{cpu_model()} {cpu_isa()}')}_full_budget_{_slug(name)}.csv",
                          curve.to_csv(index=False))
        print(curve.to_string(index=False))
        print(f"{verdict_line(name, record)}; {cpu_model()} ({cpu_isa()})", flush=True)


if __name__ == "__main__":
    main()
