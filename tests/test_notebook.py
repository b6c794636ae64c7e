"""The notebook runs top to bottom with the smoke preset, and its generated prose matches its results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat

from evaluation.narrative import pct
from utils.notebook_tools import NOTEBOOK, execute, strip_volatile


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append("".join(output.get("text", "")))
        parts.append("".join(output.get("data", {}).get("text/markdown", "")))
    return "\n".join(parts)


def test_notebook_smoke_run(tmp_path, omniglot_root, cache_dir):
    os.environ.setdefault("OMNIGLOT_CACHE", str(cache_dir))
    results = tmp_path / "results"
    params = {"PRESET": "smoke", "DATA_ROOT": str(omniglot_root), "CACHE_DIR": str(cache_dir),
              "RESULTS_DIR": str(results), "REUSE_RESULTS": False, "PRETRAINED": "imagenet"}
    notebook = execute(NOTEBOOK, tmp_path / "executed.ipynb", params, cwd=NOTEBOOK.parent)
    text = "\n".join(_text(c) for c in notebook.cells if c.cell_type == "code")
    assert "Notebook wall time" in text and "preset 'smoke'" in text
    # The S2 summary sentence states exactly the accuracy stored in S2's result file.
    record = json.loads(next(results.glob("S2-*.json")).read_text())["record"]
    assert f"{pct(record['test']['acc_after'])} ± {pct(record['test']['ci_after'])}" in text
    # Offline, S3/S4 must say where their body came from, after a visible notice.
    assert "NOTICE: ImageNet weights are unavailable" in text or "ImageNet (torchvision)" in text
    counts = [c.execution_count for c in notebook.cells if c.cell_type == "code"]
    assert counts == sorted(counts) and None not in counts


def test_committed_notebook_is_clean():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
    counts = [c.execution_count for c in code if c.execution_count is not None]
    assert counts == sorted(counts)
    stripped = strip_volatile(nbformat.reads(nbformat.writes(notebook), as_version=4))
    assert stripped == notebook, "volatile metadata is committed: regenerate with `make notebook`"
    assert Path(NOTEBOOK).stat().st_size < 5 * 2**20
