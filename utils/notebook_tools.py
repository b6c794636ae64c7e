"""Execute the tutorial notebook headless and commit its outputs cleanly (ANIL, Raghu et al., arXiv:1909.09157).

``python -m utils.notebook_tools run-and-commit --preset quick`` runs ``anil_on_omniglot.ipynb`` top to bottom with
papermill into a temporary file, checks that no cell raised, strips volatile metadata (timings, kernel details) so
that diffs show only real changes, and then replaces the notebook atomically. ``make notebook`` calls it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nbformat
import papermill

from utils.io import atomic_write_text

NOTEBOOK = Path(__file__).resolve().parents[1] / "anil_on_omniglot.ipynb"
VOLATILE_CELL_KEYS = ("papermill", "execution", "ExecuteTime")


def execute(source: Path, output: Path, parameters: dict, cwd: Path | None = None) -> nbformat.NotebookNode:
    """Run ``source`` with papermill into ``output``; raise if any cell produced an error."""
    papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name="python3",
                               cwd=str(cwd or source.parent), progress_bar=False)
    notebook = nbformat.read(output, as_version=4)
    errors = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    if errors:
        raise RuntimeError(f"Cells {errors} of {output} raised errors.")
    return notebook


def strip_volatile(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove run-specific metadata (timings, papermill bookkeeping); keep outputs and execution counts."""
    notebook.metadata.pop("papermill", None)
    for cell in notebook.cells:
        for key in VOLATILE_CELL_KEYS:
            cell.metadata.pop(key, None)
    return notebook


def run_and_commit(preset: str, data_root: str) -> float:
    """Execute the notebook with ``preset`` from scratch (no cached results) and replace it; returns seconds."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / NOTEBOOK.name
        notebook = execute(NOTEBOOK, output, {"PRESET": preset, "DATA_ROOT": data_root, "REUSE_RESULTS": False})
    atomic_write_text(NOTEBOOK, nbformat.writes(strip_volatile(notebook)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run-and-commit"])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    seconds = run_and_commit(args.preset, args.data_root)
    print(f"Executed {NOTEBOOK.name} with preset {args.preset!r} in {seconds:.0f} s and saved its outputs.")


if __name__ == "__main__":
    main()
