"""Sentences written from measured results, so the notebook's prose can never contradict its outputs.

The ANIL paper (Raghu et al., ICLR 2020, arXiv:1909.09157) asks whether MAML's accuracy comes from rapid learning
in the inner loop or from reusing features learnt by the outer loop. Each function here reads results and
returns Markdown that states what was measured, with the numbers, and compares it with the claims of the paper
and of the seed notebook (the seed: "ANIL is 3-10x faster than MAML and reaches 95-98% of its accuracy").
"""

from __future__ import annotations

from collections.abc import Mapping

from evaluation.compare import ScenarioRecord

SEED_SPEEDUP = (3.0, 10.0)  # the seed's claimed ANIL-over-MAML training speed-up
SEED_ACC_RATIO = (0.95, 0.98)  # the seed's claimed ANIL/MAML accuracy ratio
PAPER_SPEEDUP = 1.7  # the ANIL paper's measured training speed-up of ANIL over MAML


def pct(value: float) -> str:
    """``0.9634`` -> ``"96.3%"``."""
    return f"{100 * value:.1f}%"


def scenario_summary(record: ScenarioRecord) -> str:
    """One paragraph on a trained scenario: cost, loss, accuracy before/after adaptation, NIL."""
    t, e = record.train, record.test
    nil = "" if e.nil_acc is None else f" Without any inner loop (NIL) the same body scores {pct(e.nil_acc)}."
    stopped = " Training was interrupted early." if t.interrupted else ""
    return (
        f"**{record.label}** ran {t.iterations_done:,} meta-iterations in {t.wall_time_s:,.1f} s "
        f"({t.iterations_per_s:.2f} it/s on {t.device}). The query loss went from {t.losses[0]:.3f} to "
        f"{t.losses[-1]:.3f} (best {min(t.losses):.3f}). On {e.num_tasks:,} tasks from unseen alphabets the "
        f"accuracy is {pct(e.acc_before)} before adaptation (chance is {pct(1 / e.n_way)}) and "
        f"{pct(e.acc_after)} ± {pct(e.ci_after)} after {e.steps} inner steps, a gain of "
        f"{100 * e.gain:+.1f} points.{nil}{stopped}"
    )


def _best(records: Mapping[str, ScenarioRecord], key, highest: bool = True) -> str:
    values = {name: key(r) for name, r in records.items() if key(r) is not None}
    return (max if highest else min)(values, key=values.get)


def comparison_summary(records: Mapping[str, ScenarioRecord]) -> str:
    """Which scenario is most accurate, fastest and leanest, with the numbers."""
    acc = _best(records, lambda r: r.test.acc_after)
    fast = _best(records, lambda r: r.train.iterations_per_s)
    lean = _best(records, lambda r: r.train.peak_memory_mb, highest=False)
    r_acc, r_fast, r_lean = records[acc], records[fast], records[lean]
    lines = [
        f"- Most accurate: **{acc}** with {pct(r_acc.test.acc_after)} ± {pct(r_acc.test.ci_after)}.",
        f"- Fastest: **{fast}** at {r_fast.train.iterations_per_s:.2f} it/s.",
        f"- Least memory: **{lean}** at {r_lean.train.peak_memory_mb:,.0f} MB ({r_lean.train.memory_kind}).",
    ]
    if "S1" in records and "S2" in records:
        s1, s2 = records["S1"], records["S2"]
        its = (s1.train.iterations_done, s2.train.iterations_done)
        caveat = "" if its[0] == its[1] else (
            f" S1 trained for {its[0]:,} iterations and S2 for {its[1]:,}, so this gap measures the training"
            " budget as much as the order of the gradient."
        )
        lines.append(
            f"- First order (S2) runs {s2.train.iterations_per_s / s1.train.iterations_per_s:.2f}x the speed of "
            f"second order (S1); their accuracies differ by {100 * (s2.test.acc_after - s1.test.acc_after):+.1f} "
            f"points, against confidence intervals of ±{100 * s1.test.ci_after:.1f} and "
            f"±{100 * s2.test.ci_after:.1f} points.{caveat}"
        )
    return "\n".join(lines)


def nil_summary(records: Mapping[str, ScenarioRecord]) -> str:
    """NIL against ANIL per scenario: how much does the head's inner loop add?"""
    lines = []
    for name, r in records.items():
        if r.test.nil_acc is None:
            continue
        diff = 100 * (r.test.acc_after - r.test.nil_acc)
        lines.append(
            f"- {name}: ANIL {pct(r.test.acc_after)}, NIL {pct(r.test.nil_acc)} "
            f"(ANIL {'ahead' if diff >= 0 else 'behind'} by {abs(diff):.1f} points)."
        )
    return "\n".join(lines)


def curve_summary(records: Mapping[str, ScenarioRecord]) -> str:
    """Share of the final gain reached after one inner step, per scenario."""
    lines = []
    for name, r in records.items():
        curve = r.adaptation_curve
        if not curve or len(curve) < 2 or curve[-1] == curve[0]:
            continue
        share = (curve[1] - curve[0]) / (curve[-1] - curve[0])
        lines.append(
            f"- {name}: {pct(curve[0])} at 0 steps, {pct(curve[1])} after 1 step, {pct(curve[-1])} after "
            f"{len(curve) - 1} steps; one step gives {pct(share)} of the total gain."
        )
    return "\n".join(lines)


def maml_summary(anil: ScenarioRecord, maml: ScenarioRecord) -> str:
    """ANIL against MAML on the same tasks and iterations, checked against the seed's and the paper's claims."""
    speedup = anil.train.iterations_per_s / maml.train.iterations_per_s
    ratio = anil.test.acc_after / maml.test.acc_after
    in_seed_speed = SEED_SPEEDUP[0] <= speedup <= SEED_SPEEDUP[1]
    in_seed_acc = SEED_ACC_RATIO[0] <= ratio <= SEED_ACC_RATIO[1]
    return (
        f"Measured on the same {anil.train.iterations_done:,} meta-iterations of the same tasks: ANIL runs at "
        f"{anil.train.iterations_per_s:.2f} it/s and MAML at {maml.train.iterations_per_s:.2f} it/s, a speed-up "
        f"of **{speedup:.2f}x** (the paper reports {PAPER_SPEEDUP}x; the seed claims "
        f"{SEED_SPEEDUP[0]:.0f}-{SEED_SPEEDUP[1]:.0f}x: {'inside' if in_seed_speed else 'outside'} that range). "
        f"ANIL reaches {pct(anil.test.acc_after)} ± {pct(anil.test.ci_after)} and MAML "
        f"{pct(maml.test.acc_after)} ± {pct(maml.test.ci_after)}: ANIL/MAML = **{pct(ratio)}** (the seed claims "
        f"{pct(SEED_ACC_RATIO[0])}-{pct(SEED_ACC_RATIO[1])}: {'inside' if in_seed_acc else 'outside'} that range)."
    )
