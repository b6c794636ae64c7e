"""The converged reference: the ``full`` preset's headline numbers, shown beside every shorter run.

ANIL (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse?", ICLR 2020, arXiv:1909.09157) answers
its question with three measurements taken after training has converged: ANIL matches MAML, MAML's body barely
moves in its inner loop (CKA near 1), and freezing the body at test time costs almost nothing. A student who
runs the ``quick`` preset sees 10-iteration trends; this module puts the converged answer beside them.

Every run of the notebook writes its headline numbers (:func:`headline_numbers`) to
``<results_dir>/headline-<preset>.json``; ``make notebook`` with the ``full`` preset copies that file, with the
machine, date and commit, to :data:`REFERENCE_PATH` (``evaluation/converged_reference.json``, a few KB), which
:func:`load_reference` reads back. Accuracies are fractions, under keys starting with ``acc``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from utils.io import atomic_write_json
from utils.notebook_tools import CONVERGED_REFERENCE as REFERENCE_PATH
from utils.notebook_tools import REFERENCE_PRESET


def headline_numbers(accuracies: Mapping[str, float], anil_minus_maml: tuple[float, float, int],
                     freezing: pd.DataFrame, cka: pd.DataFrame, *, preset: str, machine: str) -> dict[str, Any]:
    """The numbers a converged reference holds, as JSON-ready values.

    Args:
        accuracies: name -> test accuracy after adaptation (a fraction), e.g. ``{"S1": 0.97, "NIL (S1)": 0.97}``;
            each is stored as ``acc_<name>``.
        anil_minus_maml: ``(mean, ci, tasks)`` of the paired per-task difference ANIL − MAML (fractions).
        freezing: :func:`evaluation.feature_reuse.paired_summary` of MAML's test-time freezing (rows ``all
            layers``, ``head only``, ``none (NIL)``; columns ``accuracy``, ``diff_vs_all layers``, ``diff_ci``).
        cka: :func:`evaluation.feature_reuse.layer_cka` (one row per layer, column ``cka``).
        preset: the run's preset.
        machine: where it ran, e.g. ``"AMD EPYC (AVX2), 2 threads"``.
    """
    diff_column = next(c for c in freezing.columns if c.startswith("diff_vs_"))
    return {
        "preset": preset,
        "machine": machine,
        **{f"acc_{name}": round(float(value), 6) for name, value in accuracies.items()},
        "anil_minus_maml": {"mean": round(anil_minus_maml[0], 6), "ci": round(anil_minus_maml[1], 6),
                            "tasks": int(anil_minus_maml[2])},
        "cka": {str(layer): round(float(value), 6) for layer, value in cka["cka"].items()},
        "freezing": {str(row): {"accuracy": round(float(values["accuracy"]), 6),
                                "cost": round(-float(values[diff_column]), 6),
                                "cost_ci": round(float(values["diff_ci"]), 6)}
                     for row, values in freezing.iterrows()},
    }


def headline_path(results_dir: str | Path, preset: str) -> Path:
    """Where a run of ``preset`` saves its headline numbers."""
    return Path(results_dir) / f"headline-{preset}.json"


def save_headline(numbers: Mapping[str, Any], results_dir: str | Path) -> Path:
    """Write :func:`headline_numbers` atomically to :func:`headline_path`; returns the path."""
    return atomic_write_json(headline_path(results_dir, numbers["preset"]), dict(numbers))


def load_reference(path: str | Path = REFERENCE_PATH) -> dict[str, Any] | None:
    """The converged reference, or ``None`` when no ``full`` run has been committed yet.

    Raises:
        ValueError: the file exists but is not a reference of the ``full`` preset (names the file and the fix).
    """
    path = Path(path)
    if not path.is_file():
        return None
    reference = json.loads(path.read_text(encoding="utf-8"))
    if reference.get("preset") != REFERENCE_PRESET or not any(key.startswith("acc_") for key in reference):
        raise ValueError(f"{path.resolve()} is not a converged reference of the {REFERENCE_PRESET!r} preset; "
                         "regenerate it with `make notebook`.")
    return reference


def reference_label(reference: Mapping[str, Any]) -> str:
    """How the reference is named beside a run.

    Example: ``converged reference (full preset, AMD EPYC (AVX2), 2026-12-02)``.
    """
    return f"converged reference ({reference['preset']} preset, {reference['machine']}, {reference['date']})"


def reference_accuracies(reference: Mapping[str, Any], names: list[str]) -> pd.Series:
    """The reference's test accuracies (fractions) of ``names``, NaN where it has none, labelled for display."""
    values = {name: reference.get(f"acc_{name}", float("nan")) for name in names}
    return pd.Series(values, name=reference_label(reference), dtype=float)


def beside_reference(own: Mapping[str, float], reference: Mapping[str, Any], *, keys: Mapping[str, str] | None = None,
                     scale: float = 100, digits: int = 1) -> pd.DataFrame:
    """This run's numbers beside the reference's, one row per name: columns ``this run`` and the reference label.

    Args:
        own: name -> this run's value (a fraction for accuracies).
        reference: :func:`load_reference`'s dictionary.
        keys: name -> where the reference holds it, parts joined by ``/`` (``"cka/body.block1"``); by default
            ``acc_<name>``. A missing one shows as NaN.
        scale: factor for display (100: percent).
        digits: decimals shown.
    """
    keys = keys or {}
    rows = {name: {"this run": value, reference_label(reference): _lookup(reference, keys.get(name, f"acc_{name}"))}
            for name, value in own.items()}
    return (pd.DataFrame.from_dict(rows, orient="index").astype(float) * scale).round(digits)


def _lookup(reference: Mapping[str, Any], path: str) -> float:
    """``reference["a"]["b"]`` for ``"a/b"``; NaN where a part is missing."""
    value: Any = reference
    for part in path.split("/"):
        if not isinstance(value, Mapping) or part not in value:
            return float("nan")
        value = value[part]
    return float(value)


def reference_status(preset: str, reference: Mapping[str, Any] | None) -> str:
    """One line for the top of a run: which converged reference it shows, or that this run is the reference.

    A ``full`` run never shows the committed reference beside itself: ``make notebook`` replaces it with this run.
    """
    if shows_reference(preset, reference):
        return f"Converged reference: {reference_label(reference)}, shown beside this run's numbers."
    if preset == REFERENCE_PRESET:
        return (f"Converged reference: this run (preset {REFERENCE_PRESET!r}); `make notebook` saves its headline "
                f"numbers as the reference that shorter runs show beside their own.")
    return "Converged reference: none committed yet."


def shows_reference(preset: str, reference: Mapping[str, Any] | None) -> bool:
    """Whether a run of ``preset`` shows the reference beside its numbers: any preset but the reference's own."""
    return reference is not None and preset != reference.get("preset")
