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
    assert "per-task MAML" in with_loop and "**6.00x**" in with_loop
    assert "1 of them above and 1 below the paper's 1.7x" in with_loop and with_loop.count("1.7x") == 1  # said once
    # MAML trained per task (a CPU): the training ratio is named so, and the batched ratio comes from timed steps.
    cpu = narrative.maml_summary(anil, maml, 2.0, maml_form="per-task", anil_s_per_step=0.5,
                                 batched_maml_s_per_step=3.0)
    assert "MAML per-task (training it/s" in cpu and "both batched (one meta-batch, timed): **6.00x**" in cpu
    assert "per-task MAML (a loop over the tasks, timed separately): **4.00x**" in cpu
    assert "2 of them above and 1 below the paper's 1.7x" in cpu and cpu.count("the paper's") == 1
    # The per-task form (2.0 s) timed faster than the batched one (3.0 s): the form sentence agrees with the rule.
    assert "confirms it is the faster form here (2.000 s against 3.000 s per step)" in cpu
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


def _maml(iterations: int, val: list[tuple[int, float]] | None = None):
    """A MAML record trained ``iterations`` steps, with validations ``(iteration, accuracy)``."""
    history = [{"iteration": i, "acc": acc, "ci": 0.01} for i, acc in val or []]
    return fake_record("MAML", fake_train([1.0] * iterations, [0.5] * iterations, val_history=history),
                       fake_eval([0.2] * 4, [0.8] * 4))


def test_feature_reuse_summary_reads_freezing_and_cka_together():
    both = narrative.feature_reuse_summary(_freezing(-0.005, 0.01), _cka([1.0, 0.999, 0.99, 0.95, 0.45]), _maml(400))
    assert "Both tests agree with the paper" in both
    assert "-0.5 ± 1.0 points against all layers: not distinguishable" in both
    assert "body.block4 0.950; head 0.450" in both and "400 iterations" in both
    disagree = narrative.feature_reuse_summary(_freezing(-0.30, 0.03), _cka([1.0, 1.0, 0.99, 0.93, 0.6]), _maml(10))
    assert "The two tests disagree here" in disagree and "loses 30.0 points" in disagree
    assert "worse than no adaptation at all (NIL)" in disagree  # head only 50% < NIL 70%
    neither = narrative.feature_reuse_summary(_freezing(-0.30, 0.03, nil_acc=0.4),
                                              _cka([1.0, 1.0, 0.992, 0.873, 0.668]), _maml(10))
    assert "Neither test shows complete feature reuse" in neither and "3 of its 4 body layers" in neither
    assert "body.block4 moves (CKA 0.873)" in neither and "a clear drop" in neither
    assert "worse than no adaptation" not in neither


def test_maml_form_sentence_says_when_the_timing_disagrees_with_the_rule():
    # The committed quick run: the rule picked the per-task loop on a CPU, the timing found the batched form faster.
    text = narrative.maml_form_sentence("per-task", batched_s_per_step=1.199, per_task_s_per_step=1.483)
    assert "trained in its per-task form, which the device rule picks" in text
    assert "disagrees: the batched form was faster here (1.199 s against 1.483 s per step)" in text
    assert "the faster one" not in text and "confirms" not in text
    agree = narrative.maml_form_sentence("batched", batched_s_per_step=0.1, per_task_s_per_step=0.3)
    assert "confirms it is the faster form here (0.100 s against 0.300 s per step)" in agree
    assert narrative.maml_form_sentence("batched", None, None).endswith("picks here.")


def test_nil_summary_quotes_the_paper_only_when_nil_is_above_anil():
    above = {"S1": record("S1", B_BEHIND, nil=A), "S2": record("S2", [a - 0.1 for a in A], nil=A)}
    text = narrative.nil_summary(above)
    assert "NIL is above ANIL in every scenario here, as in the ANIL paper" in text
    assert "96.7% against 96.2%, Omniglot 20-way 1-shot" in text
    some = narrative.nil_summary({"S1": record("S1", B_BEHIND, nil=A), "S2": record("S2", A, nil=B_TIED)})
    assert "NIL is above ANIL in S1 here" in some
    for nil_not_above in ({"S1": record("S1", A, nil=B_TIED)}, {"S1": record("S1", A, nil=B_BEHIND)}):
        text = narrative.nil_summary(nil_not_above)
        assert "96.7" not in text and "as in the ANIL paper" not in text


