"""Generated sentences: every comparison is backed by a paired interval, and overlap reads "not distinguishable".

Pure logic on hand-made records; the per-task accuracies are chosen so that the paired interval is known.
"""

from __future__ import annotations

import math
import statistics

import pytest
from evaluation_support import fake_eval, fake_record, fake_train

from evaluation.evaluate import paired_difference
from report import narrative

# 10 tasks; B is A plus noise of mean 0.01 and large spread: the paired interval contains 0.
A = [0.90, 0.80, 1.00, 0.70, 0.90, 0.80, 1.00, 0.90, 0.80, 0.90]
B_TIED = [0.80, 1.00, 0.90, 0.80, 0.80, 0.90, 0.90, 1.00, 0.70, 1.00]
B_BEHIND = [a - 0.2 for a in A]  # every task 0.2 lower: an interval of width 0 around +0.2


def test_paired_difference_is_the_interval_of_the_per_task_differences():
    mean, half = paired_difference(A, B_TIED)
    diffs = [a - b for a, b in zip(A, B_TIED, strict=True)]
    assert mean == pytest.approx(statistics.fmean(diffs))
    assert half == pytest.approx(1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs)))
    assert paired_difference(A, B_BEHIND) == (pytest.approx(0.2), pytest.approx(0.0, abs=1e-12))
    with pytest.raises(ValueError, match="same tasks"):
        paired_difference(A, A[:-1])


def record(name: str, after: list[float], nil: list[float] | None = None, iterations: int = 10, its: float = 5.0):
    return fake_record(name, fake_train([1.0] * iterations, [0.5] * iterations, its=its),
                       fake_eval([0.2] * len(after), after, nil=nil))


def test_overlapping_intervals_say_not_distinguishable_and_clear_ones_name_the_better():
    tied = narrative.paired_verdict("S2", "S1", A, B_TIED)
    assert "not distinguishable" in tied and "more accurate" not in tied
    clear = narrative.paired_verdict("S1", "S2", B_BEHIND, A)
    assert "S2 is more accurate than S1" in clear and "-20.0 ± 0.0 points" in clear


def test_most_accurate_names_the_scenarios_it_cannot_be_told_from():
    records = {"S1": record("S1", B_TIED), "S2": record("S2", A), "S3": record("S3", B_BEHIND)}
    summary = narrative.comparison_summary(records)
    most = next(line for line in summary.splitlines() if line.startswith("- Most accurate"))
    assert "**S1**" in most and "not distinguishable from S2" in most and "Ahead of: S3" in most  # S1: 88%, S2: 87%
    assert "Memory: not ranked" in summary and "Least memory" not in summary  # CPU RSS ranks the run order


def test_first_vs_second_order_states_unequal_budgets_and_uses_paired_intervals():
    records = {"S1": record("S1", B_TIED, iterations=400), "S2": record("S2", A, iterations=1200, its=6.0)}
    line = narrative.first_vs_second_order(records["S1"], records["S2"])
    assert "not distinguishable" in line and "3.0x the iterations" in line and "budgets differ" in line
    equal = narrative.first_vs_second_order(record("S1", B_BEHIND), record("S2", A))
    assert "equal budget" in equal and "S2 is more accurate than S1" in equal


def test_nil_summary_is_paired_per_scenario():
    records = {"S1": record("S1", A, nil=B_TIED), "S4": record("S4", B_BEHIND, nil=A)}
    lines = narrative.nil_summary(records).splitlines()
    assert "not distinguishable" in lines[0]
    assert "NIL is more accurate than ANIL" in lines[1]
    assert "not distinguishable" in narrative.scenario_summary(records["S1"])


def test_scenario_summary_quotes_smoothed_losses():
    losses = [3.0] * 5 + [2.0] * 90 + [1.0, 1.2, 0.8, 1.0, 5.0]
    r = fake_record("S4", fake_train(losses, [0.5] * 100), fake_eval([0.2] * 3, [0.7] * 3))
    text = narrative.scenario_summary(r)
    assert "from 3.000 to 1.800" in text and "last 5 iterations" in text


