"""Sentences written from measured results, so the notebook's prose can never contradict its outputs.

The ANIL paper (Raghu et al., ICLR 2020, arXiv:1909.09157) asks whether MAML's accuracy comes from rapid learning
in the inner loop or from reusing features learnt by the outer loop. Each function here reads results and
returns Markdown that states what was measured, with the numbers, and compares it with the claims of the paper
and of the seed notebook (the seed: "ANIL is 3-10x faster than MAML and reaches 95-98% of its accuracy").

Every comparison of two accuracies is a **paired** comparison on the same tasks
(:func:`evaluation.evaluate.paired_difference`): the mean per-task difference with its 95% interval. When the
interval contains 0 the sentence says the two are "not distinguishable", whatever the sign of the mean. Training
speeds come from one run each and carry no interval; they are reported as measured, never ranked more finely than
that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from evaluation.evaluate import paired_difference
from evaluation.feature_reuse import FREEZING_COLUMNS
from report.compare import (
    ScenarioRecord,
    comparable_memory,
    equal_budget_points,
    loss_window_size,
    smoothed_loss,
)

SEED_SPEEDUP = (3.0, 10.0)  # the seed's claimed ANIL-over-MAML training speed-up
SEED_ACC_RATIO = (0.95, 0.98)  # the seed's claimed ANIL/MAML accuracy ratio
PAPER_SPEEDUP = 1.7  # the ANIL paper's measured training speed-up of ANIL over MAML
NOT_DISTINGUISHABLE = "not distinguishable"


def pct(value: float) -> str:
    """``0.9634`` -> ``"96.3%"``."""
    return f"{100 * value:.1f}%"


def paired_clause(name_a: str, name_b: str, a: Sequence[float], b: Sequence[float]) -> tuple[str, float, bool]:
    """``"S2 − S1 = +1.3 ± 0.9 points, paired 95% CI over 600 tasks"``, the mean difference, and whether the
    interval excludes 0.

    Args:
        name_a: name of the first method.
        name_b: name of the second method.
        a: per-task accuracies of ``name_a``.
        b: per-task accuracies of ``name_b`` on the same tasks.
    """
    mean, half = paired_difference(a, b)
    distinguishable = abs(mean) > half  # a NaN half-width (one task) compares False: never distinguishable
    text = f"{name_a} − {name_b} = {100 * mean:+.1f} ± {100 * half:.1f} points, paired 95% CI over {len(a):,} tasks"
    return text, mean, distinguishable


def paired_verdict(name_a: str, name_b: str, a: Sequence[float], b: Sequence[float]) -> str:
    """One sentence: which of two methods is more accurate on the same tasks, or that they are not distinguishable."""
    clause, mean, distinguishable = paired_clause(name_a, name_b, a, b)
    if not distinguishable:
        return f"{clause}: the interval contains 0, so the two are {NOT_DISTINGUISHABLE} on these tasks."
    better, worse = (name_a, name_b) if mean > 0 else (name_b, name_a)
    return f"{clause}: {better} is more accurate than {worse}."


def scenario_summary(record: ScenarioRecord) -> str:
    """One paragraph on a trained scenario: cost, smoothed loss, accuracy before/after adaptation, NIL."""
    t, e = record.train, record.test
    nil = ""
    if e.per_task_nil is not None:
        verdict = paired_verdict("ANIL", "NIL", e.per_task_after, e.per_task_nil)
        nil = f" Without any inner loop (NIL) the same body scores {pct(e.nil_acc)}; {verdict}"
    stopped = " Training was interrupted early." if t.interrupted else ""
    window = loss_window_size(len(t.losses))
    return (
        f"**{record.label}** ran {t.iterations_done:,} meta-iterations in {t.wall_time_s:,.1f} s "
        f"({t.iterations_per_s:.2f} it/s on {t.device}). The query loss, averaged over the first and the last "
        f"{window:,} iterations, went from {smoothed_loss(t.losses, 'first'):.3f} to "
        f"{smoothed_loss(t.losses, 'last'):.3f}. On {e.num_tasks:,} tasks from unseen alphabets the "
        f"accuracy is {pct(e.acc_before)} before adaptation (chance is {pct(1 / e.n_way)}) and "
        f"{pct(e.acc_after)} ± {pct(e.ci_after)} after {e.steps} inner steps, a gain of "
        f"{100 * e.gain:+.1f} ± {100 * e.gain_ci:.1f} points.{nil}{stopped}"
    )


def _same_tasks(records: Mapping[str, ScenarioRecord]) -> bool:
    return len({r.test.num_tasks for r in records.values()}) == 1


def _most_accurate(records: Mapping[str, ScenarioRecord]) -> str:
    """The most accurate scenario, with every scenario not distinguishable from it on the same tasks."""
    best = max(records, key=lambda name: records[name].test.acc_after)
    r_best = records[best]
    head = f"- Most accurate: **{best}** with {pct(r_best.test.acc_after)} ± {pct(r_best.test.ci_after)}"
    if len(records) == 1 or not _same_tasks(records):
        return head + "."
    ties, behind = [], []
    for name, r in records.items():
        if name == best:
            continue
        clause, _, distinguishable = paired_clause(best, name, r_best.test.per_task_after, r.test.per_task_after)
        (behind if distinguishable else ties).append(f"{name} ({clause})")
    if not ties:
        return head + f", ahead of every other scenario: {'; '.join(behind)}."
    return (
        head + f", but it is {NOT_DISTINGUISHABLE} from {'; '.join(ties)}: the paired intervals contain 0, so "
        f"these tests do not separate them." + (f" Ahead of: {'; '.join(behind)}." if behind else "")
    )


def _memory_line(records: Mapping[str, ScenarioRecord]) -> str:
    memory = {name: comparable_memory(r) for name, r in records.items()}
    if any(value is None for value in memory.values()):
        return (
            "- Memory: not ranked. On a CPU the figure is the whole notebook process's peak resident set, which "
            "only grows as the scenarios run one after another, so it would rank the run order, not the methods."
        )
    lean = min(memory, key=memory.get)
    return f"- Least memory: **{lean}** at {memory[lean]:,.0f} MB (CUDA max allocated, reset per scenario)."


def first_vs_second_order(s1: ScenarioRecord, s2: ScenarioRecord) -> str:
    """S1 (second order) against S2 (first order) on the test tasks, stating both training budgets."""
    t1, t2 = s1.train, s2.train
    verdict = paired_verdict("S2", "S1", s2.test.per_task_after, s1.test.per_task_after)
    line = (
        f"- First order (S2) runs {t2.iterations_per_s / t1.iterations_per_s:.2f}x the iterations per second of "
        f"second order (S1). On the test tasks, {verdict}"
    )
    if t1.iterations_done == t2.iterations_done:
        return line + f" Both trained for {t1.iterations_done:,} iterations, an equal budget in iterations."
    return line + (
        f" The budgets differ: S1 trained for {t1.iterations_done:,} iterations ({t1.wall_time_s:,.0f} s) and S2 "
        f"for {t2.iterations_done:,} ({t2.wall_time_s:,.0f} s), {t2.iterations_done / t1.iterations_done:.1f}x "
        f"the iterations and {t2.wall_time_s / t1.wall_time_s:.1f}x the training time, so this is not a comparison "
        "of the gradient's order alone; the equal-budget comparison of the validation curves is."
    )


def comparison_summary(records: Mapping[str, ScenarioRecord]) -> str:
    """Which scenario is most accurate (with paired intervals), fastest, leanest where that can be measured."""
    fast = max(records, key=lambda name: records[name].train.iterations_per_s)
    lines = [
        _most_accurate(records),
        f"- Fastest per outer iteration: **{fast}** at {records[fast].train.iterations_per_s:.2f} it/s "
        "(one timed run each; an iteration of a ResNet18 scenario is not the same work as one of conv4).",
        _memory_line(records),
    ]
    if "S1" in records and "S2" in records:
        lines.append(first_vs_second_order(records["S1"], records["S2"]))
    return "\n".join(lines)


def budget_summary(a: ScenarioRecord, b: ScenarioRecord) -> str:
    """Two scenarios at equal iterations and at equal training time, from their validation histories.

    The validation tasks are the same for every scenario, so each comparison is paired when per-task validation
    accuracies were recorded.
    """
    points = equal_budget_points(a.train, b.train)
    lines = []
    for kind, pair in points.items():
        if pair is None:
            what = "iteration count" if kind == "iterations" else "training time (no validation times recorded)"
            lines.append(f"- Equal {kind}: the two runs share no validated {what}.")
            continue
        pa, pb = pair
        budget = (
            f"after {pa.iteration:,} iterations each"
            if kind == "iterations"
            else f"with at most {max(pa.wall_time_s, pb.wall_time_s):,.0f} s of training: {a.name} after "
            f"{pa.iteration:,} iterations ({pa.wall_time_s:,.0f} s), {b.name} after {pb.iteration:,} "
            f"({pb.wall_time_s:,.0f} s)"
        )
        if pa.per_task is not None and pb.per_task is not None:
            verdict = paired_verdict(a.name, b.name, pa.per_task, pb.per_task)
        else:
            verdict = f"{a.name} − {b.name} = {100 * (pa.acc - pb.acc):+.1f} points (no per-task values: no interval)."
        lines.append(
            f"- Equal {kind}, {budget}: validation accuracy {a.name} {pct(pa.acc)}, {b.name} {pct(pb.acc)}; {verdict}"
        )
    return "\n".join(lines)


def nil_summary(records: Mapping[str, ScenarioRecord]) -> str:
    """NIL against ANIL per scenario, paired on the same test tasks: how much does the head's inner loop add?"""
    lines = []
    for name, r in records.items():
        if r.test.per_task_nil is None:
            continue
        verdict = paired_verdict("ANIL", "NIL", r.test.per_task_after, r.test.per_task_nil)
        lines.append(f"- {name}: ANIL {pct(r.test.acc_after)}, NIL {pct(r.test.nil_acc)}; {verdict}")
    return "\n".join(lines)


