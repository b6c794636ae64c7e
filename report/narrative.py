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

from evaluation.curves import LEVEL_FRACTION, LEVEL_POINTS, Levelling, levelled_off
from evaluation.evaluate import EvalResult, paired_difference
from evaluation.feature_reuse import FREEZING_COLUMNS
from experiments.training import outer_lr_factor
from report.compare import (
    ScenarioRecord,
    comparable_memory,
    equal_budget_points,
    loss_window_size,
    smoothed_loss,
)
from report.seed_reference import SEED_REPORTED, protocol_differences

SEED_SPEEDUP = (3.0, 10.0)  # the seed's claimed ANIL-over-MAML training speed-up
SEED_ACC_RATIO = (0.95, 0.98)  # the seed's claimed ANIL/MAML accuracy ratio
PAPER_SPEEDUP = 1.7  # the ANIL paper's measured training speed-up of ANIL over MAML
# The ANIL paper's NIL-testing table, Omniglot 20-way 1-shot: NIL at or above ANIL (percent).
PAPER_NIL = {"setting": "Omniglot 20-way 1-shot", "anil": 96.2, "nil": 96.7}
# The presets whose hyperparameters were chosen on one scenario's validation tasks (benchmarks/tune_quick.py).
TUNED_ON = {"quick": "S2", "full": "S2"}  # full reuses quick's settings
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
        "of the gradient's order alone. The validation curves compare them at equal iterations and at equal time, "
        "where an annealed learning rate still differs between the two."
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


def _schedule_line(a: ScenarioRecord, b: ScenarioRecord, iteration: int, schedule: str) -> str | None:
    """What still differs between two runs compared after ``iteration`` iterations each: the outer learning rate,
    when it is annealed over each run's own length; ``None`` when it is the same for both."""
    factors = {r.name: outer_lr_factor(schedule, iteration, r.train.iterations_planned or r.train.iterations_done)
               for r in (a, b)}
    if abs(factors[a.name] - factors[b.name]) < 0.005:
        return None
    rates = ", ".join(f"{name} {pct(factor)}" for name, factor in factors.items())
    return (f"- Not an equal budget in everything: each run anneals its outer learning rate ({schedule}) over its own "
            f"length, so after {iteration:,} iterations the rate stood at {rates} of `outer_lr`; the runs also "
            "differ in total iterations. The order of the gradient is not the only difference.")


def budget_summary(a: ScenarioRecord, b: ScenarioRecord, schedule: str | None = None) -> str:
    """Two scenarios at equal iterations and at equal training time, from their validation histories.

    The validation tasks are the same for every scenario, so each comparison is paired when per-task validation
    accuracies were recorded.

    Args:
        a: the first scenario (e.g. S1).
        b: the second (e.g. S2).
        schedule: the outer learning-rate schedule of both (``config.outer_lr_schedule``); when given, a line says
            where the two runs' rates differ at the equal-iterations point (a cosine schedule anneals over each
            run's own length).
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
    if schedule is not None and points["iterations"] is not None:
        line = _schedule_line(a, b, points["iterations"][0].iteration, schedule)
        lines += [line] if line else []
    return "\n".join(lines)


def _levelling_clause(verdict: Levelling, half_width: float | None = None) -> str:
    """The rule's reading; ``half_width`` (points) is the paired interval of the gain on the validation tasks."""
    if not verdict.levelled:
        return "still rising: more iterations would help"
    if verdict.gain_points <= -LEVEL_POINTS:
        if half_width is not None and -verdict.gain_points <= half_width:
            return "levelled off (the drop lies inside the paired interval: noise of these tasks, not a decline)"
        return "falling: more iterations would not help"
    return "levelled off"


def _levelling_interval(val_history: Sequence[Mapping[str, Any]], verdict: Levelling) -> float | None:
    """Paired 95% half-width, in points, of the rule's gain: both validations scored the same tasks."""
    per_task = {v["iteration"]: v.get("per_task") for v in val_history}
    start, end = per_task.get(verdict.start_iteration), per_task.get(verdict.end_iteration)
    if not start or not end or len(start) != len(end):
        return None
    return _difference(end, start)[1]


