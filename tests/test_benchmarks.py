"""The benchmark suite runs end to end in its tiny CI mode and writes its table (no timing assertions)."""

from __future__ import annotations

import json

from benchmarks.run import main


def test_tiny_benchmark_prints_and_writes_its_table(tmp_path, capsys):
    table = main(["--tiny", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert {"a/b", "c/a", "d/a", "e_fo/a", "e_so/a", "floor_setting", "a/b met"} <= set(table.columns)
    assert {"e_fo_vmap/a", "e_so_vmap/a"} <= set(table.columns)  # MAML in both forms: loop and vmap
    assert (table["maml_so_vmap_ms"] > 0).all() and (table["maml_so_ms"] > 0).all()
    assert list(table.scenario) == ["S1", "S2"]
    assert (table["anil_ms"] > 0).all() and (table["floor_ms"] > 0).all()
    assert (table["anil_grouped_ms"] > 0).all()  # the tiny mode also times the grouped layout
    assert "a/b" in out and "floor chunk 5" in out
    saved = json.loads((tmp_path / "benchmark_tiny.json").read_text())
    assert saved["meta"]["tiny"] is True and len(saved["rows"]) == 2
    assert (tmp_path / "benchmark_tiny.csv").read_text().startswith("scenario,size")


def test_tuning_script_trains_and_reports_validation_and_test_rows(omniglot_root, cache_dir, tmp_path, capsys):
    from benchmarks.tune_quick import STEPS
    from benchmarks.tune_quick import main as tune

    table = tune(["--data-root", str(omniglot_root), "--cache-dir", str(cache_dir), "--inner-lr", "0.1",
                  "--iterations", "2", "--meta-batch-size", "3", "--train-k-query", "2", "--outer-lr", "0.005",
                  "--results-dir", str(tmp_path)])
    assert list(table.split) == ["validation", "test"] and (table.inner_lr == 0.1).all()
    assert (table.meta_batch_size == 3).all() and (table.train_k_query == 2).all() and (table.outer_lr == 0.005).all()
    accuracies = table[[f"steps_{s}" for s in STEPS]].to_numpy()
    assert ((accuracies >= 0) & (accuracies <= 100)).all()
    # Before adaptation the head is shared by all (randomly permuted) classes: about chance on 5-way tasks.
    assert (abs(table.steps_0 - 20) < 5).all()
    assert "steps_160" in capsys.readouterr().out
    assert (tmp_path / "tune_quick.csv").exists()


def test_batchnorm_benchmark_counts_fewer_passes_for_grouped_norm(tmp_path):
    """The written-out backward must touch the activations less often than autograd's formula, or it is no lever."""
    from benchmarks.batchnorm import main as batchnorm

    table = batchnorm(["--device", "cpu", "--sets", "2", "--images", "3", "--size", "8", "--repeats", "1",
                       "--out", str(tmp_path)]).set_index("variant")
    assert (table.ms > 0).all() and (table.kernels > 0).all()
    assert table.passes["GroupedNorm"] < table.passes["autograd"]
    assert table.kernels["GroupedNorm"] < table.kernels["autograd"]
    assert (tmp_path / "batchnorm.csv").read_text().startswith("variant,kernels,passes")


def test_full_budget_applies_the_rule_to_a_notebook_runs_cached_results(tmp_path, capsys):
    import pandas as pd
    import pytest
    from evaluation_support import fake_eval, fake_record, fake_train

    from benchmarks.full_budget import from_results
    from experiments.results import save_result
    from utils.config import resolve_config

    config = resolve_config("full", "cpu")
    for name, accs in {"S1": (0.90, 0.95, 0.952), "MAML": (0.80, 0.85, 0.90)}.items():
        history = [{"iteration": i, "acc": a, "ci": 0.01, "wall_time_s": i / 5}
                   for i, a in zip((50, 800, 1000), accs, strict=True)]
        record = fake_record(name, fake_train([1.0] * 1000, [0.5] * 1000, val_history=history), fake_eval([0.2], [0.9]))
        save_result(tmp_path / "results", record, config, iterations=1000)
    save_result(tmp_path / "results", record, resolve_config("quick", "cpu"), iterations=10)  # another preset
    out = from_results(tmp_path / "results", "full", measured=tmp_path)
    printed = capsys.readouterr().out
    assert "S1: 1000 iterations" in printed and "800->1000 gained +0.20 points -> levelled off" in printed
    assert "MAML: 1000 iterations" in printed and "800->1000 gained +5.00 points -> still rising" in printed
    curves = pd.read_csv(out)
    assert len(curves) == 6 and set(curves["scenario"]) == {"S1", "MAML"}
    assert out.name.endswith("_full_run_validation.csv")
    with pytest.raises(FileNotFoundError, match="ANIL_PRESET=paper"):
        from_results(tmp_path / "results", "paper", measured=tmp_path)
