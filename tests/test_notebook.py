"""The committed notebook is clean and runs exactly as committed; its generated prose matches its results."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from report.narrative import pct
from report.reference import load_reference, reference_label
from utils.notebook_tools import CONVERGED_REFERENCE, NOTEBOOK, cell_seconds, execute, slowest_cells, strip_volatile

REPO = NOTEBOOK.parent
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_PLACEHOLDER = "/path/to/"
# A path from the root with at least two components, starting where a path can start (not inside a word,
# a fraction such as 1/2, an HTML closing tag, or a URL, which are removed first).
_ROOT_PATH = re.compile(r"(?:^|(?<=[\s'\"(=\[,`]))(/[\w.\-]+(?:/[\w.\-]+)+/?)")
_HOME_OF_USER = re.compile(r"(?:^|(?<=[\s'\"(=\[,`]))(~[A-Za-z_][\w.\-]*(?:/\S*)?)")
_DRIVE = re.compile(r"(?:^|(?<=[\s'\"(=\[,`]))([A-Za-z]:[\\/][^\s'\"]*)")
_TEXT_MIME = ("text/plain", "text/html", "text/markdown", "text/latex", "application/json")


def machine_paths(text: str) -> list[str]:
    """Absolute paths of a machine in ``text``: from the file-system root (``/home/ann/x``, ``/work/data``),
    of another user's home (``~ann/x``) or with a drive letter (``C:\\Users``). URLs, ``~/...`` and
    placeholders such as ``/path/to/file`` are not machine paths."""
    text = _URL.sub(" ", text)
    found = [m.group(1) for pattern in (_ROOT_PATH, _HOME_OF_USER, _DRIVE) for m in pattern.finditer(text)]
    return [path for path in found if not path.startswith(_PLACEHOLDER)]


@pytest.mark.parametrize("text", [
    "cache at /root/.cache/torch/hub/checkpoints (as x)", 'DATA_ROOT = "/work/shared/data"', "see /home/ann/x.pt",
    "C:\\Users\\ann\\data", "in ~ann/omniglot", "file D:/data/omniglot-py", "(/Users/ann/results)",
])
def test_machine_paths_finds(text):
    assert machine_paths(text)


@pytest.mark.parametrize("text", [
    'pretrained="/path/to/resnet18-f37072fd.pth"', "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "~/.cache/torch/hub", "results/S1-abc.json", "../shared/data", "5-way 1/5 shot, 3.2 it/s", "<td>0.9</td></tr>",
    "S1 / S2", "$W_1 \\propto (Y - 1/N)$", "Note: x", "http://localhost:8888/tree", "and/or", "/s",
])
def test_machine_paths_ignores(text):
    assert machine_paths(text) == []


def _output_texts(cell) -> list[str]:
    """Every textual output of a cell (images and widget state are not text a reader sees as such)."""
    texts = []
    for output in cell.get("outputs", []):
        texts.append("".join(output.get("text", "")))
        texts.append("\n".join(output.get("traceback", [])))
        texts += ["".join(v) if isinstance(v, list) else str(v)
                  for k, v in output.get("data", {}).items() if k in _TEXT_MIME]
    return texts


def notebook_problems(notebook: nbformat.NotebookNode) -> list[str]:
    """Why a notebook is not clean: injected cells, machine paths, errors, out-of-order execution counts."""
    problems = [f"cell {i} is papermill's injected-parameters cell" for i, c in enumerate(notebook.cells)
                if "injected-parameters" in c.metadata.get("tags", [])]
    for i, cell in enumerate(notebook.cells):
        for text in [cell.source, *_output_texts(cell)]:
            problems += [f"cell {i} shows the machine path {p!r}" for p in machine_paths(text)]
        problems += [f"cell {i} has an error output" for o in cell.get("outputs", []) if o.output_type == "error"]
    counts = [c.execution_count for c in notebook.cells if c.cell_type == "code" and c.execution_count is not None]
    if counts != sorted(set(counts)):
        problems.append(f"execution counts out of order: {counts}")
    return problems


def test_committed_notebook_is_clean():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert notebook_problems(notebook) == []
    code = [c for c in notebook.cells if c.cell_type == "code"]
    parameters = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and 'os.environ.get("ANIL_PRESET"' in parameters[0].source
    stripped = strip_volatile(nbformat.reads(nbformat.writes(notebook), as_version=4))
    assert stripped == notebook, "volatile metadata is committed: regenerate with `make notebook`"
    assert Path(NOTEBOOK).stat().st_size < 5 * 2**20


def _outputs_text(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(t for c in notebook.cells if c.cell_type == "code" for t in _output_texts(c))


def _configuration(notebook: nbformat.NotebookNode) -> dict[str, str]:
    """The resolved configuration as the committed notebook prints it (the table under section 2)."""
    cell = next(c for c in notebook.cells if c.cell_type == "code" and c.source.startswith("device = pick_device"))
    table = next(o for o in cell.outputs if "text/plain" in o.get("data", {}))["data"]["text/plain"]
    rows = table.splitlines()[1:]  # under the column header "value"
    return dict(line.split(maxsplit=1) for line in rows if len(line.split(maxsplit=1)) == 2)


def test_committed_notebook_is_the_converged_full_run():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    config = _configuration(notebook)
    assert config["preset"] == "full" and config["analysis_pool"] == "test"
    assert int(config["s1_iterations"]) == int(config["maml_iterations"]) >= 1000
    assert int(config["resnet_iterations"]) >= 200
    # The levelling-off rule, read by the notebook itself, holds for S1-S4 and for both sides of ANIL vs MAML.
    text = _outputs_text(notebook)
    rule = (r"^- (.+?): [\d.]+% after [\d,]+ iterations, [\d.]+% after [\d,]+: [+-][\d.]+ points"
            r"(?: \(paired 95% interval ± [\d.]+\))?, (.+)\.$")
    verdicts = re.findall(rule, text, flags=re.MULTILINE)
    assert {name for name, _ in verdicts} == {"S1", "S2", "S3", "S4", "ANIL (MAML budget)", "MAML"}
    assert not [verdict for _, verdict in verdicts if "still rising" in verdict], verdicts  # each gained < 0.5
    # Accuracy against iterations and against training seconds, for S1, S2 and MAML: one figure, two panels.
    figure = 'display(plot_validation_curves({"S1": records["S1"], "S2": records["S2"], "MAML"'
    cell = next(c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(figure))
    assert any("image/png" in o.get("data", {}) for o in cell.outputs)


def test_converged_reference_agrees_with_the_committed_notebook():
    reference = load_reference(CONVERGED_REFERENCE)
    assert reference is not None, f"{CONVERGED_REFERENCE.name} is missing: `make notebook` writes it"
    assert reference["preset"] == "full" and reference["machine"] and reference["commit"] and reference["date"]
    text = _outputs_text(nbformat.read(NOTEBOOK, as_version=4))
    accuracies = {key: value for key, value in reference.items() if key.startswith("acc")}
    assert {"acc_S1", "acc_S2", "acc_S3", "acc_S4", "acc_MAML", "acc_NIL (S2)"} <= set(accuracies)
    missing = {key: f"{100 * value:.1f}" for key, value in accuracies.items() if f"{100 * value:.1f}" not in text}
    assert not missing, f"accuracies of the reference absent from the committed notebook: {missing}"
    difference = reference["anil_minus_maml"]
    assert f"{100 * difference['mean']:+.1f} ± {100 * difference['ci']:.1f} points" in text
    assert all(f"{value:.3f}" in text for value in reference["cka"].values() if value is not None)
    assert "Notebook wall time" in text and "preset 'full'" in text


def test_the_top_of_the_notebook_names_the_run_it_shows():
    """The opening note gives the committed run's preset, budgets, wall time and CPU, checked against its outputs."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    top, text, config = notebook.cells[0].source, _outputs_text(notebook), _configuration(notebook)
    seconds = int(re.search(r"Notebook wall time: (\d+) s with preset 'full'", text).group(1))
    assert "**`full`**" in top and f"**{round(seconds / 60)} min**" in top
    assert (f"S1 and MAML trained {int(config['s1_iterations']):,} outer iterations each, "
            f"S2 {int(config['s2_iterations']):,}, S3 and S4 {int(config['resnet_iterations']):,}") in top
    isa = re.search(r"\(([^()]+)\), \d+ threads$", load_reference(CONVERGED_REFERENCE)["machine"]).group(1)
    assert all(feature in top for feature in isa.split("+")), isa  # e.g. AVX-512+AMX: "AVX-512 and AMX"
    assert "**`quick`**" in top and "ANIL_PRESET=full" in top  # what "Run All" on a CPU runs instead


