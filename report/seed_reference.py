"""The seed notebook's reported figures, and this run's beside them, with sentences on where they agree.

The project reproduces a seed notebook that trained ANIL (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or
Feature Reuse? Towards Understanding the Effectiveness of MAML", ICLR 2020, arXiv:1909.09157) on Omniglot in four
scenarios. :data:`SEED_REPORTED` holds every figure of that notebook's comparison table, in one place, so that a
user without the seed notebook can still compare; :func:`seed_vs_run_table` puts this run's values beside them
(reusing :func:`report.compare.comparison_table`'s ratios, ranks and overfitting flag), and
:func:`seed_agreement_markdown` says, from the numbers, where this run agrees with the seed and where it does not.

Only the seed's *training protocol* can be reproduced: its GPU is unnamed, its S3/S4 body was ImageNet-pretrained
(this project may have to pre-train on Omniglot instead, and says so), and it gave no confidence interval for its
100 test tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from experiments.records import ScenarioRecord
from report.compare import (
    LOSS_WINDOW,
    MIN_LOSS_ITERATIONS,
    comparison_table,
    smoothed_loss,
    training_accuracy,
)
from utils.config import Config

SEED_SCENARIOS = ("S1", "S2", "S3", "S4")
SEED_DEVICE = "unnamed CUDA GPU"
SEED_TEST_TASKS = 100
SEED_ITERATIONS = 125  # training time x it/s = 125 for every scenario: one pass over 2,000 tasks in batches of 16
SEED_COLUMN, RUN_COLUMN = "seed reported", "this run"

# The seed notebook's comparison table, every metric and note as it reported them (one entry per metric, one
# value per scenario; strings such as "~1.6" are the seed's own approximations, None where it gave no value).
# S3/S4 used an ImageNet-pretrained ResNet18; the GPU is unnamed; accuracies are on 100 test tasks, no CI.
SEED_REPORTED: dict[str, dict[str, Any]] = {
    "description": {"S1": "conv4, second order", "S2": "conv4, first order",
                    "S3": "ResNet18 pretrained (ImageNet), trainable body",
                    "S4": "ResNet18 pretrained (ImageNet), frozen body + trainable BatchNorm"},
    "total_parameters": {"S1": 123461, "S2": 123461, "S3": 11172805, "S4": 11182405,
                         "note": "S4 total double-counts the 9600 BatchNorm parameters (correct: 11172805)"},
    "trainable_parameters": {"S1": 123461, "S2": 123461, "S3": 11172805, "S4": 12165},
    "body_parameters": {"S1": 111936, "S2": 111936, "S3": 11170240, "S4": 11170240},
    "head_parameters": {"S1": 11525, "S2": 11525, "S3": 2565, "S4": 2565},
    "batchnorm_parameters": {"S1": None, "S2": None, "S3": None, "S4": 9600, "note": "reported for S4 only"},
    "initial_loss": {"S1": "~1.6", "S2": "~1.6", "S3": "~1.5", "S4": "~1.5", "note": "approximate in the source"},
    "final_loss": {"S1": 0.4752, "S2": 0.6354, "S3": 0.2415, "S4": 0.6492},
    "best_loss": {"S1": 0.4250, "S2": 0.4623, "S3": 0.2105, "S4": 0.6047},
    "max_loss": {"S1": "~1.6", "S2": "~1.6", "S3": "~1.5", "S4": "~1.5", "note": "approximate in the source"},
    "training_time_s": {"S1": 57.25, "S2": 38.92, "S3": 93.32, "S4": 58.34},
    "iterations_per_s": {"S1": 2.18, "S2": 3.21, "S3": 1.34, "S4": 2.15,
                         "note": "time x speed = 125 iterations for every scenario"},
    "speedup_vs_s1": {"S1": 1.0, "S2": 1.47, "S3": 0.61, "S4": 0.99},
    "gpu_usage_percent": {"S1": 78, "S2": 97, "S3": 82, "S4": 84, "note": "unnamed CUDA GPU"},
    "peak_memory_gb": {"S1": 0.71, "S2": 0.71, "S3": 1.47, "S4": 1.47},
    "memory_vs_s1": {"S1": 1.0, "S2": 1.0, "S3": 2.07, "S4": 2.07},
    "accuracy_before_percent": {"S1": 20.01, "S2": 20.00, "S3": 20.00, "S4": 20.00,
                                "note": "100 test tasks from images_evaluation"},
    "accuracy_after_percent": {"S1": 77.12, "S2": 77.19, "S3": 72.45, "S4": 90.45,
                               "note": "100 test tasks; no confidence interval given"},
    "gain_points": {"S1": 57.11, "S2": 57.19, "S3": 52.45, "S4": 70.45},
    "rank_training_loss": {"S1": 2, "S2": 3, "S3": 1, "S4": 4},
    "rank_test_accuracy": {"S1": 2, "S2": 2, "S3": 4, "S4": 1},
    "rank_speed": {"S1": 2, "S2": 1, "S3": 4, "S4": 3},
    "rank_memory": {"S1": 1, "S2": 1, "S3": 3, "S4": 3},
    "params_per_task": {"S1": 0.062, "S2": 0.062, "S3": 5.586, "S4": 0.006,
                        "note": "thousands of trainable parameters per training task (2,000 tasks)"},
    "meta_overfitting": {"S1": "no", "S2": "no", "S3": "yes", "S4": "no"},
}
SEED_PROTOCOL_TEXT = ("105x105, 5-way 1-shot, 5 query, 2,000 training tasks, meta-batch 16, 125 iterations, "
                      "inner_lr 0.01, outer_lr 0.001, 5 inner steps, 100 test tasks")
# The Config fields of that protocol; any difference is named in the table's caption.
SEED_PROTOCOL: dict[str, Any] = {
    "image_size": 105, "n_way": 5, "k_shot": 1, "k_query": 5, "train_tasks": 2000, "meta_batch_size": 16,
    "s1_iterations": SEED_ITERATIONS, "s2_iterations": SEED_ITERATIONS, "resnet_iterations": SEED_ITERATIONS,
    "inner_lr": 0.01, "outer_lr": 0.001, "outer_lr_schedule": "constant", "inner_steps": 5, "test_inner_steps": 5,
    "bf16_body": False, "rotations": False,
}

RunGetter = Any  # (record, its comparison_table column) -> value
# This run's initial and final losses are smoothed as in comparison_table (a single iteration's loss is one noisy
# meta-batch); the seed's are as it reported them. The labels say so.
SMOOTHED = f"≥ {MIN_LOSS_ITERATIONS} it.; seed: as reported"
INITIAL_LOSS_ROW = f"Loss: initial (this run: mean of first {LOSS_WINDOW:.0%}, {SMOOTHED})"
FINAL_LOSS_ROW = f"Loss: final (this run: mean of last {LOSS_WINDOW:.0%}, {SMOOTHED})"
# The seed's 100 test tasks are not known: this run's are 100 tasks of the same count, drawn here.
SEED_TASKS = f"{SEED_TEST_TASKS} tasks; this run: the seed's count, drawn here"


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _seed_tasks_after(r: ScenarioRecord) -> float | None:
    """Accuracy after adaptation on the 100 tasks of the seed's count when measured, else on the standard pool."""
    return _percent((r.test_seed or r.test).acc_after)


