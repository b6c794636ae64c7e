"""Whether a validation curve has levelled off: the budget rule of the ``full`` preset.

The ANIL paper (Raghu et al., ICLR 2020, arXiv:1909.09157) compares ANIL with MAML, and measures MAML's feature
reuse, on *converged* models. A run of this project counts as converged when its validation accuracy (held-out
background characters, never the test alphabets) gained under :data:`LEVEL_POINTS` percentage points over the last
:data:`LEVEL_FRACTION` of its iterations. The same rule chose the ``full`` preset's budgets
(``benchmarks/full_budget.py``) and is printed by the notebook beside every validation curve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LEVEL_FRACTION = 0.2  # the last 20% of the iterations ...
LEVEL_POINTS = 0.5  # ... gain under 0.5 point of validation accuracy


@dataclass(frozen=True)
class Levelling:
    """The rule applied to one curve.

    Attributes:
        levelled: whether the gain is under the threshold.
        gain_points: final validation accuracy minus the one at ``start_iteration``, in percentage points.
        start_iteration: the last validation at or before ``(1 - fraction)`` of the final iteration.
        end_iteration: the final validation's iteration.
    """

    levelled: bool
    gain_points: float
    start_iteration: int
    end_iteration: int


def levelled_off(val_history: Sequence[Mapping[str, Any]], fraction: float = LEVEL_FRACTION,
                 points: float = LEVEL_POINTS) -> Levelling | None:
    """Apply the levelling-off rule to a validation history.

    Args:
        val_history: ``{"iteration", "acc", ...}`` per validation, in training order; ``acc`` is a fraction.
        fraction: the share of the iterations at the end of the run whose gain is measured.
        points: the largest gain, in percentage points, of a curve that has levelled off.

    Returns:
        The verdict, or ``None`` when the history cannot tell: fewer than two validations, or none at or before
        ``(1 - fraction)`` of the last iteration.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction!r}.")
    if len(val_history) < 2:
        return None
    last = val_history[-1]
    before = [v for v in val_history[:-1] if v["iteration"] <= (1 - fraction) * last["iteration"]]
    if not before:
        return None
    gain = 100 * (last["acc"] - before[-1]["acc"])
    return Levelling(bool(gain < points), float(gain), int(before[-1]["iteration"]), int(last["iteration"]))