def test_budget_summary_names_what_still_differs_at_equal_iterations():
    def history(points):
        return [{"iteration": i, "acc": statistics.fmean(p), "ci": 0.0, "wall_time_s": t, "per_task": p}
                for i, t, p in points]

    s1 = fake_record("S1", fake_train([1.0] * 100, [0.5] * 100, val_history=history([(100, 24.0, B_TIED)])),
                     fake_eval([0.2], [0.9]))
    s2 = fake_record("S2", fake_train([1.0] * 1400, [0.5] * 1400, val_history=history([(100, 22.0, A)])),
                     fake_eval([0.2], [0.9]))
    text = narrative.budget_summary(s1, s2, schedule="cosine")
    # After 100 of 100 iterations S1's cosine rate is 0; S2, at 100 of 1,400, is still near its full rate.
    assert "the rate stood at S1 0.0%, S2 98.7% of `outer_lr`" in text and "differ in total iterations" in text
    assert "Not an equal budget" not in narrative.budget_summary(s1, s2, schedule="constant")
    assert "Not an equal budget" not in narrative.budget_summary(s1, s2)
    line = narrative.first_vs_second_order(s1, s2)
    assert "the equal-budget comparison of the validation curves is" not in line and "learning rate" in line


def test_feature_reuse_summary_points_at_the_head_initialisation_when_head_only_is_below_nil():
    # The committed quick run: head only 36.0%, NIL 67.6%, all layers 73.8%; block4 moves.
    text = narrative.feature_reuse_summary(_freezing(-0.377, 0.028, nil_acc=0.676),
                                           _cka([1.0, 1.0, 0.992, 0.873, 0.668]), _maml(10))
    assert "Neither test shows complete feature reuse" in text
    assert "learnt initialisation" in text and "not only at rapid learning" in text
    close = narrative.feature_reuse_summary(_freezing(-0.30, 0.03, nil_acc=0.51),  # head 50% ± 2, NIL 51% ± 2
                                            _cka([1.0, 1.0, 0.992, 0.873, 0.668]), _maml(10))
    assert "learnt initialisation" not in close


def test_ablation_summary_reads_s4_below_the_body_without_meta_training():
    untrained = fake_eval([0.2] * 10, A, nil=[a + 0.01 for a in A])
    below = narrative.ablation_summary(B_BEHIND, B_BEHIND, untrained)  # S4 = its frozen-BN twin, 20 points below
    assert below.count("\n- ") == 2 and "NIL on it" in below
    assert "S4 ends below the same frozen body with no meta-training" in below
    assert "learnt head initialisation" in below and "5 inner steps from it end below 5 steps from a zero head" in below
    ahead = narrative.ablation_summary(A, B_TIED, fake_eval([0.2] * 10, B_BEHIND))
    assert "S4 is ahead of the body without meta-training" in ahead and "ends below" not in ahead
    tied = narrative.ablation_summary(A, A, fake_eval([0.2] * 10, B_TIED))
    assert "not distinguishable: the accuracy comes from the pre-training" in tied


# --- The closing summary: built from a synthetic run with the committed quick run's numbers. ---------------------

def _values(mean: float, ci: float, n: int, seed: int) -> list[float]:
    """``n`` per-task values with exactly this mean and 95% half-width (1.96 · sd / √n)."""
    import numpy as np

    z = np.random.default_rng(seed).standard_normal(n)
    z = (z - z.mean()) / z.std(ddof=1)
    return list(mean + ci * math.sqrt(n) / 1.96 * z)


def _below(a: list[float], diff: float, ci: float, seed: int) -> list[float]:
    """Values ``b`` on the same tasks with ``a − b`` = ``diff`` ± ``ci`` (paired)."""
    return [x - d for x, d in zip(a, _values(diff, ci, len(a), seed), strict=True)]