def test_readme_has_no_machine_path():
    assert machine_paths((REPO / "README.md").read_text(encoding="utf-8")) == []


def test_notebook_problems_detects_each_defect():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1", execution_count=2, metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("y = 2", execution_count=1, outputs=[
            nbformat.v4.new_output("stream", text="saved to /home/ann/results\n"),
            nbformat.v4.new_output("error", ename="E", evalue="", traceback=[])]),
    ])
    problems = "\n".join(notebook_problems(notebook))
    for expected in ("injected-parameters", "/home/ann/results", "error output", "out of order"):
        assert expected in problems


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a fresh clone would have them (tracked and new, never ignored ones)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_notebook_runs_as_committed(tmp_path, omniglot_root, cache_dir, monkeypatch):
    """CI: the committed notebook, unchanged, runs top to bottom with ANIL_PRESET=smoke from a fresh copy."""
    monkeypatch.delenv("ANIL_HEADLESS", raising=False)  # the kernel inherits ours: a caller's shell may hold it
    repo = fresh_copy(tmp_path / "repo")
    committed = nbformat.read(repo / NOTEBOOK.name, as_version=4)
    env = {"ANIL_PRESET": "smoke", "OMNIGLOT_ROOT": str(omniglot_root), "OMNIGLOT_CACHE": str(cache_dir),
           "ANIL_REUSE_RESULTS": "0"}  # no ANIL_HEADLESS: the kernel shows the live widget, as for a student
    notebook = execute(repo / NOTEBOOK.name, env, cwd=repo)
    assert [c.source for c in notebook.cells] == [c.source for c in committed.cells]  # nothing injected
    counts = [c.execution_count for c in notebook.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))
    # make notebook reports the slowest cells from nbclient's timings: one non-negative time per code cell.
    seconds = cell_seconds(notebook)
    assert len(seconds) == len(counts) and min(seconds.values()) >= 0
    assert slowest_cells(notebook, count=3).count("\n") == 3
    assert notebook_problems(notebook) == []  # no error, and no path of this machine in any output
    text = "\n".join(t for c in notebook.cells if c.cell_type == "code" for t in _output_texts(c))
    assert "Notebook wall time" in text and "preset 'smoke'" in text
    # Without ANIL_HEADLESS the playground is the live widget (with its PNG fallback), as a student gets it.
    playground = next(c for c in notebook.cells if c.cell_type == "code" and c.source.startswith("show_playground("))
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in playground.outputs)
    # A shorter run reads its numbers beside the committed converged ones.
    assert f"beside the **{reference_label(load_reference(CONVERGED_REFERENCE))}**" in text
    # The S2 summary sentence states exactly the accuracy stored in S2's result file.
    record = json.loads(next((repo / "results").glob("S2-*.json")).read_text())["record"]
    assert f"{pct(record['test']['acc_after'])} ± {pct(record['test']['ci_after'])}" in text
    # Offline, S3/S4 must say where their body came from, after a visible notice.
    assert "because torchvision's ImageNet weights could not be obtained" in text or "ImageNet (torchvision)" in text
