"""Execute the tutorial notebook headless, exactly as committed, and commit its outputs cleanly.

ANIL (Raghu et al., arXiv:1909.09157) tutorial. ``python -m utils.notebook_tools run-and-commit --preset quick``
runs ``anil_on_omniglot.ipynb`` top to bottom with nbclient, *without* injecting any cell: the preset, data
folder and result options reach the ``parameters`` cell through environment variables (:data:`ENV`), so the
committed notebook is byte-for-byte the one that ran, and opening it in Jupyter and pressing "Run All" runs the
same code. The run happens in the project root; afterwards the tool checks that no cell raised, strips
volatile metadata (timings, kernel details) so that diffs show only real changes, and replaces the notebook
atomically. Progress bars are dropped from the committed outputs: a static viewer (GitHub) shows a tqdm widget
as its first frame, "0%", while every loop also prints a one-line summary that stays. With the ``full`` preset
the run's headline numbers (``results/headline-full.json``, written by the notebook) become the converged
reference (:data:`CONVERGED_REFERENCE`), with the date and commit added. ``make notebook`` calls it;
``make run`` (papermill, into ``executed/``) stays for readers who prefer ``-p`` overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from utils.io import atomic_write_text

NOTEBOOK = Path(__file__).resolve().parents[1] / "anil_on_omniglot.ipynb"
CONVERGED_REFERENCE = NOTEBOOK.parent / "evaluation" / "converged_reference.json"
REFERENCE_PRESET = "full"  # the preset whose run is committed and serves as every other run's reference
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_PROGRESS_BAR = re.compile(r"^[^\n]*:\s*\d+%\|")  # tqdm's meter: "Training S1:   0%|      | 0/100 [..."
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


def drop_progress_bars(notebook: nbformat.NotebookNode) -> int:
    """Remove tqdm's widget outputs and the saved widget state; returns how many outputs were removed.

    A static viewer shows such an output as its text fallback, the bar's first frame ("0%"), whatever the loop
    did; the one-line summaries that the loops print stay.
    """
    removed = 0
    for cell in notebook.cells:
        kept = [o for o in cell.get("outputs", [])
                if not (WIDGET_VIEW in o.get("data", {})
                        and _PROGRESS_BAR.match("".join(o["data"].get("text/plain", ""))))]
        removed += len(cell.get("outputs", [])) - len(kept)
        if cell.cell_type == "code":
            cell.outputs = kept
    notebook.metadata.pop("widgets", None)
    return removed


def git_commit(folder: Path) -> str:
    """The short commit of ``folder``'s checkout, with ``+changes`` when its code differs from that commit.

    The notebook and the converged reference are left out of the comparison: ``make notebook`` rewrites both, so
    they differ from the commit after every run whatever code produced them.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    generated = [f":(exclude,top){path.relative_to(NOTEBOOK.parent)}" for path in (NOTEBOOK, CONVERGED_REFERENCE)]
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no", "--", ":/", *generated)
                     else "")


def write_reference(headline: Path, destination: Path = CONVERGED_REFERENCE, commit: str | None = None) -> Path:
    """Copy a ``full`` run's headline numbers to the converged reference, adding the date and the commit.

    ``commit`` is the code the run started from (:func:`git_commit` before it); by default, the checkout's now.

    Raises:
        FileNotFoundError: the run wrote no headline file (it names the file and the fix).
    """
    if not headline.is_file():
        raise FileNotFoundError(f"{headline.resolve()} is missing: the notebook's last cell writes it; "
                                "run the whole notebook with the full preset first.")
    numbers = json.loads(headline.read_text(encoding="utf-8"))
    numbers |= {"date": datetime.now().date().isoformat(), "commit": commit or git_commit(destination.parent)}
    atomic_write_text(destination, json.dumps(numbers, indent=2, sort_keys=True) + "\n")
    return destination


def run_and_commit(preset: str, data_root: str, notebook: Path = NOTEBOOK) -> float:
    """Execute ``notebook`` with ``preset`` from scratch (no cached results) and replace it; returns seconds.

    A ``full`` run also refreshes the converged reference (:func:`write_reference`).
    """
    started = time.perf_counter()
    commit = git_commit(notebook.parent)  # the code that runs: edits made while it runs are not in its numbers
    results = notebook.parent / "results"
    env = {ENV["preset"]: preset, ENV["data_root"]: data_root, ENV["reuse_results"]: "0", ENV["headless"]: "1",
           ENV["results_dir"]: str(results)}
    executed = execute(notebook, env, cwd=notebook.parent)
    print(slowest_cells(executed), flush=True)
    drop_progress_bars(executed)
    atomic_write_text(notebook, nbformat.writes(strip_volatile(executed)))
    if preset == REFERENCE_PRESET:
        print(f"Converged reference: {write_reference(results / f'headline-{preset}.json', commit=commit)}")
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