def curve_summary(records: Mapping[str, ScenarioRecord]) -> str:
    """The adaptation curve's values, and what its shape does and does not show."""
    lines = []
    for name, r in records.items():
        curve = r.adaptation_curve
        if not curve or len(curve) < 2:
            continue
        lines.append(
            f"- {name}: {pct(curve[0])} at 0 steps, {pct(curve[1])} after 1 step, {pct(curve[-1])} after "
            f"{len(curve) - 1} steps."
        )
    if lines:
        lines.append(
            "\nHow fast the curve rises says how the *head* is set up, not how good the body's features are: what "
            "one step achieves depends on the head's learnt initialisation and on the inner learning rate, which "
            "differ between scenarios (from a zero head, one step is already a prototype classifier). Whether "
            "the features carry the accuracy is what NIL, which has no head at all, measures."
        )
    return "\n".join(lines)


def _speed_sentence(name: str, speedup: float) -> str:
    relation = "above" if speedup > PAPER_SPEEDUP else "below" if speedup < PAPER_SPEEDUP else "equal to"
    saving = f"a saving of {pct(1 - 1 / speedup)}" if speedup >= 1 else "so ANIL is the slower one here"
    return (
        f"{name}: **{speedup:.2f}x** (ANIL's outer iteration takes {pct(1 / speedup)} of MAML's time, {saving}; "
        f"{relation} the paper's {PAPER_SPEEDUP}x, a saving of about {100 * (1 - 1 / PAPER_SPEEDUP):.0f}%)"
    )


