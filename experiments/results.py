"""Results on disk: one JSON (and a CSV history) per scenario, keyed by the configuration that produced it.

Re-running the ANIL tutorial (Raghu, Raghu, Bengio & Vinyals, ICLR 2020, arXiv:1909.09157) should not retrain
a scenario whose results already exist, but must never show results of *another* configuration. A result file
is therefore named ``<scenario>-<key>.json`` with ``key`` a hash of every :class:`utils.config.Config` field,
the scenario name and any code-relevant settings the caller adds (pretraining source, device type, ...). The
file also stores the full configuration; :func:`load_cached` recomputes the key from it and accepts the file
only when everything matches. Files are written atomically; an unreadable or corrupt file is reported with a
warning and treated as missing (it is overwritten only by the next complete result).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.records import ScenarioRecord
from utils.io import atomic_write_json, atomic_write_text, error_path

RESULTS_FORMAT = 1


def _config_dict(config: Any) -> dict[str, Any]:
    """A Config dataclass (or a mapping) as a plain dict."""
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def _hash(config: Mapping[str, Any], scenario: str, settings: Mapping[str, Any]) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of everything that determines a result."""
    document = {"format": RESULTS_FORMAT, "config": config, "scenario": scenario, "settings": settings}
    canonical = json.dumps(document, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _canonical(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as they read back from JSON (non-JSON values as strings), so keys survive a round trip."""
    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


def result_key(config: Any, scenario: str, **settings: Any) -> str:
    """Cache key of a scenario's result.

    Args:
        config: the run's :class:`utils.config.Config` (every field counts).
        scenario: scenario name, e.g. ``"S1"``.
        **settings: other code-relevant settings, e.g. ``pretrained_source="ImageNet (torchvision)"``.
    """
    return _hash(_config_dict(config), scenario, _canonical(settings))


def result_path(results_dir: str | os.PathLike, scenario: str, key: str) -> Path:
    """``results_dir/<scenario slug>-<key>.json``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", scenario).strip("-") or "scenario"
    return Path(results_dir) / f"{slug}-{key}.json"


def save_result(results_dir: str | os.PathLike, record: ScenarioRecord, config: Any, **settings: Any) -> Path:
    """Write ``record`` as JSON, plus its loss/accuracy history as CSV, atomically.

    Returns:
        The JSON path; the CSV has the same name with ``.csv``.

    Raises:
        PermissionError: ``results_dir`` cannot be written (nothing is left behind).
    """
    key = result_key(config, record.name, **settings)
    path = result_path(results_dir, record.name, key)
    document = {
        "format": RESULTS_FORMAT,
        "key": key,
        "scenario": record.name,
        "config": _config_dict(config),
        "settings": _canonical(settings),
        "record": record.to_dict(),
    }
    history = pd.DataFrame(
        {
            "iteration": range(1, len(record.train.losses) + 1),
            "loss": record.train.losses,
            "acc": record.train.accs,
        }
    )
    atomic_write_json(path, document)
    atomic_write_text(path.with_suffix(".csv"), history.to_csv(index=False))
    return path


def _problem(document: Any, scenario: str, key: str) -> str | None:
    """Why ``document`` is not the result for ``(scenario, key)``, or ``None`` when it is."""
    if not isinstance(document, dict) or document.get("format") != RESULTS_FORMAT:
        return f"format {document.get('format') if isinstance(document, dict) else None!r} != {RESULTS_FORMAT}"
    if document["scenario"] != scenario or document["key"] != key:
        return f"it holds {document['scenario']!r} with key {document['key']}"
    if _hash(document["config"], document["scenario"], document["settings"]) != key:
        return "its stored configuration does not hash to its key"
    return None


def load_cached(results_dir: str | os.PathLike, scenario: str, config_key: str) -> ScenarioRecord | None:
    """The stored result of ``scenario`` under ``config_key`` (:func:`result_key`), or ``None``.

    ``None`` when the file is missing, stale (its stored configuration does not hash to ``config_key``) or
    corrupt; a corrupt or stale file also raises a warning naming it. Nothing is deleted or written.
    """
    path = result_path(results_dir, scenario, config_key)
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        problem = _problem(document, scenario, config_key)
        if problem is None:
            return ScenarioRecord.from_dict(document["record"])
    except (
        OSError,
        UnicodeDecodeError,
        ValueError,
        KeyError,
        TypeError,
    ) as err:  # JSONDecodeError: ValueError
        problem = f"unreadable: {type(err).__name__}: {err}"
    warnings.warn(f"Ignoring the cached result {error_path(path)} ({problem}); the scenario will be recomputed.",
                  stacklevel=2)
    return None


def save_table(table: pd.DataFrame, results_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write a table (e.g. :func:`report.compare.comparison_table`) as CSV and JSON, atomically.

    Returns:
        ``(csv_path, json_path)``; the JSON holds ``{"table": {column: {row: value}}, "notes": [...]}``.
    """
    base = Path(results_dir) / name
    document = {"table": json.loads(table.to_json(orient="columns")), "notes": table.attrs.get("notes", [])}
    csv_path = atomic_write_text(base.with_suffix(".csv"), table.to_csv())
    return csv_path, atomic_write_json(base.with_suffix(".json"), document)


def changed_fields(results_dir: str | os.PathLike, scenario: str, config: Any) -> dict[str, tuple[Any, Any]]:
    """How ``config`` differs from the newest cached run of ``scenario``: field -> ``(cached, now)``.

    Empty when there is no readable cached run, or when only settings other than the configuration differ.
    Tells a reader who changed a parameter why a scenario retrains.
    """
    slug = re.sub(r"[^A-Za-z0-9]+", "-", scenario).strip("-") or "scenario"
    candidates = sorted(Path(results_dir).glob(f"{slug}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    now = _config_dict(config)
    for path in candidates:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            cached = document["config"] if document.get("scenario") == scenario else None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            continue
        if isinstance(cached, dict):
            return {k: (cached.get(k), v) for k, v in now.items() if cached.get(k) != v}
    return {}
