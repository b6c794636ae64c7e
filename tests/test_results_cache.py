"""Why a scenario retrains: the fields in which a configuration differs from the newest cached run."""

from __future__ import annotations

import json
import os

import torch

from experiments.results import changed_fields
from utils.config import resolve_config


def _cached(folder, name, config, mtime):
    path = folder / f"S2-{name}.json"
    path.write_text(json.dumps({"scenario": "S2", "config": config.__dict__}))
    os.utime(path, (mtime, mtime))


def test_changed_fields_compares_with_the_newest_cached_run(tmp_path):
    quick = resolve_config("quick", torch.device("cpu"))
    assert changed_fields(tmp_path, "S2", quick) == {}  # nothing cached: nothing to explain
    _cached(tmp_path, "old", quick.replace(inner_lr=0.4), 1_000)
    _cached(tmp_path, "new", quick.replace(s2_iterations=3000), 2_000)
    (tmp_path / "S2-broken.json").write_text("{")  # unreadable files are skipped, not fatal
    os.utime(tmp_path / "S2-broken.json", (3_000, 3_000))
    assert changed_fields(tmp_path, "S2", quick) == {"s2_iterations": (3000, 1400)}
    assert changed_fields(tmp_path, "S2", quick.replace(s2_iterations=3000)) == {}