def maml_summary(anil: ScenarioRecord, maml: ScenarioRecord, per_task_maml_s_per_step: float | None = None, *,
                 maml_form: str = "batched", anil_s_per_step: float | None = None,
                 batched_maml_s_per_step: float | None = None) -> str:
    """ANIL against MAML on the same tasks and iterations, checked against the seed's and the paper's claims.

    Args:
        anil: ANIL at MAML's budget (same iterations, same test tasks and test inner steps).
        maml: the MAML record.
        per_task_maml_s_per_step: seconds per outer step of MAML written as a loop over tasks (as MAML is
            usually written), timed separately; adds the "per-task" ratio when given.
        maml_form: the form MAML was trained in (``"batched"`` or ``"per-task"``), named in the training ratio.
        anil_s_per_step: ANIL's seconds per outer step, timed like the MAML figures (same meta-batch); the timed
            ratios then use it instead of ANIL's training it/s.
        batched_maml_s_per_step: seconds per outer step of MAML batched over tasks, timed on the same meta-batch;
            adds the "both batched" ratio when MAML did not train batched.
    """
    as_trained = anil.train.iterations_per_s / maml.train.iterations_per_s
    anil_s = anil_s_per_step if anil_s_per_step is not None else 1 / anil.train.iterations_per_s
    trained = ("both batched" if maml_form == "batched" else f"MAML {maml_form}") + " (training it/s of both records)"
    ratios = [_speed_sentence(f"ANIL vs MAML, {trained}", as_trained)]
    batched = as_trained if maml_form == "batched" else None  # the algorithm's cost: both sides batched
    if batched_maml_s_per_step is not None and maml_form != "batched":
        batched = batched_maml_s_per_step / anil_s
        ratios.append(_speed_sentence("ANIL vs MAML, both batched (one meta-batch, timed)", batched))
    if per_task_maml_s_per_step is not None:
        per_task = per_task_maml_s_per_step / anil_s
        ratios.append(_speed_sentence("ANIL vs per-task MAML (a loop over the tasks, timed separately)", per_task))
    seed_check = "" if batched is None else (
        f" The batched ratio is {'inside' if SEED_SPEEDUP[0] <= batched <= SEED_SPEEDUP[1] else 'outside'} the "
        f"seed's claimed {SEED_SPEEDUP[0]:.0f}-{SEED_SPEEDUP[1]:.0f}x.")
    ratio = anil.test.acc_after / maml.test.acc_after
    in_seed_acc = SEED_ACC_RATIO[0] <= ratio <= SEED_ACC_RATIO[1]
    verdict = paired_verdict("ANIL", "MAML", anil.test.per_task_after, maml.test.per_task_after)
    return (
        f"Measured on the same {anil.train.iterations_done:,} meta-iterations of the same tasks, on "
        f"{anil.train.device}: ANIL runs at {anil.train.iterations_per_s:.2f} it/s and MAML at "
        f"{maml.train.iterations_per_s:.2f} it/s. Speed-ups: " + "; ".join(ratios) + f".{seed_check} "
        f"Accuracy after {anil.test.steps} test inner steps: ANIL {pct(anil.test.acc_after)} ± "
        f"{pct(anil.test.ci_after)}, MAML {pct(maml.test.acc_after)} ± {pct(maml.test.ci_after)}; {verdict} "
        f"ANIL/MAML = **{pct(ratio)}** (the seed claims {pct(SEED_ACC_RATIO[0])}-{pct(SEED_ACC_RATIO[1])}: "
        f"{'inside' if in_seed_acc else 'outside'} that range)."
    )