def _quick_run(anil_minus_maml: float = -0.114, cka: tuple[float, ...] = (1.0, 1.0, 0.992, 0.873, 0.668),
               head_drop: float = -0.3772, head_drop_ci: float = 0.0281, nil_acc: float = 0.676):
    """Everything the conclusions cell passes, with the committed quick run's numbers (or the given ones)."""
    import pandas as pd

    from utils.config import resolve_config

    n = 600
    s2 = _values(0.953, 0.005, n, 1)
    after = {"S1": _below(s2, 0.099, 0.008, 2), "S2": s2, "S3": _below(s2, 0.375, 0.012, 3),
             "S4": _below(s2, 0.157, 0.009, 4)}
    nil_gap = {"S1": (-0.006, 0.003), "S2": (-0.006, 0.002), "S3": (-0.035, 0.006), "S4": (-0.056, 0.006)}
    v2 = _values(0.874, 0.03, 100, 5)
    val = {"S1": [{"iteration": 100, "acc": 0.851, "ci": 0.0, "wall_time_s": 24.0, "per_task": _below(v2, 0.023,
                                                                                                       0.022, 6)}],
           "S2": [{"iteration": 100, "acc": 0.874, "ci": 0.0, "wall_time_s": 22.0, "per_task": v2}]}
    budgets = {"S1": (100, 4.11), "S2": (1400, 4.98), "S3": (10, 0.89), "S4": (10, 1.76)}
    records = {}
    for i, (name, values) in enumerate(after.items()):
        iterations, speed = budgets[name]
        records[name] = fake_record(name, fake_train([1.0] * iterations, [0.5] * iterations, its=speed,
                                                     val_history=val.get(name)),
                                    fake_eval([0.2] * n, values, nil=_below(values, *nil_gap[name], 10 + i)))
    s4_analysis = _values(0.795, 0.023, 100, 7)
    records["S4"].test_seed = fake_eval([0.2] * 100, s4_analysis)
    untrained = fake_eval([0.2] * 100, _below(s4_analysis, -0.044, 0.014, 8))
    maml_acc = _values(0.738, 0.026, 100, 9)
    anil = fake_record("ANIL", fake_train([1.0] * 10, [0.5] * 10, its=4.32),
                       fake_eval([0.2] * 100, _below(maml_acc, -anil_minus_maml, 0.026, 14)))
    maml = fake_record("MAML", fake_train([1.0] * 10, [0.5] * 10, its=0.70), fake_eval([0.2] * 100, maml_acc))
    timings = {"per_task_maml_s_per_step": 1.483, "maml_form": "per-task", "anil_s_per_step": 0.169,
               "batched_maml_s_per_step": 1.199}
    freezing = pd.DataFrame(
        {"accuracy": [0.7376, 0.7376 + head_drop, nil_acc], "ci": [0.0265, 0.0226, 0.0263],
         "diff_vs_all layers": [0.0, head_drop, nil_acc - 0.7376], "diff_ci": [0.0, head_drop_ci, 0.0230],
         "distinguishable": [False, abs(head_drop) > head_drop_ci, True]},
        index=["all layers", "head only", "none (NIL)"])
    config = resolve_config("quick", __import__("torch").device("cpu"))
    return (records, anil, maml, timings, freezing, _cka(list(cka)), config), {"untrained": untrained}


def _numbers(text: str) -> list[str]:
    """Every measured number a text states, with its unit: ``95.3%``, ``+9.9``, ``± 0.8``, ``0.873``, ``7.09x``.
    The interval convention's "95% interval" is a definition, not a finding, and is left out."""
    import re

    text = text.replace("95% interval", "")
    return re.findall(r"(?<![\w.])(?:± )?[-+]?\d[\d,]*\.\d+(?:%|x)?", text)