# Row label -> (key of SEED_REPORTED or None, this run's value, display format). Ratios, ranks and the
# overfitting flag are read from comparison_table, so both tables always say the same.
ROWS: dict[str, tuple[str | None, RunGetter, str]] = {
    "Description": ("description", lambda r, c: r.description, "s"),
    "Pretraining source": (None, lambda r, c: r.pretrained_source, "s"),
    "Parameters: total": ("total_parameters", lambda r, c: r.params["total"], ",d"),
    "Parameters: trainable": ("trainable_parameters", lambda r, c: r.params["trainable"], ",d"),
    "Parameters: body": ("body_parameters", lambda r, c: r.params["body"], ",d"),
    "Parameters: head": ("head_parameters", lambda r, c: r.params["head"], ",d"),
    "Parameters: BatchNorm": ("batchnorm_parameters", lambda r, c: r.params["batchnorm"], ",d"),
    "Params/task (thousands of trainable per training task)": (
        "params_per_task", lambda r, c: r.params["trainable"] / r.train_tasks / 1000, ".3f"),
    "Training tasks": (None, lambda r, c: r.train_tasks, ",d"),
    "Iterations": (None, lambda r, c: r.train.iterations_done, ",d"),
    "Training accuracy (%, last 10% of iterations)": (None, lambda r, c: _percent(training_accuracy(r.train)), ".2f"),
    INITIAL_LOSS_ROW: ("initial_loss", lambda r, c: smoothed_loss(r.train.losses, "first"), ".4f"),
    FINAL_LOSS_ROW: ("final_loss", lambda r, c: smoothed_loss(r.train.losses, "last"), ".4f"),
    "Loss: best (minimum)": ("best_loss", lambda r, c: min(r.train.losses), ".4f"),
    "Loss: maximum": ("max_loss", lambda r, c: max(r.train.losses), ".4f"),
    "Training time (s)": ("training_time_s", lambda r, c: r.train.wall_time_s, ",.2f"),
    "Iterations/s": ("iterations_per_s", lambda r, c: r.train.iterations_per_s, ".2f"),
    "Speed-up vs S1": ("speedup_vs_s1", lambda r, c: c["Speed-up vs reference (it/s ratio)"], ".2f"),
    "GPU usage (%)": ("gpu_usage_percent", lambda r, c: r.train.gpu_utilisation, ".0f"),
    "Peak memory (GiB)": ("peak_memory_gb", lambda r, c: r.train.peak_memory_mb / 1024, ".2f"),
    "Memory vs S1": ("memory_vs_s1", lambda r, c: c["Memory vs reference (ratio, CUDA only)"], ".2f"),
    "Accuracy before adaptation (%)": ("accuracy_before_percent",
                                       lambda r, c: _percent((r.test_seed or r.test).acc_before), ".2f"),
    f"Accuracy after adaptation (%, {SEED_TASKS})": ("accuracy_after_percent", lambda r, c: _seed_tasks_after(r),
                                                     ".2f"),
    "Accuracy after adaptation (%, standard pool)": (None, lambda r, c: _percent(r.test.acc_after), ".2f"),
    "95% CI (± points, standard pool)": (None, lambda r, c: _percent(r.test.ci_after), ".2f"),
    f"Gain (points, {SEED_TASKS})": ("gain_points", lambda r, c: _percent((r.test_seed or r.test).gain), "+.2f"),
    "Rank: training loss (final, 1 = lowest)": ("rank_training_loss",
                                                lambda r, c: c["Rank: training loss (final, 1 = lowest)"], "d"),
    "Rank: test accuracy (1 = highest)": ("rank_test_accuracy", lambda r, c: c["Rank: test accuracy (1 = highest)"],
                                          "d"),
    "Rank: speed (1 = fastest)": ("rank_speed", lambda r, c: c["Rank: speed (1 = fastest)"], "d"),
    "Rank: memory (1 = least)": ("rank_memory", lambda r, c: c["Rank: memory (1 = least, CUDA only)"], "d"),
    "Meta-overfitting": ("meta_overfitting", lambda r, c: "yes" if c["Meta-overfitting flag"] else "no", "s"),
}


