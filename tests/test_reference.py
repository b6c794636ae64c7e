"""The converged reference: headline numbers, the file make notebook writes, and what a shorter run shows."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from report.reference import (
    beside_reference,
    headline_numbers,
    load_reference,
    reference_accuracies,
    reference_label,
    reference_status,
    save_headline,
    shows_reference,
)
from utils.notebook_tools import drop_progress_bars, git_commit, write_reference


def _numbers() -> dict:
    freezing = pd.DataFrame({"accuracy": [0.95, 0.90, 0.93], "ci": [0.01] * 3,
                             "diff_vs_all layers": [0.0, -0.05, -0.02], "diff_ci": [0.0, 0.01, 0.01]},
                            index=["all layers", "head only", "none (NIL)"])
    cka = pd.DataFrame({"cka": [0.99, 0.98, 0.97, 0.95, 0.6]},
                       index=["body.block1", "body.block2", "body.block3", "body.block4", "head"])
    return headline_numbers({"S1": 0.951, "MAML": 0.962, "NIL (S1)": 0.955}, (-0.011, 0.006, 600), freezing, cka,
                            preset="full", machine="AMD EPYC (AVX2), 2 threads")


def test_headline_numbers_hold_fractions_costs_and_cka():
    numbers = _numbers()
    assert numbers["acc_S1"] == 0.951 and numbers["acc_NIL (S1)"] == 0.955
    assert numbers["anil_minus_maml"] == {"mean": -0.011, "ci": 0.006, "tasks": 600}
    assert numbers["freezing"]["head only"]["cost"] == pytest.approx(0.05)  # a cost is the drop, positive
    assert list(numbers["cka"]) == ["body.block1", "body.block2", "body.block3", "body.block4", "head"]
    json.dumps(numbers)  # JSON-ready


def _git_repo(folder: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    return folder


def test_make_notebook_turns_a_full_headline_into_the_reference(tmp_path):
    headline = save_headline(_numbers(), tmp_path / "results")
    assert headline.name == "headline-full.json"
    destination = _git_repo(tmp_path / "repo") / "evaluation" / "converged_reference.json"
    destination.parent.mkdir()
    write_reference(headline, destination)
    reference = load_reference(destination)
    assert reference["acc_MAML"] == 0.962 and len(reference["commit"]) >= 7 and reference["date"][:2] == "20"
    assert load_reference(write_reference(headline, destination, commit="abc1234"))["commit"] == "abc1234"
    assert reference_label(reference) == (f"converged reference (full preset, AMD EPYC (AVX2), 2 threads, "
                                          f"{reference['date']})")
    shown = reference_accuracies(reference, ["S1", "S3"])
    assert shown["S1"] == 0.951 and pd.isna(shown["S3"]) and shown.name == reference_label(reference)
    assert shows_reference("quick", reference) and not shows_reference("full", reference)
    table = beside_reference({"S1": 0.9, "head only": 0.2}, reference, keys={"head only": "freezing/head only/cost"})
    assert table.loc["S1"].tolist() == [90.0, 95.1] and table.loc["head only", reference_label(reference)] == 5.0
    cka = beside_reference({"body.block1": 0.5}, reference, keys={"body.block1": "cka/body.block1"}, scale=1,
                           digits=3)
    assert cka.loc["body.block1"].tolist() == [0.5, 0.99]
    assert not shows_reference("quick", None)
    shown_line = f"Converged reference: {reference_label(reference)}, shown beside this run's numbers."
    assert reference_status("quick", reference) == shown_line
    assert "this run (preset 'full')" in reference_status("full", reference) == reference_status("full", None)
    assert reference_status("smoke", None) == "Converged reference: none committed yet."


def test_the_commit_counts_code_changes_but_not_the_files_make_notebook_rewrites(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    (repo / "evaluation").mkdir()
    for name in ("anil_on_omniglot.ipynb", "evaluation/converged_reference.json", "algorithm.py"):
        (repo / name).write_text("0\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "y"],
                   check=True)
    clean = git_commit(repo)
    assert len(clean) >= 7 and "+" not in clean
    (repo / "anil_on_omniglot.ipynb").write_text("1\n")  # a fresh run's outputs
    (repo / "evaluation" / "converged_reference.json").write_text("1\n")
    assert git_commit(repo) == clean
    (repo / "algorithm.py").write_text("1\n")  # code the commit does not hold
    assert git_commit(repo) == f"{clean}+changes"


def test_reference_errors_name_the_file(tmp_path):
    assert load_reference(tmp_path / "missing.json") is None  # no full run committed yet: nothing to show
    wrong = tmp_path / "ref.json"
    wrong.write_text(json.dumps({"preset": "quick", "acc_S1": 0.5}))
    with pytest.raises(ValueError, match=r"ref\.json.*make notebook"):
        load_reference(wrong)
    with pytest.raises(FileNotFoundError, match=r"headline-full\.json"):
        write_reference(tmp_path / "headline-full.json", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_progress_bars_leave_the_committed_outputs_and_summaries_stay():
    bar = nbformat.v4.new_output("display_data", data={
        "text/plain": "Training S1:   0%|          | 0/100 [00:00<?, ?it/s]",
        "application/vnd.jupyter.widget-view+json": {"model_id": "a", "version_major": 2, "version_minor": 0}})
    playground = nbformat.v4.new_output("display_data", data={
        "text/plain": "VBox(children=(...))", "image/png": "iVBOR",
        "application/vnd.jupyter.widget-view+json": {"model_id": "b", "version_major": 2, "version_minor": 0}})
    summary = nbformat.v4.new_output("stream", name="stdout", text="S1: 100 iterations in 24 s (4.1 it/s)\n")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[bar, summary, playground])])
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    assert drop_progress_bars(notebook) == 1
    assert notebook.cells[0].outputs == [summary, playground] and "widgets" not in notebook.metadata