def convergence_summary(records: Mapping[str, ScenarioRecord]) -> str:
    """The budget rule (:func:`evaluation.curves.levelled_off`) applied to each scenario's validation curve.

    Args:
        records: scenarios by name; each one's ``train.val_history`` is read.
    """
    lines = [f"Has each validation curve levelled off? The rule: the last {LEVEL_FRACTION:.0%} of the iterations "
             f"gain under {LEVEL_POINTS} point of validation accuracy."]
    for name, r in records.items():
        verdict = levelled_off(r.train.val_history)
        if verdict is None:
            lines.append(f"- {name}: too few validations to tell ({len(r.train.val_history)} in "
                         f"{r.train.iterations_done:,} iterations).")
            continue
        acc = {v["iteration"]: v["acc"] for v in r.train.val_history}
        half = _levelling_interval(r.train.val_history, verdict)
        interval = "" if half is None else f" (paired 95% interval ± {half:.2f})"
        lines.append(f"- {name}: {100 * acc[verdict.start_iteration]:.2f}% after {verdict.start_iteration:,} "
                     f"iterations, {100 * acc[verdict.end_iteration]:.2f}% after {verdict.end_iteration:,}: "
                     f"{verdict.gain_points:+.2f} points{interval}, {_levelling_clause(verdict, half)}.")
    return "\n".join(lines)


def _not_levelled(records: Mapping[str, ScenarioRecord]) -> list[str]:
    """The scenarios whose validation curve has not been shown to level off (still rising, or too few points)."""
    verdicts = {name: levelled_off(r.train.val_history) for name, r in records.items()}
    return [name for name, verdict in verdicts.items() if verdict is None or not verdict.levelled]


def _nil_against_anil(records: Mapping[str, ScenarioRecord]) -> dict[str, tuple[float, bool]]:
    """Per scenario with NIL measured: NIL − ANIL (mean per-task difference) and whether the interval excludes 0."""
    out = {}
    for name, r in records.items():
        if r.test.per_task_nil is not None:
            _, mean, distinguishable = paired_clause("NIL", "ANIL", r.test.per_task_nil, r.test.per_task_after)
            out[name] = (mean, distinguishable)
    return out


