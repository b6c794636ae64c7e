"""Execute the tutorial notebook headless, exactly as committed, and commit its outputs cleanly.

ANIL (Raghu et al., arXiv:1909.09157) tutorial. ``python -m utils.notebook_tools run-and-commit --preset quick``
runs ``anil_on_omniglot.ipynb`` top to bottom with nbclient, *without* injecting any cell: the preset, data
folder and result options reach the ``parameters`` cell through environment variables (:data:`ENV`), so the
committed notebook is byte-for-byte the one that ran, and opening it in Jupyter and pressing "Run All" runs the
same code. The run happens in the project root; afterwards the tool checks that no cell raised, strips
volatile metadata (timings, kernel details) so that diffs show only real changes, and replaces the notebook
atomically. ``make notebook`` calls it; ``make run`` (papermill, into ``executed/``) stays for readers who
prefer ``-p`` overrides.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from utils.io import atomic_write_text

NOTEBOOK = Path(__file__).resolve().parents[1] / "anil_on_omniglot.ipynb"
VOLATILE_CELL_KEYS = ("papermill", "execution", "ExecuteTime")
# What the parameters cell reads from the environment (see the notebook): option -> variable.
ENV = {"preset": "ANIL_PRESET", "data_root": "OMNIGLOT_ROOT", "reuse_results": "ANIL_REUSE_RESULTS",
       "results_dir": "ANIL_RESULTS_DIR", "headless": "ANIL_HEADLESS"}
CELL_TIMEOUT_S = 4 * 3600


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the kernel (it inherits ours) and restore them afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def execute(source: Path, env: Mapping[str, str], cwd: Path | None = None,
            timeout: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """Run the notebook at ``source`` as it is (nothing injected) with extra environment ``env``.

    Args:
        source: the notebook file; it is read, not modified.
        env: environment variables for the kernel, e.g. ``{"ANIL_PRESET": "smoke"}``.
        cwd: working directory of the kernel (default: the notebook's folder).
        timeout: seconds allowed per cell.

    Returns:
        The executed notebook (in memory).

    Raises:
        RuntimeError: naming the cells that produced an error output.
    """
    notebook = nbformat.read(source, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or source.parent)}})
    with environment(env):
        client.execute()
    errors = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    if errors:
        raise RuntimeError(f"Cells {errors} of {source.name} raised errors.")
    return notebook


def cell_seconds(notebook: nbformat.NotebookNode) -> dict[int, float]:
    """Seconds each executed code cell took, from nbclient's timing metadata, by cell index (call before
    :func:`strip_volatile`, which removes that metadata)."""
    seconds = {}
    for index, cell in enumerate(notebook.cells):
        timing = cell.metadata.get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if cell.cell_type == "code" and start and end:
            seconds[index] = (datetime.fromisoformat(end.replace("Z", "+00:00"))
                              - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    return seconds


def slowest_cells(notebook: nbformat.NotebookNode, count: int = 12) -> str:
    """A few lines naming the ``count`` slowest code cells (seconds, index, first source line)."""
    seconds = cell_seconds(notebook)
    lines = [f"{seconds[i]:7.1f} s  cell {i:>3}  {notebook.cells[i].source.splitlines()[0][:70]}"
             for i in sorted(seconds, key=seconds.get, reverse=True)[:count]]
    return "\n".join([f"Slowest cells ({sum(seconds.values()):.0f} s in all cells):", *lines])


def strip_volatile(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove run-specific metadata (timings, papermill bookkeeping); keep outputs and execution counts."""
    notebook.metadata.pop("papermill", None)
    for cell in notebook.cells:
        for key in VOLATILE_CELL_KEYS:
            cell.metadata.pop(key, None)
    return notebook


def run_and_commit(preset: str, data_root: str, notebook: Path = NOTEBOOK) -> float:
    """Execute ``notebook`` with ``preset`` from scratch (no cached results) and replace it; returns seconds."""
    started = time.perf_counter()
    env = {ENV["preset"]: preset, ENV["data_root"]: data_root, ENV["reuse_results"]: "0", ENV["headless"]: "1"}
    executed = execute(notebook, env, cwd=notebook.parent)
    print(slowest_cells(executed), flush=True)
    atomic_write_text(notebook, nbformat.writes(strip_volatile(executed)))
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