def protocol_differences(config: Config, records: Mapping[str, ScenarioRecord] | None = None) -> list[str]:
    """How this run's protocol differs from the seed's, one phrase per difference (empty: the same protocol)."""
    differences = [f"{name} {getattr(config, name)!r} (seed: {value!r})" for name, value in SEED_PROTOCOL.items()
                   if getattr(config, name) != value]
    for name, r in (records or {}).items():
        if name in ("S3", "S4") and not r.pretrained_source.startswith("ImageNet"):
            differences.append(f"{name} body pretrained on {r.pretrained_source!r} (seed: ImageNet)")
    return differences


def _seed_records(records: Mapping[str, ScenarioRecord]) -> dict[str, ScenarioRecord]:
    """The records of the seed's scenarios, in the seed's order; ``ValueError`` when there are none."""
    chosen = {name: records[name] for name in SEED_SCENARIOS if name in records}
    if not chosen:
        raise ValueError(f"No seed scenario among {list(records)}; the seed's table has {list(SEED_SCENARIOS)}.")
    return chosen


def seed_vs_run_table(records: Mapping[str, ScenarioRecord], config: Config, device_label: str) -> pd.DataFrame:
    """The seed's reported figures beside this run's, scenario by scenario.

    Args:
        records: scenario name -> record; the seed's scenarios (S1-S4) among them are shown, others ignored
            (ranks and ratios are computed among the shown ones, as in the seed's table).
        config: this run's configuration (its preset and any difference from the seed's protocol are named).
        device_label: this run's device, e.g. ``"cuda (NVIDIA H200)"``.

    Returns:
        Object DataFrame of raw values (``None`` where not measured or not reported); rows: the seed's metrics,
        columns: MultiIndex ``(scenario, "seed reported" | "this run")``. ``attrs["caption"]`` names both sides
        and says when the protocols differ; ``attrs["protocol_differences"]`` lists the differences and
        ``attrs["notes"]`` the seed's own notes.
    """
    chosen = _seed_records(records)
    compared = comparison_table(chosen, reference="S1" if "S1" in chosen else None)
    columns: dict[tuple[str, str], list[Any]] = {}
    for name, record in chosen.items():
        columns[(name, SEED_COLUMN)] = [None if key is None else SEED_REPORTED[key].get(name)
                                        for key, _, _ in ROWS.values()]
        columns[(name, RUN_COLUMN)] = [get(record, compared[name]) for _, get, _ in ROWS.values()]
    table = pd.DataFrame(columns, index=list(ROWS), dtype=object)
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["scenario", "side"])
    differences = protocol_differences(config, chosen)
    table.attrs.update(
        caption=_caption(config, device_label, differences), protocol_differences=differences,
        preset=config.preset, device=device_label,
        notes=[f"{key}: {row['note']}" for key, row in SEED_REPORTED.items() if "note" in row]
        + [f"Seed protocol: {SEED_PROTOCOL_TEXT}; seed device: {SEED_DEVICE}."],
    )
    return table