def test_conclusions_are_a_short_summary_of_the_committed_quick_run():
    args, kwargs = _quick_run()
    text = narrative.conclusions(*args, **kwargs)
    points = [line for line in text.splitlines() if line.startswith("- ")]
    assert 5 <= len(points) <= narrative.MAX_CONCLUSIONS == 12
    assert len(text.split()) <= narrative.MAX_CONCLUSION_WORDS <= 360
    numbers = _numbers(text)
    assert len(numbers) > 15 and len(numbers) == len(set(numbers)), sorted(numbers)  # every number once
    assert text.count("paired 95%") == 1 and "paired 95% CI over" not in text  # the interval is defined once
    assert text.count("1.7x") == 1
    # The readings the lecturer asked for, each from the numbers.
    assert "as in the ANIL paper (96.7% against 96.2%" in text  # NIL above ANIL in every scenario
    assert "36.0%" in text and "67.6%" in text and "learnt initialisation" in text  # head only below NIL
    assert "S4 below its pretrained body with a zero head" in text and "-4.4 ± 1.4 points" in text
    assert "tuned on S2's validation tasks" in text and "different learning rates" in text
    assert "per-scenario" not in text and "it/s" not in text  # the tables above hold the per-scenario detail


def test_conclusions_open_with_not_feature_reuse_when_the_numbers_say_so():
    args, kwargs = _quick_run()  # ANIL 11.4 points below MAML, block4 CKA 0.873, freezing costs 37.7 points
    opening = narrative.conclusions(*args, **kwargs).split("\n- ")[1]
    assert opening.startswith("**Rapid learning or feature reuse? Not feature reuse at this budget**")
    assert "ANIL trails MAML (-11.4 ± 2.6 points)" in opening and "body.block4 (CKA 0.873)" in opening
    assert "costs 37.7 ± 2.8 points" in opening
    assert "The trend points the paper's way: 3 of 4 conv blocks are unchanged" in opening
    # The opposite run: ANIL far below MAML, every conv block moves, freezing costly: no trend to point at.
    args, kwargs = _quick_run(anil_minus_maml=-0.2, cka=(0.8, 0.7, 0.6, 0.5, 0.4))
    opening = narrative.conclusions(*args, **kwargs).split("\n- ")[1]
    assert "Not feature reuse at this budget" in opening and "trend" not in opening
    # Mixed: ANIL matches MAML, but the body moves and freezing costs: not clearly feature reuse.
    args, kwargs = _quick_run(anil_minus_maml=0.004)
    opening = narrative.conclusions(*args, **kwargs).split("\n- ")[1]
    assert "Not clearly feature reuse at this budget" in opening and "ANIL matches MAML" in opening


def test_conclusions_open_with_feature_reuse_when_anil_matches_cka_is_one_and_freezing_is_cheap():
    args, kwargs = _quick_run(anil_minus_maml=0.004, cka=(1.0, 0.999, 0.996, 0.98, 0.5), head_drop=-0.004,
                              head_drop_ci=0.01, nil_acc=0.72)
    text = narrative.conclusions(*args, **kwargs)
    opening = text.split("\n- ")[1]
    assert opening.startswith("**Rapid learning or feature reuse? Feature reuse**, as the ANIL paper found")
    assert "Not" not in opening and "ANIL matches MAML" in opening and "costs nothing measurable" in opening
    assert "barely moves its conv blocks (CKA ≥ 0.980)" in opening
    assert "MAML's head adapted alone" not in text  # head only (73.4%) is not below NIL (72.0%) here
    numbers = _numbers(text)
    assert len(numbers) == len(set(numbers)) and len(text.split()) <= narrative.MAX_CONCLUSION_WORDS


def test_feature_reuse_summary_calls_a_levelled_maml_converged_and_a_rising_one_a_trend():
    freezing, cka = _freezing(-0.30, 0.03), _cka([1.0, 1.0, 0.99, 0.93, 0.6])
    levelled = narrative.feature_reuse_summary(freezing, cka, _maml(1000, [(800, 0.900), (900, 0.903), (1000, 0.904)]))
    assert "until its validation curve levelled off (+0.40 points over iterations 800–1,000)" in levelled
    assert "converged model's figures" in levelled and "trend" not in levelled
    rising = narrative.feature_reuse_summary(freezing, cka, _maml(1000, [(800, 0.880), (1000, 0.900)]))
    assert "had not levelled off" in rising and "shows a trend" in rising
    assert "had not levelled off" in narrative.feature_reuse_summary(freezing, cka, _maml(10))  # no validations


