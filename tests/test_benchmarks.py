"""The benchmark suite runs end to end in its tiny CI mode and writes its table (no timing assertions)."""

from __future__ import annotations

import json

from benchmarks.run import main


def test_tiny_benchmark_prints_and_writes_its_table(tmp_path, capsys):
    table = main(["--tiny", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert {"a/b", "c/a", "d/a", "e_fo/a", "e_so/a", "floor_setting", "a/b met"} <= set(table.columns)
    assert list(table.scenario) == ["S1", "S2"]
    assert (table["anil_ms"] > 0).all() and (table["floor_ms"] > 0).all()
    assert "a/b" in out and "floor chunk 5" in out
    saved = json.loads((tmp_path / "benchmark_tiny.json").read_text())
    assert saved["meta"]["tiny"] is True and len(saved["rows"]) == 2
    assert (tmp_path / "benchmark_tiny.csv").read_text().startswith("scenario,size")