def _caption(config: Config, device_label: str, differences: list[str]) -> str:
    head = (f"Seed reported ({SEED_DEVICE}, {SEED_TEST_TASKS} test tasks) vs this run ({device_label}, preset "
            f"{config.preset!r}).")
    if not differences:
        return f"{head} Same training protocol as the seed."
    return f"{head} NOT the seed's protocol: {'; '.join(differences)}."


def _format_cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, str) or fmt == "s":
        return str(value)
    return format(int(value) if fmt.endswith("d") else value, fmt)


def format_seed_vs_run(table: pd.DataFrame) -> pd.DataFrame:
    """Display strings of :func:`seed_vs_run_table` (``"n/a"`` for missing values); attrs are kept."""
    formatted = table.copy()
    for label, (_, _, fmt) in ROWS.items():
        formatted.loc[label] = [_format_cell(v, fmt) for v in table.loc[label]]
    formatted.attrs = dict(table.attrs)
    return formatted


def _accuracy_sentence(name: str, r: ScenarioRecord) -> str:
    """Whether the seed's accuracy of ``name`` lies within this run's 95% CI on the standard pool."""
    seed, acc, ci = SEED_REPORTED["accuracy_after_percent"][name], 100 * r.test.acc_after, 100 * r.test.ci_after
    on_seed_tasks = "" if r.test_seed is None else (
        f", {100 * r.test_seed.acc_after:.1f}% on {r.test_seed.num_tasks:,} tasks drawn here (the seed's count)")
    if abs(acc - seed) <= ci:
        verdict = "**agrees**: the seed's figure lies within this run's 95% CI"
    else:
        verdict = (f"**differs**: the seed's figure lies outside this run's 95% CI, {abs(acc - seed):.1f} points "
                   f"{'below' if acc > seed else 'above'} this run")
    return (f"- {name} ({r.pretrained_source}): {acc:.1f}% ± {ci:.1f} on {r.test.num_tasks:,} tasks{on_seed_tasks}, "
            f"against the seed's {seed:.2f}%; this {verdict}.")