def test_maml_summary_reports_both_ratios_against_the_paper():
    anil = fake_record("ANIL", fake_train([1.0] * 30, [0.5] * 30, its=3.0), fake_eval([0.2] * 10, B_TIED))
    maml = fake_record("MAML", fake_train([1.0] * 30, [0.5] * 30, its=2.0), fake_eval([0.2] * 10, A))
    text = narrative.maml_summary(anil, maml)
    assert "both batched" in text and "**1.50x**" in text and "below the paper's 1.7x" in text
    assert "per-task MAML" not in text and "not distinguishable" in text
    assert "saves most" not in text
    with_loop = narrative.maml_summary(anil, maml, per_task_maml_s_per_step=2.0)  # 0.5 it/s: 6x slower than ANIL
    assert "per-task MAML" in with_loop and "**6.00x**" in with_loop and "above the paper's 1.7x" in with_loop
    # MAML trained per task (a CPU): the training ratio is named so, and the batched ratio comes from timed steps.
    cpu = narrative.maml_summary(anil, maml, 2.0, maml_form="per-task", anil_s_per_step=0.5,
                                 batched_maml_s_per_step=3.0)
    assert "MAML per-task (training it/s" in cpu and "both batched (one meta-batch, timed): **6.00x**" in cpu
    assert "per-task MAML (a loop over the tasks, timed separately): **4.00x**" in cpu
    # Without a batched timing there is no batched ratio to check against the seed's claim.
    assert "The batched ratio" not in narrative.maml_summary(anil, maml, maml_form="per-task")


def test_budget_summary_at_equal_iterations_and_time():
    def history(points):
        return [{"iteration": i, "acc": statistics.fmean(p), "ci": 0.0, "wall_time_s": t, "per_task": p}
                for i, t, p in points]

    s1 = fake_record("S1", fake_train([1.0] * 400, [0.5] * 400, val_history=history([(300, 52.0, B_TIED)])),
                     fake_eval([0.2], [0.9]))
    s2 = fake_record("S2", fake_train([1.0] * 1200, [0.5] * 1200,
                                      val_history=history([(300, 45.0, A), (600, 90.0, A)])),
                     fake_eval([0.2], [0.9]))
    lines = narrative.budget_summary(s1, s2).splitlines()
    assert lines[0].startswith("- Equal iterations, after 300 iterations each") and "not distinguishable" in lines[0]
    assert "S1 after 300 iterations (52 s), S2 after 300 (45 s)" in lines[1]


def test_curve_summary_no_longer_ranks_by_the_one_step_share():
    r = record("S1", A)
    r.adaptation_curve = [0.2, 0.21, 0.9]
    text = narrative.curve_summary({"S1": r})
    assert "of the total gain" not in text and "initialisation" in text and "NIL" in text


def _freezing(head_diff: float, head_ci: float, nil_acc: float = 0.70):
    import pandas as pd

    head_acc = 0.80 + head_diff
    return pd.DataFrame(
        {"accuracy": [0.80, head_acc, nil_acc], "ci": [0.02, 0.02, 0.02],
         "diff_vs_all layers": [0.0, head_diff, nil_acc - 0.80], "diff_ci": [0.0, head_ci, 0.02],
         "distinguishable": [False, abs(head_diff) > head_ci, abs(nil_acc - 0.80) > 0.02]},
        index=["all layers", "head only", "none (NIL)"])


def _cka(values):
    import pandas as pd

    return pd.DataFrame({"cka": values}, index=["body.block1", "body.block2", "body.block3", "body.block4", "head"])


def test_feature_reuse_summary_reads_freezing_and_cka_together():
    both = narrative.feature_reuse_summary(_freezing(-0.005, 0.01), _cka([1.0, 0.999, 0.99, 0.95, 0.45]), 400)
    assert "Both tests agree with the paper" in both
    assert "-0.5 ± 1.0 points against all layers: not distinguishable" in both
    assert "body.block4 0.950; head 0.450" in both and "400 iterations" in both
    disagree = narrative.feature_reuse_summary(_freezing(-0.30, 0.03), _cka([1.0, 1.0, 0.99, 0.93, 0.6]), 10)
    assert "The two tests disagree here" in disagree and "loses 30.0 points" in disagree
    assert "worse than no adaptation at all (NIL)" in disagree  # head only 50% < NIL 70%
    neither = narrative.feature_reuse_summary(_freezing(-0.30, 0.03, nil_acc=0.4),
                                              _cka([1.0, 1.0, 0.992, 0.873, 0.668]), 10)
    assert "Neither test shows complete feature reuse" in neither and "3 of its 4 body layers" in neither
    assert "body.block4 moves (CKA 0.873)" in neither and "a clear drop" in neither
    assert "worse than no adaptation" not in neither
