"""The seed's reported figures, the seed-vs-this-run table and its sentences (synthetic records, no training)."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
import torch

from report.seed_reference import (
    FINAL_LOSS_ROW,
    INITIAL_LOSS_ROW,
    RUN_COLUMN,
    SEED_COLUMN,
    SEED_REPORTED,
    SEED_TASKS,
    format_seed_vs_run,
    protocol_differences,
    seed_agreement_markdown,
    seed_vs_run_table,
)
from tests.evaluation_support import fake_eval, fake_record, fake_train
from utils.config import PRESETS, resolve_config

SEED_CSV = Path(__file__).resolve().parents[2] / "shared" / "seed" / "comparison_table.csv"
SHARED_CSV = Path("/work/shared/seed/comparison_table.csv")


def _record(name: str, acc: float, its: float, memory: float = 700.0, source: str = "random"):
    """A record whose 600-task accuracy is ``acc`` (per-task accuracies alternate around it) and speed ``its``."""
    after = [acc - 0.05, acc + 0.05] * 300
    record = fake_record(name, fake_train([1.6, 0.9, 0.5], [0.3, 0.6, 0.8], its=its, memory=memory),
                         fake_eval([0.2] * 600, after), source=source)
    record.test_seed = fake_eval([0.2] * 100, [acc] * 100)
    return record


@pytest.fixture
def records():
    return {"S1": _record("S1", 0.7712, 2.0), "S2": _record("S2", 0.90, 3.0),
            "S3": _record("S3", 0.70, 1.0, 1500.0, "ImageNet (torchvision)"),
            "S4": _record("S4", 0.80, 1.5, 1400.0, "Omniglot background, supervised (held-out drawings 87.3%)"),
            "MAML": _record("MAML", 0.5, 0.5)}


@pytest.mark.skipif(not (SEED_CSV.is_file() or SHARED_CSV.is_file()), reason="the seed's CSV is not on this machine")
def test_seed_reported_holds_every_figure_of_the_seed_csv():
    path = SEED_CSV if SEED_CSV.is_file() else SHARED_CSV
    with path.open(newline="") as handle:
        rows = {row["metric"]: row for row in csv.DictReader(handle) if row["metric"] != "protocol"}
    assert set(rows) == set(SEED_REPORTED)
    for metric, row in rows.items():
        for name in ("S1", "S2", "S3", "S4"):
            reported = SEED_REPORTED[metric][name]
            if row[name] == "":
                assert reported is None
            elif isinstance(reported, (int, float)) and not isinstance(reported, bool):
                assert float(row[name]) == pytest.approx(reported), (metric, name)
            else:
                assert row[name] == reported, (metric, name)
        assert SEED_REPORTED[metric].get("note", "") == row["note"]


def test_table_puts_the_seed_beside_this_run_for_every_seed_scenario(records):
    config = PRESETS["seed"]
    table = seed_vs_run_table(records, config, "cuda (NVIDIA H200)")
    assert list(table.columns) == [(n, side) for n in ("S1", "S2", "S3", "S4") for side in (SEED_COLUMN, RUN_COLUMN)]
    assert table.loc[f"Accuracy after adaptation (%, {SEED_TASKS})", ("S4", SEED_COLUMN)] == 90.45
    assert table.loc[f"Accuracy after adaptation (%, {SEED_TASKS})", ("S2", RUN_COLUMN)] == pytest.approx(90.0)
    assert table.loc["Iterations/s", ("S3", RUN_COLUMN)] == 1.0
    assert table.loc["Speed-up vs S1", ("S2", RUN_COLUMN)] == pytest.approx(1.5)  # ratios among S1-S4 only
    assert table.loc["Rank: speed (1 = fastest)", ("S2", RUN_COLUMN)] == 1
    assert table.loc["Peak memory (GiB)", ("S3", RUN_COLUMN)] == pytest.approx(1500 / 1024)
    assert table.loc[INITIAL_LOSS_ROW, ("S1", SEED_COLUMN)] == "~1.6"
    assert table.loc["Parameters: total", ("S4", SEED_COLUMN)] == 11182405
    for label in ("Parameters: BatchNorm", "Loss: best (minimum)", "Training time (s)", "GPU usage (%)",
                  "Memory vs S1", "Accuracy before adaptation (%)", f"Gain (points, {SEED_TASKS})",
                  "Rank: memory (1 = least)", "Params/task (thousands of trainable per training task)",
                  "Meta-overfitting"):
        assert label in table.index
    caption = table.attrs["caption"]
    assert "cuda (NVIDIA H200)" in caption and "'seed'" in caption
    # S4's body is not ImageNet's, so even the seed preset names that difference (and only that one).
    assert table.attrs["protocol_differences"] == [
        "S4 body pretrained on 'Omniglot background, supervised (held-out drawings 87.3%)' (seed: ImageNet)"]
    assert any("double-counts" in note for note in table.attrs["notes"])


def test_caption_says_when_the_protocol_is_not_the_seeds(records):
    quick = resolve_config("quick", torch.device("cpu"))
    table = seed_vs_run_table(records, quick, "cpu (2 threads)")
    assert "NOT the seed's protocol" in table.attrs["caption"] and "image_size 28 (seed: 105)" in table.attrs["caption"]
    assert f"s1_iterations {quick.s1_iterations} (seed: 125)" in protocol_differences(quick)
    assert "meta_batch_size 8 (seed: 16)" in protocol_differences(quick)
    assert protocol_differences(PRESETS["seed"]) == []
    assert "Same training protocol" in seed_vs_run_table({"S1": records["S1"]}, PRESETS["seed"], "x").attrs["caption"]


def test_formatted_table_keeps_shape_and_attrs(records):
    table = seed_vs_run_table(records, PRESETS["seed"], "cpu")
    shown = format_seed_vs_run(table)
    assert shown.shape == table.shape and shown.attrs["caption"] == table.attrs["caption"]
    assert shown.loc["Parameters: total", ("S4", SEED_COLUMN)] == "11,182,405"
    assert shown.loc["Parameters: BatchNorm", ("S1", SEED_COLUMN)] == "n/a"
    assert shown.loc["GPU usage (%)", ("S1", RUN_COLUMN)] == "n/a"  # not measured on a CPU
    assert isinstance(shown, pd.DataFrame)


def test_sentences_follow_the_numbers(records):
    text = seed_agreement_markdown(records, PRESETS["seed"], "cpu (2 threads)")
    lines = {line[2:4]: line for line in text.splitlines() if line.startswith("- S")}
    # S1's 77.12% equals the seed's exactly; S2 is 12.8 points above the seed's 77.19%.
    assert "**agrees**" in lines["S1"] and "77.12%" in lines["S1"]
    assert "**differs**" in lines["S2"] and "12.8 points below this run" in lines["S2"]
    assert "Accuracy ranking: S2 > S4 > S1 > S3 here; this differs from the seed's S4 > S2 > S1 > S3" in text
    assert "Fastest to slowest here: S2 > S1 > S4 > S3; the same order as the seed's" in text
    assert "S2 0.93x" in text  # 3.0 / 3.21
    assert "MAML" not in text
    quick_text = seed_agreement_markdown(records, resolve_config("quick", torch.device("cpu")), "cpu")
    assert "does **not** follow the seed's protocol" in quick_text


def test_no_seed_scenario_is_a_clear_error(records):
    with pytest.raises(ValueError, match="No seed scenario"):
        seed_vs_run_table({"MAML": records["MAML"]}, PRESETS["seed"], "cpu")


def test_both_tables_smooth_the_initial_and_final_losses_the_same_way(records):
    from report.compare import FINAL_LOSS, INITIAL_LOSS, comparison_table

    losses = [3.0] * 5 + [2.0] * 90 + [1.0, 1.2, 0.8, 1.0, 5.0]  # one noisy last iteration
    records["S3"].train = fake_train(losses, [0.5] * 100)
    seed_side = seed_vs_run_table(records, PRESETS["seed"], "cpu")
    compared = comparison_table({name: records[name] for name in ("S1", "S2", "S3", "S4")})
    assert seed_side.loc[INITIAL_LOSS_ROW, ("S3", RUN_COLUMN)] == compared.loc[INITIAL_LOSS, "S3"] == 3.0
    assert seed_side.loc[FINAL_LOSS_ROW, ("S3", RUN_COLUMN)] == compared.loc[FINAL_LOSS, "S3"] == pytest.approx(1.8)
    for label in (INITIAL_LOSS_ROW, FINAL_LOSS_ROW, INITIAL_LOSS, FINAL_LOSS):
        assert "5%" in label and "≥ 5 it." in label  # both labels name the smoothing
    assert "seed: as reported" in INITIAL_LOSS_ROW


def test_the_100_tasks_are_labelled_as_drawn_here(records):
    text = seed_agreement_markdown(records, PRESETS["seed"], "cpu")
    assert "drawn here (the seed's count)" in text and "drawn like the seed's" not in text
    assert "drawn here" in SEED_TASKS