def _ordering(values: Mapping[str, float]) -> str:
    """``"S4 > S1 > S2"``: names from the highest value to the lowest."""
    return " > ".join(sorted(values, key=values.get, reverse=True))


def _speed_sentence(chosen: Mapping[str, ScenarioRecord], device_label: str) -> str:
    ratios = {n: r.train.iterations_per_s / SEED_REPORTED["iterations_per_s"][n] for n, r in chosen.items()}
    listed = ", ".join(f"{n} {x:.2f}x" for n, x in ratios.items())
    run_order = _ordering({n: r.train.iterations_per_s for n, r in chosen.items()})
    seed_order = _ordering({n: SEED_REPORTED["iterations_per_s"][n] for n in chosen})
    agree = "the same order as the seed's" if run_order == seed_order else f"the seed's order was {seed_order}"
    return (f"- Speed: this run's iterations per second are {listed} the seed's ({device_label} against the seed's "
            f"{SEED_DEVICE}). Fastest to slowest here: {run_order}; {agree}.")


def _ranking_sentence(chosen: Mapping[str, ScenarioRecord]) -> str:
    run_order = _ordering({n: r.test.acc_after for n, r in chosen.items()})
    seed_order = _ordering({n: SEED_REPORTED["accuracy_after_percent"][n] for n in chosen})
    verdict = "agrees with" if run_order == seed_order else "differs from"
    return f"- Accuracy ranking: {run_order} here; this {verdict} the seed's {seed_order}."


def _overfitting_sentence(chosen: Mapping[str, ScenarioRecord], table: pd.DataFrame) -> str:
    flags = {n: table.loc["Meta-overfitting", (n, RUN_COLUMN)] for n in chosen}
    differ = [f"{n} (here {flags[n]}, seed {SEED_REPORTED['meta_overfitting'][n]})" for n in chosen
              if flags[n] != SEED_REPORTED["meta_overfitting"][n]]
    if not differ:
        return "- Meta-overfitting flags agree with the seed's for every scenario shown."
    return f"- Meta-overfitting flags differ for {', '.join(differ)}."


def seed_agreement_markdown(records: Mapping[str, ScenarioRecord], config: Config, device_label: str) -> str:
    """Markdown sentences, written from the numbers, on where this run agrees with the seed's table and where not.

    Args:
        records: scenario name -> record (the seed's scenarios S1-S4 among them are compared).
        config: this run's configuration.
        device_label: this run's device.
    """
    chosen = _seed_records(records)
    table = seed_vs_run_table(chosen, config, device_label)
    differences = table.attrs["protocol_differences"]
    if differences:
        opening = (f"This run (preset {config.preset!r}) does **not** follow the seed's protocol "
                   f"({'; '.join(differences)}), so its figures show trends, not a reproduction of the seed's.")
    else:
        opening = (f"This run (preset {config.preset!r}) follows the seed's training protocol ({SEED_PROTOCOL_TEXT}); "
                   "only the device differs, so its accuracies test the seed's directly.")
    lines = [opening, ""]
    lines += [_accuracy_sentence(name, r) for name, r in chosen.items()]
    lines += [_ranking_sentence(chosen), _speed_sentence(chosen, device_label), _overfitting_sentence(chosen, table)]
    return "\n".join(lines)