def _names(names: Sequence[str]) -> str:
    """``"S1"``, ``"S1 and S2"``, ``"S1, S2 and S3"``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def nil_paper_sentence(records: Mapping[str, ScenarioRecord]) -> str:
    """Where NIL is clearly above ANIL in this run, that the ANIL paper also has NIL at or above ANIL; empty
    otherwise (the paper's figures are quoted only when this run agrees with their direction)."""
    compared = _nil_against_anil(records)
    above = [name for name, (mean, clear) in compared.items() if clear and mean > 0]
    if not above:
        return ""
    where = "every scenario" if len(above) == len(compared) > 1 else _names(above)
    return (f"NIL is above ANIL in {where} here, as in the ANIL paper, where NIL also scores at or above ANIL "
            f"({PAPER_NIL['nil']}% against {PAPER_NIL['anil']}%, {PAPER_NIL['setting']}): the body's features carry "
            "the accuracy, and the head adapted on them does not improve on comparing features directly.")


def nil_summary(records: Mapping[str, ScenarioRecord]) -> str:
    """NIL against ANIL per scenario, paired on the same test tasks: how much does the head's inner loop add?"""
    lines = []
    for name, r in records.items():
        if r.test.per_task_nil is None:
            continue
        verdict = paired_verdict("ANIL", "NIL", r.test.per_task_after, r.test.per_task_nil)
        lines.append(f"- {name}: ANIL {pct(r.test.acc_after)}, NIL {pct(r.test.nil_acc)}; {verdict}")
    paper = nil_paper_sentence(records)
    return "\n".join(lines + ([f"\n{paper}"] if paper else []))


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


def _speed_clause(name: str, speedup: float) -> str:
    saving = f"a saving of {pct(1 - 1 / speedup)}" if speedup >= 1 else "ANIL is the slower one here"
    return f"{name}: **{speedup:.2f}x** ({saving})"


def _against_paper(speedups: Sequence[float], saving: bool = True) -> str:
    """Where measured ANIL-over-MAML speed-ups lie against the paper's, stated once for all of them (with the
    paper's saving in time per step when ``saving``)."""
    paper = f"the paper's {PAPER_SPEEDUP}x" + (
        f" (a saving of about {100 * (1 - 1 / PAPER_SPEEDUP):.0f}%)" if saving else "")
    above = sum(x > PAPER_SPEEDUP for x in speedups)
    below = sum(x < PAPER_SPEEDUP for x in speedups)
    if len(speedups) == 1:
        return f"{'above' if above else 'below' if below else 'equal to'} {paper}"
    if above == len(speedups) or below == len(speedups):
        every = "both" if len(speedups) == 2 else "all"
        return f"{every} {'above' if above else 'below'} {paper}"
    return f"{above} of them above and {below} below {paper}"


def maml_form_sentence(maml_form: str, batched_s_per_step: float | None, per_task_s_per_step: float | None) -> str:
    """Which form MAML trained in and whether the timing of both forms agrees that it is the faster one.

    Args:
        maml_form: the form MAML trained in, ``"batched"`` or ``"per-task"``, as the device rule
            (:func:`algorithms.maml.resolve_maml_layout`) chose it.
        batched_s_per_step: seconds per outer step of batched MAML on one meta-batch, timed (``None``: not timed).
        per_task_s_per_step: the same for per-task MAML.
    """
    chosen = f"MAML trained in its {maml_form} form, which the device rule picks here"
    if batched_s_per_step is None or per_task_s_per_step is None:
        return chosen + "."
    times = {"batched": batched_s_per_step, "per-task": per_task_s_per_step}
    other = "per-task" if maml_form == "batched" else "batched"
    if times[maml_form] <= times[other]:
        return (f"{chosen}, and the timing of one meta-batch confirms it is the faster form here "
                f"({times[maml_form]:.3f} s against {times[other]:.3f} s per step).")
    return (f"{chosen}; the timing of one meta-batch disagrees: the {other} form was faster here "
            f"({times[other]:.3f} s against {times[maml_form]:.3f} s per step). The form changes the speed, not the "
            "results.")


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
    speedups = [as_trained]
    ratios = [_speed_clause(f"ANIL vs MAML, {trained}", as_trained)]
    batched = as_trained if maml_form == "batched" else None  # the algorithm's cost: both sides batched
    if batched_maml_s_per_step is not None and maml_form != "batched":
        batched = batched_maml_s_per_step / anil_s
        speedups.append(batched)
        ratios.append(_speed_clause("ANIL vs MAML, both batched (one meta-batch, timed)", batched))
    if per_task_maml_s_per_step is not None:
        per_task = per_task_maml_s_per_step / anil_s
        speedups.append(per_task)
        ratios.append(_speed_clause("ANIL vs per-task MAML (a loop over the tasks, timed separately)", per_task))
    form = ""
    if batched_maml_s_per_step is not None or per_task_maml_s_per_step is not None:
        form = " " + maml_form_sentence(maml_form, batched_maml_s_per_step, per_task_maml_s_per_step)
    seed_check = "" if batched is None else (
        f" The batched ratio is {'inside' if SEED_SPEEDUP[0] <= batched <= SEED_SPEEDUP[1] else 'outside'} the "
        f"seed's claimed {SEED_SPEEDUP[0]:.0f}-{SEED_SPEEDUP[1]:.0f}x.")
    ratio = anil.test.acc_after / maml.test.acc_after
    in_seed_acc = SEED_ACC_RATIO[0] <= ratio <= SEED_ACC_RATIO[1]
    verdict = paired_verdict("ANIL", "MAML", anil.test.per_task_after, maml.test.per_task_after)
    return (
        f"Measured on the same {anil.train.iterations_done:,} meta-iterations of the same tasks, on "
        f"{anil.train.device}: ANIL runs at {anil.train.iterations_per_s:.2f} it/s and MAML at "
        f"{maml.train.iterations_per_s:.2f} it/s.{form} Speed-ups: " + "; ".join(ratios)
        + f"; {_against_paper(speedups)}.{seed_check} "
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


def _reuse_tests(freezing: pd.DataFrame, cka: pd.DataFrame) -> tuple[bool, bool]:
    """The paper's two tests on a trained MAML: (CKA: every body layer at least :data:`BODY_REUSE_CKA` and the head
    below them; freezing: adapting the head only is not clearly below adapting every layer)."""
    body = cka["cka"].drop("head")
    head = freezing.loc["head only"]
    cka_reuse = bool(body.min() >= BODY_REUSE_CKA and cka.loc["head", "cka"] < body.min())
    return cka_reuse, not (head["distinguishable"] and head[FREEZING_DIFF] < 0)


def _head_clearly_below_nil(freezing: pd.DataFrame) -> bool:
    """Adapting MAML's head alone scores below no adaptation at all (NIL), with the two 95% intervals apart."""
    head, nil = freezing.loc["head only"], freezing.loc["none (NIL)"]
    return bool(head["accuracy"] + head["ci"] < nil["accuracy"] - nil["ci"])


HEAD_INIT_READING = (
    "Adapting the head alone ends below not adapting at all (NIL) on the same body, so the body's features are not "
    "what fails: the head starts from the initialisation MAML learnt for an inner loop that also moves the body, "
    "and adapting it alone from there does worse than no head. The drop points at that learnt initialisation, not "
    "only at rapid learning in the body."
)


def feature_reuse_summary(freezing: pd.DataFrame, cka: pd.DataFrame, maml: ScenarioRecord) -> str:
    """Test-time freezing and per-layer CKA of a trained MAML read together, with the numbers (the ANIL paper's
    two tests of feature reuse).

    Args:
        freezing: :func:`evaluation.feature_reuse.paired_summary` of the freezing accuracies: rows
            ``"all layers"``, ``"head only"``, ``"none (NIL)"``; columns ``accuracy``, ``ci``, the paired
            difference from ``"all layers"``, ``diff_ci``, ``distinguishable``.
        cka: :func:`evaluation.feature_reuse.layer_cka`: one row per layer (the body's, then ``"head"``), ``cka``.
        maml: MAML's record: its iterations, and whether its validation curve levelled off (the paper's finding
            is about converged models; a run that had not levelled off gives a trend).
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
    cka_reuse, freezing_reuse = _reuse_tests(freezing, cka)
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
    if not cka_reuse and _head_clearly_below_nil(freezing):
        reading += " " + HEAD_INIT_READING
    return f"{facts} {reading} {_maml_budget_sentence(maml)}"


def _maml_budget_sentence(maml: ScenarioRecord) -> str:
    """How long MAML trained, and whether that counts as converged by the validation rule."""
    verdict, iterations = levelled_off(maml.train.val_history), maml.train.iterations_done
    if verdict is not None and verdict.levelled:
        return (f"MAML trained for {iterations:,} iterations, until its validation curve levelled off "
                f"({verdict.gain_points:+.2f} points over iterations {verdict.start_iteration:,}–"
                f"{verdict.end_iteration:,}): these are a converged model's figures, the setting of the paper's "
                "finding.")
    return (f"MAML trained for {iterations:,} iterations here, and its validation curve had not levelled off; the "
            "paper's finding (body almost unchanged, freezing nearly free) is about converged models, so this run "
            "shows a trend.")


UNTRAINED = "the body without meta-training (head from zero)"


def ablation_summary(s4: Sequence[float], frozen_bn: Sequence[float], untrained: EvalResult) -> str:
    """S4 against its two controls on the same tasks (S4 with BatchNorm frozen too; the pretrained body with no
    meta-training, its head adapted from zero, and NIL on it), each paired, then a reading that follows the numbers.

    Args:
        s4: S4's per-task accuracies on the ablations' tasks.
        frozen_bn: the same for S4 trained with BatchNorm frozen as well.
        untrained: :func:`experiments.scenarios.evaluate_untrained_head` on the same tasks.
    """
    lines = [paired_verdict("S4", "S4 with BatchNorm frozen", s4, frozen_bn),
             paired_verdict("S4", UNTRAINED, s4, untrained.per_task_after)]
    if untrained.per_task_nil is not None:
        lines.append(paired_verdict(UNTRAINED, "NIL on it", untrained.per_task_after, untrained.per_task_nil))
    _, bn_mean, bn_clear = paired_clause("S4", "frozen BatchNorm", s4, frozen_bn)
    _, mean, clear = paired_clause("S4", "untrained", s4, untrained.per_task_after)
    if clear and mean < 0:
        reading = ("S4 ends below the same frozen body with no meta-training at all: at this budget the outer loop "
                   "cost accuracy.")
        if not bn_clear:
            reading += (" Freezing BatchNorm as well changes nothing measurable, so what S4 adds to that body is, in "
                        f"effect, its learnt head initialisation: {untrained.steps} inner steps from it end below "
                        f"{untrained.steps} steps from a zero head.")
        else:
            reading += (" S4 differs from that body by BatchNorm's γ and β and by a learnt head initialisation; the "
                        "comparison with its frozen-BatchNorm twin says which of the two moved the accuracy.")
    elif clear:
        reading = ("S4 is ahead of the body without meta-training: the outer loop added accuracy beyond the "
                   "pre-training" + (", and BatchNorm's γ and β carry part of it." if bn_clear and bn_mean > 0
                                     else "."))
    else:
        reading = ("S4 and the body without meta-training are not distinguishable: the accuracy comes from the "
                   "pre-training, and the outer loop added nothing measurable at this budget.")
    return "\n".join(f"- {line}" for line in lines) + f"\n\n{reading}"


MAX_CONCLUSIONS = 12  # points of the notebook's closing summary, at most
MAX_CONCLUSION_WORDS = 360  # words of that summary, at most (about 350)


def _difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, bool]:
    """``a − b`` in points: mean, 95% half-width of the paired interval, whether it excludes 0."""
    mean, half = paired_difference(a, b)
    return 100 * mean, 100 * half, abs(mean) > half


def _points(mean: float, half: float) -> str:
    return f"{mean:+.1f} ± {half:.1f} points"


def _answer_point(anil: ScenarioRecord, maml: ScenarioRecord, freezing: pd.DataFrame, cka: pd.DataFrame) -> str:
    """The course's question answered from the three signs the ANIL paper's answer rests on."""
    mean, half, clear = _difference(anil.test.per_task_after, maml.test.per_task_after)
    cka_reuse, freezing_reuse = _reuse_tests(freezing, cka)
    body = cka["cka"].drop("head").dropna()  # a constant representation has no CKA
    head = freezing.loc["head only"]
    frozen = _points(100 * head[FREEZING_DIFF], 100 * head["diff_ci"])
    moved = (f"MAML's inner loop moves {body.idxmin()} (CKA {body.min():.3f})" if len(body)
             else "MAML's CKA is undefined here")
    signs = [
        (not (clear and mean < 0), f"ANIL {'matches' if not clear else 'beats' if mean > 0 else 'trails'} MAML "
                                   f"({_points(mean, half)})"),
        (cka_reuse, f"MAML's inner loop barely moves its conv blocks (CKA ≥ {body.min():.3f})" if cka_reuse
         else moved),
        (freezing_reuse, f"freezing MAML's body at test time costs nothing measurable ({frozen})" if freezing_reuse
         else f"freezing MAML's body at test time costs {-100 * head[FREEZING_DIFF]:.1f} ± {100 * head['diff_ci']:.1f} "
              "points"),
    ]
    held = [text for ok, text in signs if ok]
    failed = [text for ok, text in signs if not ok]
    question = "**Rapid learning or feature reuse?"
    if not failed:
        return f"- {question} Feature reuse**, as the ANIL paper found: {_names(held)}."
    converged = not _not_levelled({"MAML": maml})
    verdict = "Not feature reuse" if not held else "Not clearly feature reuse"
    budget = (f"MAML: {maml.train.iterations_done:,} outer iterations"
              + (", its validation curve levelled off" if converged else ""))
    text = (f"- {question} {verdict}{'' if converged else ' at this budget'}** ({budget}): "
            + (f"{_names(failed)}." if not held else f"{_names(held)}, but {_names(failed)}."))
    still = [name for name, value in body.items() if value >= UNCHANGED_CKA]
    unchanged = f"{len(still)} of {len(body)} conv blocks are unchanged (CKA ≥ {UNCHANGED_CKA})"
    if converged:
        trend = f"Still, {unchanged}." if still and not cka_reuse else ""
        if cka_reuse and not freezing_reuse:
            trend = ("Freezing departs from the paper, perhaps because this MAML's inner loop also adapts BatchNorm's "
                     "γ and β, unlike the paper's (section 6).")
    else:
        trend = (f"The trend points the paper's way: {unchanged}; the paper trained MAML to convergence."
                 if still and not cka_reuse else "The paper trained MAML to convergence.")
    return f"{text} {trend}".rstrip()


def _nil_point(records: Mapping[str, ScenarioRecord]) -> str | None:
    compared = _nil_against_anil(records)
    if not compared:
        return None
    above = {name: mean for name, (mean, clear) in compared.items() if clear and mean > 0}
    below = [name for name, (mean, clear) in compared.items() if clear and mean < 0]
    tied = [name for name, (_, clear) in compared.items() if not clear]
    rest = ([f"not distinguishable in {_names(tied)}"] if tied else []) + (
        [f"below ANIL in {_names(below)}"] if below else [])
    if not above:
        return f"- **NIL** (no head) is nowhere clearly above ANIL: {'; '.join(rest)}."
    low, high = (100 * min(above.values()), 100 * max(above.values()))
    margin = f"{low:.1f}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f} to {high:.1f}"
    where = "every scenario" if len(above) == len(compared) > 1 else _names(list(above))
    return (f"- **NIL** (no head) is above ANIL in {where}, by {margin} points"
            + (f" ({'; '.join(rest)})" if rest else "")
            + f", as in the ANIL paper ({PAPER_NIL['nil']}% against {PAPER_NIL['anil']}%, {PAPER_NIL['setting']}): "
            "the features carry the accuracy.")


def _head_init_point(records: Mapping[str, ScenarioRecord], freezing: pd.DataFrame, config: Any,
                     untrained: EvalResult | None) -> str | None:
    findings = []
    if _head_clearly_below_nil(freezing):
        findings.append(f"MAML's head adapted alone ({pct(freezing.loc['head only', 'accuracy'])}) ends below no "
                        f"head (NIL, {pct(freezing.loc['none (NIL)', 'accuracy'])})")
    s4 = getattr(records["S4"], config.analysis_pool, None) if "S4" in records else None
    if untrained is not None and s4 is not None:
        mean, half, clear = _difference(s4.per_task_after, untrained.per_task_after)
        if clear and mean < 0:
            findings.append(f"S4 below its pretrained body with a zero head and no meta-training "
                            f"({_points(mean, half)})")
    if not findings:
        return None
    drops = "these drops point" if len(findings) > 1 else "this drop points"
    return (f"- **The head's learnt initialisation matters.** {', and '.join(findings)}: {drops} at that "
            "initialisation, not only at rapid learning.")


def _cost_point(anil: ScenarioRecord, maml: ScenarioRecord, timings: Mapping[str, Any]) -> str:
    form = timings.get("maml_form", "batched")
    anil_s = timings.get("anil_s_per_step") or 1 / anil.train.iterations_per_s
    trained = anil.train.iterations_per_s / maml.train.iterations_per_s
    speedups = {"batched": trained if form == "batched" else None, "per-task": trained if form != "batched" else None}
    for key, name in (("batched", "batched_maml_s_per_step"), ("per-task", "per_task_maml_s_per_step")):
        if timings.get(name) is not None:
            speedups[key] = timings[name] / anil_s
    measured = {key: value for key, value in speedups.items() if value is not None}
    faster = " and ".join(f"{value:.2f}x faster than {key} MAML" for key, value in measured.items())
    relation = _against_paper(list(measured.values()), saving=False)  # the saving is said in section 10
    ratio = anil.test.acc_after / maml.test.acc_after
    inside = "inside" if SEED_ACC_RATIO[0] <= ratio <= SEED_ACC_RATIO[1] else "outside"
    return (f"- **Cost.** ANIL's outer step is {faster} here, {relation}; ANIL reaches {pct(ratio)} of "
            f"MAML's accuracy, {inside} the seed's claimed {100 * SEED_ACC_RATIO[0]:.0f}–"
            f"{100 * SEED_ACC_RATIO[1]:.0f}%.")


def _best_point(records: Mapping[str, ScenarioRecord]) -> str:
    best = max(records, key=lambda name: records[name].test.acc_after)
    r = records[best]
    head = f"- **Most accurate: {best}**, {pct(r.test.acc_after)} ± {pct(r.test.ci_after)}"
    if not _same_tasks(records) or len(records) == 1:
        return head + "."
    ties = [name for name, other in records.items() if name != best
            and not _difference(r.test.per_task_after, other.test.per_task_after)[2]]
    return head + (f", not distinguishable from {_names(ties)}." if ties else ", ahead of every other scenario.")


def _order_point(s1: ScenarioRecord, s2: ScenarioRecord, schedule: str) -> str:
    mean, half, _ = _difference(s2.test.per_task_after, s1.test.per_task_after)
    text = f"- **First against second order.** S2 − S1 = {_points(mean, half)} on the test tasks"
    its1, its2 = s1.train.iterations_done, s2.train.iterations_done
    if its1 == its2:
        return text + ", at equal iterations."
    text += f", but S2 ran {its2 / its1:.1f}x the iterations"
    pair = equal_budget_points(s1.train, s2.train)["iterations"]
    if pair is None:
        return text + "."
    p1, p2 = pair
    if p1.per_task is not None and p2.per_task is not None:
        v_mean, v_half, _ = _difference(p2.per_task, p1.per_task)
        text += f"; at equal iterations (validation tasks) {_points(v_mean, v_half)}"
    if _schedule_line(s1, s2, p1.iteration, schedule) is not None:
        text += ", with different learning rates even there"
    return text + "."


def _pretrained_point(s3: ScenarioRecord, s4: ScenarioRecord) -> str:
    mean, half, _ = _difference(s4.test.per_task_after, s3.test.per_task_after)
    text = f"- **Pretrained ResNet18.** S4 (frozen body) − S3 (whole body trained) = {_points(mean, half)}"
    if s3.test.per_task_nil is not None and s4.test.per_task_nil is not None:
        n_mean, n_half, n_clear = _difference(s3.test.per_task_nil, s4.test.per_task_nil)
        if n_clear and n_mean < 0:
            return text + (f"; under NIL, S3 − S4 = {_points(n_mean, n_half)}: training every weight damaged the "
                           "pretrained features.")
    return text + "."


def _seed_point(records: Mapping[str, ScenarioRecord], config: Any) -> str | None:
    chosen = {name: r for name, r in records.items() if name in SEED_REPORTED["accuracy_after_percent"]}
    if not chosen:
        return None
    seed_acc = SEED_REPORTED["accuracy_after_percent"]
    outside = [name for name, r in chosen.items()
               if abs(100 * r.test.acc_after - seed_acc[name]) > 100 * r.test.ci_after]
    run_order = " > ".join(sorted(chosen, key=lambda n: chosen[n].test.acc_after, reverse=True))
    seed_order = " > ".join(sorted(chosen, key=lambda n: seed_acc[n], reverse=True))
    protocol = ("its protocol" if not protocol_differences(config, chosen)
                else f"preset {config.preset!r}, not its protocol")
    where = "outside" if outside else "inside"
    if len(chosen) == 1:
        return f"- **Against the seed's table** ({protocol}): its accuracy lies {where} this run's 95% interval."
    share = "" if len(outside) in (0, len(chosen)) else f"{len(outside)} of "
    agreement = f"{share}its {len(chosen)} accuracies lie {where} this run's 95% intervals"
    ranking = "the same ranking" if run_order == seed_order else f"ranking {run_order} against its {seed_order}"
    return f"- **Against the seed's table** ({protocol}): {agreement}; {ranking}."


def _caveat_point(records: Mapping[str, ScenarioRecord], config: Any) -> str:
    budgets: dict[int, list[str]] = {}
    for name, r in records.items():
        budgets.setdefault(r.train.iterations_done, []).append(name)
    listed = ", ".join(f"{_names(names)} {count:,}" + (" each" if len(names) > 1 else "")
                       for count, names in budgets.items())
    rising = _not_levelled(records)
    state = (f"every validation curve levelled off (its last {LEVEL_FRACTION:.0%} gained under {LEVEL_POINTS} point)"
             if not rising else
             f"{_names(rising)} had not levelled off, so {'its' if len(rising) == 1 else 'their'} numbers are trends")
    text = f"- **Read with care.** Outer iterations: {listed}; {state}."
    tuned = TUNED_ON.get(config.preset)
    if tuned:
        text += (f" The settings were tuned on {tuned}'s validation tasks (`benchmarks/tune_quick.py`); the others "
                 "reuse them.")
    return text


def conclusions(records: Mapping[str, ScenarioRecord], anil_at_budget: ScenarioRecord, maml_record: ScenarioRecord,
                maml_timings: Mapping[str, Any], freezing: pd.DataFrame, cka: pd.DataFrame, config: Any, *,
                untrained: EvalResult | None = None) -> str:
    """The notebook's closing summary: at most :data:`MAX_CONCLUSIONS` Markdown bullet points, each one finding
    with its number and interval given once, opening with the answer to the course's question.

    The answer (rapid learning or feature reuse?) is read from this run's numbers through the three signs the ANIL
    paper's answer rests on: ANIL matches MAML in accuracy (paired interval), MAML's inner loop leaves its conv
    blocks almost unchanged (CKA, :data:`BODY_REUSE_CKA`), and freezing MAML's body at test time costs nothing
    measurable. The per-scenario detail stays in the tables and sentences above it.

    Args:
        records: the scenarios (S1-S4), as in the comparison table.
        anil_at_budget: ANIL trained at MAML's budget, on the same tasks.
        maml_record: MAML's record.
        maml_timings: the keyword arguments of :func:`maml_summary` (``maml_form``, ``anil_s_per_step``,
            ``batched_maml_s_per_step``, ``per_task_maml_s_per_step``); missing ones are skipped.
        freezing: :func:`evaluation.feature_reuse.paired_summary` of MAML's test-time freezing.
        cka: :func:`evaluation.feature_reuse.layer_cka` of MAML's inner loop.
        config: the run's configuration (preset, analysis pool, learning-rate schedule).
        untrained: :func:`experiments.scenarios.evaluate_untrained_head` on the analysis tasks, to compare S4 with
            its body without meta-training; ``None`` skips that comparison.
    """
    points = [
        _answer_point(anil_at_budget, maml_record, freezing, cka),
        _nil_point(records),
        _head_init_point(records, freezing, config, untrained),
        _cost_point(anil_at_budget, maml_record, maml_timings),
        _best_point(records),
        _order_point(records["S1"], records["S2"], config.outer_lr_schedule)
        if "S1" in records and "S2" in records else None,
        _pretrained_point(records["S3"], records["S4"]) if "S3" in records and "S4" in records else None,
        _seed_point(records, config),
        _caveat_point({**records, "MAML": maml_record}, config),
    ]
    lead = ("± on an accuracy: its 95% interval; on a difference in points: the paired 95% interval on the same "
            "tasks (section 7).")
    return lead + "\n\n" + "\n".join(point for point in points if point)