def test_convergence_summary_applies_the_rule_to_each_curve():
    def rec(name, val):
        steps = val[-1][0]
        return fake_record(name, fake_train([1.0] * steps, [0.5] * steps,
                                            val_history=[{"iteration": i, "acc": a, "ci": 0.0} for i, a in val]),
                           fake_eval([0.2], [0.9]))

    text = narrative.convergence_summary({
        "S1": rec("S1", [(50, 0.90), (800, 0.970), (1000, 0.9745)]),
        "S2": rec("S2", [(1600, 0.960), (2000, 0.970)]),
        "S3": rec("S3", [(150, 0.80), (200, 0.79)]),
        "S4": rec("S4", [(10, 0.75)]),
    })
    assert "the last 20% of the iterations gain under 0.5 point" in text
    assert "- S1: 97.00% after 800 iterations, 97.45% after 1,000: +0.45 points, levelled off." in text
    assert "- S2: 96.00% after 1,600 iterations, 97.00% after 2,000: +1.00 points, still rising" in text
    assert "- S3: 80.00% after 150 iterations, 79.00% after 200: -1.00 points, falling" in text
    assert "- S4: too few validations to tell (1 in 10 iterations)." in text
    # With per-task validation accuracies the gain gets its paired interval, and a drop inside it is noise.
    noisy = [{"iteration": 800, "acc": 0.96, "ci": 0.0, "per_task": [1.0] * 6 + [0.9] * 4},
             {"iteration": 1000, "acc": 0.95, "ci": 0.0, "per_task": [0.9] * 5 + [1.0] * 5}]
    steady = [{"iteration": 800, "acc": 0.96, "ci": 0.0, "per_task": [0.96] * 10},
              {"iteration": 1000, "acc": 0.95, "ci": 0.0, "per_task": [0.95] * 10}]
    records = {"A": rec("A", [(800, 0.96), (1000, 0.95)]), "B": rec("B", [(800, 0.96), (1000, 0.95)])}
    records["A"].train.val_history, records["B"].train.val_history = noisy, steady
    text = narrative.convergence_summary(records)
    half = 100 * paired_difference(noisy[1]["per_task"], noisy[0]["per_task"])[1]
    assert half > 1.0  # tasks that swap between right and wrong: a wide interval
    assert (f"- A: 96.00% after 800 iterations, 95.00% after 1,000: -1.00 points (paired 95% interval ± {half:.2f}), "
            "levelled off (the drop lies inside the paired interval") in text
    assert ("- B: 96.00% after 800 iterations, 95.00% after 1,000: -1.00 points (paired 95% interval ± 0.00), "
            "falling: more iterations would not help.") in text


def test_conclusions_of_a_run_whose_curves_levelled_off_drop_the_short_run_caveats():
    args, kwargs = _quick_run(anil_minus_maml=0.004)
    records, maml = args[0], args[2]
    flat = [{"iteration": i, "acc": 0.9, "ci": 0.01} for i in (800, 1000)]
    for r in (*records.values(), maml):
        r.train.val_history = flat
    text = narrative.conclusions(*args, **kwargs)
    opening = text.split("\n- ")[1]
    assert "at this budget" not in opening and "its validation curve levelled off" in opening
    assert "every validation curve levelled off" in text and "trends" not in text
    records["S3"].train.val_history = [{"iteration": i, "acc": a, "ci": 0.01} for i, a in ((8, 0.5), (10, 0.6))]
    text = narrative.conclusions(*args, **kwargs)
    assert "S3 had not levelled off" in text and "its numbers are trends" in text
    # Converged, CKA near 1, yet freezing costs: the opening says where it departs from the paper, and why it may.
    args, kwargs = _quick_run(cka=(1.0, 0.999, 0.996, 0.98, 0.5))
    for r in (*args[0].values(), args[2]):
        r.train.val_history = flat
    text = narrative.conclusions(*args, **kwargs)
    opening = text.split("\n- ")[1]
    assert "barely moves its conv blocks (CKA ≥ 0.980)" in opening and "costs 37.7 ± 2.8 points" in opening
    assert "Freezing departs from the paper, perhaps because" in opening and "γ and β" in opening
    assert len(text.split()) <= narrative.MAX_CONCLUSION_WORDS