BODY_REUSE_CKA = 0.9  # lowest body-layer CKA still read as "representation almost unchanged" (the paper's ~1)
UNCHANGED_CKA = 0.99  # a layer whose CKA is at least this is read as essentially unchanged
FREEZING_DIFF = f"diff_vs_{FREEZING_COLUMNS[0]}"  # paired_summary's difference column


def _freezing_clause(row: Any, name: str) -> str:
    diff, ci = 100 * row[FREEZING_DIFF], 100 * row["diff_ci"]
    verdict = "a clear drop" if row["distinguishable"] and diff < 0 else (
        "a clear gain" if row["distinguishable"] else NOT_DISTINGUISHABLE)
    return f"{name} {pct(row['accuracy'])} ({diff:+.1f} ± {ci:.1f} points against all layers: {verdict})"


def feature_reuse_summary(freezing: pd.DataFrame, cka: pd.DataFrame, maml_iterations: int) -> str:
    """Test-time freezing and per-layer CKA of a trained MAML read together, with the numbers (the ANIL paper's
    two tests of feature reuse).

    Args:
        freezing: :func:`evaluation.feature_reuse.paired_summary` of the freezing accuracies: rows
            ``"all layers"``, ``"head only"``, ``"none (NIL)"``; columns ``accuracy``, ``ci``, the paired
            difference from ``"all layers"``, ``diff_ci``, ``distinguishable``.
        cka: :func:`evaluation.feature_reuse.layer_cka`: one row per layer (the body's, then ``"head"``), ``cka``.
        maml_iterations: MAML's outer iterations (a short run gives a trend, not the paper's converged result).
    """
    head, nil = freezing.loc["head only"], freezing.loc["none (NIL)"]
    body = cka["cka"].drop("head")
    everything = pct(freezing.loc[FREEZING_COLUMNS[0], "accuracy"])
    facts = (
        f"Test-time freezing of the trained MAML: adapting every layer gives {everything}, "
        f"{_freezing_clause(head, 'the head only')}, {_freezing_clause(nil, 'nothing (NIL)')}. Linear CKA before "
        f"against after its inner loop: " + ", ".join(f"{name} {value:.3f}" for name, value in body.items())
        + f"; head {cka.loc['head', 'cka']:.3f}."
    )
    cka_reuse = body.min() >= BODY_REUSE_CKA and cka.loc["head", "cka"] < body.min()
    freezing_reuse = not (head["distinguishable"] and head[FREEZING_DIFF] < 0)
    worse_than_nil = head["accuracy"] < nil["accuracy"]
    if cka_reuse and freezing_reuse:
        reading = ("Both tests agree with the paper: the inner loop leaves the body's representations almost "
                   "unchanged and learns in the head, and freezing the body at test time costs nothing measurable, "
                   "so MAML's accuracy comes from reusing its features.")
    elif cka_reuse:
        reading = (
            f"The two tests disagree here. CKA says the inner loop barely moves the body's representations (lowest "
            f"body layer {body.min():.3f}); freezing says those small moves still matter: adapting the head alone "
            f"loses {-100 * head[FREEZING_DIFF]:.1f} points"
            + (", and does worse than no adaptation at all (NIL)" if worse_than_nil else "") + ". A head adapted "
            "alone from MAML's initialisation is not ANIL trained as ANIL: MAML learnt that initialisation for an "
            "inner loop that also moves the body, BatchNorm's γ and β included."
        )
    elif freezing_reuse:
        reading = (f"The two tests disagree here: freezing the body costs nothing measurable, yet CKA shows its "
                   f"representations changing in the inner loop (lowest body layer {body.min():.3f}).")
    else:
        still = [name for name, value in body.items() if value >= UNCHANGED_CKA]
        kept = (f"{len(still)} of its {len(body)} body layers are essentially unchanged (CKA ≥ {UNCHANGED_CKA})"
                if still else "no body layer is unchanged")
        reading = (f"Neither test shows complete feature reuse in this MAML: {kept}, but {body.idxmin()} moves "
                   f"(CKA {body.min():.3f}) along with the head, and freezing the body costs accuracy.")
    return (f"{facts} {reading} MAML trained for {maml_iterations:,} iterations here; the paper's finding (body "
            "almost unchanged, freezing nearly free) is about converged models, so a short run shows a trend.")
