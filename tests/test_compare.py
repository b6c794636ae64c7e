"""Comparison table, scenario records, results cache and plots.

The table is built once from tiny real runs (two conv4 scenarios, a few iterations) and checked against
values recomputed from the records; its cross-scenario logic (ranks, overfitting flag) is checked on
hand-made records.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import warnings

import pandas as pd
import pytest
import torch
from evaluation_support import fake_eval, fake_record, fake_train, make_anil, make_pool, run
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.evaluate import evaluate_with_curve
from experiments.records import ScenarioRecord
from experiments.results import load_cached, result_key, result_path, save_result, save_table
from report.compare import (
    FINAL_LOSS,
    INITIAL_LOSS,
    OVERFIT_RULE,
    REQUIRED_ROWS,
    comparison_table,
    distinct_tasks_seen,
    equal_budget_points,
    format_table,
    loss_window_size,
    smoothed_loss,
    tasks_seen,
    training_accuracy,
)
from report.plots import (
    plot_accuracy,
    plot_adaptation_curves,
    plot_cost,
    plot_training_curves,
    plot_validation_curves,
    smooth,
)
from utils.config import PRESETS
from utils.networks import parameter_table

SOURCE = "Omniglot background, supervised"


@pytest.fixture(scope="module")
def records(background28, evaluation28) -> dict[str, ScenarioRecord]:
    """S1 (conv4, full ANIL) and S2 (conv4, frozen body) from real 3-iteration runs on the same tasks, validated
    after iterations 2 and 3 (S2) or 3 (S1)."""
    train_pool, test_pool = make_pool(background28, 8, seed=0), make_pool(evaluation28, 10, seed=1)
    val_pool = make_pool(background28, 4, seed=9)
    out = {}
    for name, freeze, source, every in (("S1", False, "random", 3), ("S2", True, SOURCE, 2)):
        learner = make_anil(freeze_body=freeze)
        train_result = run(learner, train_pool, iterations=3, scenario=name, val_pool=val_pool, val_every=every)
        test, curve = evaluate_with_curve(learner, test_pool, 3, device="cpu", nil=True, progress=False)
        out[name] = ScenarioRecord(
            name=name,
            description=f"conv4, {'frozen body' if freeze else 'full ANIL'}",
            architecture="conv4",
            pretrained_source=source,
            params=parameter_table(learner.body, learner.head),
            train=train_result,
            test=test,
            train_tasks=len(train_pool),
            adaptation_curve=curve,
            meta_batch_size=2,
        )
    return out


def test_table_has_every_row_and_one_column_per_scenario(records):
    table = comparison_table(records)
    assert list(table.columns) == ["S1", "S2"]
    assert list(table.index) == list(REQUIRED_ROWS)
    for needed in (
        "Parameters: BatchNorm",
        "Loss: best (minimum)",
        "Speed-up vs reference (it/s ratio)",
        "95% CI (±, after adaptation)",
        "Rank: memory (1 = least, CUDA only)",
        "Meta-overfitting flag",
        "Params/task ratio (trainable / distinct tasks seen)",
        "Training tasks: seen (iterations × meta-batch)",
        "Train–test accuracy gap (same inner steps)",
        "GPU utilisation (%)",
    ):
        assert needed in table.index
    assert any("11,182,405" in note for note in table.attrs["notes"]) and OVERFIT_RULE in table.attrs["notes"]


def test_table_values_follow_from_the_records(records):
    table = comparison_table(records)
    for name, record in records.items():
        column = table[name]
        assert column["Pretraining source"] == record.pretrained_source
        assert column["Parameters: trainable"] == record.params["trainable"]
        # 3 iterations of 2 tasks from a pool of 8: 6 tasks seen, all distinct.
        assert column["Training tasks: seen (iterations × meta-batch)"] == 6
        assert column["Training tasks: distinct seen"] == 6 and column["Training tasks: pool"] == 8
        assert column["Params/task ratio (trainable / distinct tasks seen)"] == pytest.approx(
            record.params["trainable"] / 6
        )
        assert column[INITIAL_LOSS] == record.train.losses[0]  # 3 iterations: one, so the two ends never overlap
        assert column["Inner steps: training"] == 2 and column["Inner steps: test"] == 2
        assert column["Loss: best (minimum)"] == min(record.train.losses)
        assert column["Loss: maximum"] == max(record.train.losses)
        assert column["Accuracy after adaptation"] == record.test.acc_after
        assert column["Adaptation gain"] == pytest.approx(record.test.acc_after - record.test.acc_before)
        assert column["NIL accuracy (no inner loop)"] == record.test.nil_acc
        assert column["GPU utilisation (%)"] is None and column["Memory measure"] == "peak process RSS"
        assert column["Rank: memory (1 = least, CUDA only)"] is None  # a CPU process RSS ranks the run order
        assert column["Accuracy after the training's inner steps"] == record.test.acc_at_train_steps
        assert column["Train–test accuracy gap (same inner steps)"] == pytest.approx(
            training_accuracy(record.train) - record.test.acc_at_train_steps
        )
    assert table.loc["Parameters: trainable", "S2"] < table.loc["Parameters: trainable", "S1"]  # frozen body
    assert table.loc["Speed-up vs reference (it/s ratio)", "S1"] == pytest.approx(1.0)
    speed_ratio = records["S2"].train.iterations_per_s / records["S1"].train.iterations_per_s
    assert table.loc["Speed-up vs reference (it/s ratio)", "S2"] == pytest.approx(speed_ratio)
    assert sorted(table.loc["Rank: test accuracy (1 = highest)"]) in ([1, 2], [1, 1])
    shown = format_table(table)
    assert shown.loc["GPU utilisation (%)", "S1"] == "n/a"
    assert shown.loc["Parameters: total", "S1"] == f"{records['S1'].params['total']:,}"
    assert shown.loc["Meta-overfitting flag", "S1"] in ("yes", "no")


def test_ranks_ratios_and_overfitting_flag_on_hand_made_records():
    chance = [0.2] * 4
    cuda = "cuda_max_allocated"
    records = {
        # Best final loss, but test accuracy below the median: flagged by the second rule.
        "A": fake_record("A", fake_train([2.0, 0.1], [0.5, 0.55], its=10, memory=400, memory_kind=cuda),
                         fake_eval(chance, [0.5] * 4)),
        # Training accuracy 0.95 vs test 0.7 at the training's steps: gap 0.25 > 0.10, flagged by the first rule.
        "B": fake_record("B", fake_train([2.0, 0.5], [0.9, 0.95], its=20, memory=200, memory_kind=cuda),
                         fake_eval(chance, [0.9] * 4, at_train_steps=0.7)),
        "C": fake_record("C", fake_train([2.0, 0.9], [0.6, 0.65], its=5, memory=800, memory_kind=cuda),
                         fake_eval(chance, [0.6] * 4)),
    }
    table = comparison_table(records, reference="C")
    assert table.loc["Meta-overfitting flag"].tolist() == [True, True, False]
    assert table.loc["Train–test accuracy gap (same inner steps)"].tolist() == pytest.approx([0.05, 0.25, 0.05])
    assert table.loc["Rank: training loss (final, 1 = lowest)"].tolist() == [1, 2, 3]
    assert table.loc["Rank: test accuracy (1 = highest)"].tolist() == [3, 1, 2]
    assert table.loc["Rank: speed (1 = fastest)"].tolist() == [2, 1, 3]
    assert table.loc["Rank: memory (1 = least, CUDA only)"].tolist() == [2, 1, 3]
    assert table.loc["Speed-up vs reference (it/s ratio)"].tolist() == pytest.approx([2.0, 4.0, 1.0])
    assert table.loc["Memory vs reference (ratio, CUDA only)"].tolist() == pytest.approx([0.5, 0.25, 1.0])
    assert training_accuracy(records["B"].train) == 0.95  # last 10% of 2 iterations: the last one
    assert training_accuracy(records["B"].train, "first") == 0.9
    assert table.loc["Training accuracy (first 10% of iterations)"].tolist() == [0.5, 0.9, 0.6]
    with pytest.raises(ValueError, match="reference 'S9'"):
        comparison_table(records, reference="S9")


def test_scenario_record_json_round_trip(records):
    record = records["S2"]
    assert ScenarioRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert "conv4" in record.label and SOURCE in record.label


def test_cached_result_is_reused_only_for_the_same_configuration(records, tmp_path):
    config, record = PRESETS["smoke"], records["S1"]
    path = save_result(tmp_path, record, config, pretrained_source=record.pretrained_source)
    assert path.is_file() and path.with_suffix(".csv").is_file()
    key = result_key(config, "S1", pretrained_source=record.pretrained_source)
    assert load_cached(tmp_path, "S1", key) == record
    changed = result_key(config.replace(inner_lr=config.inner_lr / 2), "S1", pretrained_source=SOURCE)
    assert changed != key and load_cached(tmp_path, "S1", changed) is None
    assert result_key(config, "S1", pretrained_source="ImageNet (torchvision)") != key
    history = pd.read_csv(path.with_suffix(".csv"))
    assert history["loss"].tolist() == pytest.approx(record.train.losses)


def test_stale_or_corrupt_cached_result_is_ignored_with_a_warning(records, tmp_path):
    config = PRESETS["smoke"]
    path = save_result(tmp_path, records["S1"], config)
    key = result_key(config, "S1")
    document = json.loads(path.read_text())
    document["config"]["inner_lr"] = 123.0  # stored configuration no longer matches the key in the name
    path.write_text(json.dumps(document))
    with pytest.warns(UserWarning, match="does not hash to its key"):
        assert load_cached(tmp_path, "S1", key) is None
    path.write_text('{"format": 1, "key": "trunc')
    before = path.read_bytes()
    with pytest.warns(UserWarning, match="unreadable"):
        assert load_cached(tmp_path, "S1", key) is None
    assert path.read_bytes() == before  # never rewritten by a load
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_cached(tmp_path / "missing", "S1", key) is None  # missing: silent
    assert result_path(tmp_path, "S3: ResNet18 (ImageNet)", "abc").name == "S3-ResNet18-ImageNet-abc.json"


def test_save_table_writes_csv_and_json(records, tmp_path):
    csv_path, json_path = save_table(comparison_table(records), tmp_path, "comparison")
    read_back = pd.read_csv(csv_path, index_col=0)
    assert list(read_back.columns) == ["S1", "S2"] and list(read_back.index) == list(REQUIRED_ROWS)
    document = json.loads(json_path.read_text())
    assert set(document["table"]) == {"S1", "S2"} and document["notes"]


def test_plots_are_figures_labelled_with_the_pretraining_source(records):
    for plot in (plot_training_curves, plot_accuracy, plot_cost, plot_adaptation_curves, plot_validation_curves):
        figure = plot(records)
        assert isinstance(figure, Figure)
        texts = [t.get_text() for ax in figure.axes for t in ax.get_xticklabels()]
        texts += [t.get_text() for ax in figure.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        assert any(SOURCE in " ".join(text.split()) for text in texts), plot.__name__  # labels may be wrapped
        figure.savefig(io.BytesIO(), format="png")  # renders headless
    assert smooth([1.0, 0.0], alpha=0.5).tolist() == pytest.approx([1.0, 1 / 3])  # bias-corrected EMA
    by_iteration, by_time = plot_validation_curves(records).axes  # both panels: the runs recorded their times
    assert [c.lines[0].get_xdata().tolist() for c in by_iteration.containers] == [[3], [2, 3]]  # S2: also its last
    assert by_time.get_xlabel().startswith("training time")
    with pytest.raises(ValueError, match="val_every"):
        plot_validation_curves(_five_scenarios())


def test_long_adaptation_curves_get_a_symlog_axis_with_plain_step_labels():
    short = fake_record("S1", fake_train([1.0, 0.5], [0.4, 0.6]), fake_eval([0.2, 0.2], [0.6, 0.8]))
    long = dataclasses.replace(short, name="S2", adaptation_curve=[0.2 + 0.01 * s for s in range(51)])
    short = dataclasses.replace(short, adaptation_curve=[0.2, 0.5, 0.6])
    assert plot_adaptation_curves({"S1": short}).axes[0].get_xscale() == "linear"
    axis = plot_adaptation_curves({"S1": short, "S2": long}).axes[0]
    assert axis.get_xscale() == "symlog"
    assert [t.get_text() for t in axis.get_xticklabels()] == ["0", "1", "2", "5", "10", "20", "50"]


def test_run_scenario_evaluates_each_side_at_its_own_test_steps(background28, evaluation28, tmp_path):
    """ANIL scenarios adapt for ``test_inner_steps``; both sides of the MAML comparison for ``maml_test_inner_steps``.

    Also checks the cache round trip: a second call with ``reuse=True`` returns the stored record unchanged.
    """
    from experiments.scenarios import (
        ANIL_AT_MAML_BUDGET,
        MAML_SPEC,
        SCENARIOS,
        analysis_tasks,
        make_pools,
        on_analysis_tasks,
        run_scenario,
    )

    config = PRESETS["smoke"].replace(s2_iterations=1, maml_iterations=1, test_inner_steps=3,
                                      maml_test_inner_steps=1, test_tasks=4, seed_test_tasks=2, curve_steps=2)
    assert config.analysis_pool == "test_seed"  # smoke, like quick, runs its analyses on the seed's tasks
    pools = make_pools(background28, evaluation28, config)
    assert analysis_tasks(pools, config) is pools.test_seed
    assert analysis_tasks(pools, config.replace(analysis_pool="test")) is pools.test
    with pytest.raises(ValueError, match="analysis_pool must be one of"):
        config.replace(analysis_pool="val")
    steps, records = {}, {}
    for spec in (SCENARIOS["S2"], ANIL_AT_MAML_BUDGET, MAML_SPEC):
        records[spec.name] = record = run_scenario(spec, config, pools, "cpu", results_dir=tmp_path, progress=False)
        steps[spec.name] = (record.test.steps, record.test_seed.steps)
        # The MAML comparison is an analysis: evaluated once, on the seed's 2 tasks; S2 on all 4 and on those 2.
        assert record.test.num_tasks == (2 if spec.analysis else 4) and record.test_seed.num_tasks == 2
        assert (record.test is record.test_seed) == spec.analysis
    # Paired with S2 on the same tasks: S2's evaluation on the analysis tasks is its seed-task evaluation.
    assert on_analysis_tasks(records["S2"], config) is records["S2"].test_seed
    assert on_analysis_tasks(records["S2"], config.replace(analysis_pool="test")) is records["S2"].test
    assert steps == {"S2": (3, 3), ANIL_AT_MAML_BUDGET.name: (1, 1), MAML_SPEC.name: (1, 1)}
    assert len(records["S2"].adaptation_curve) == config.curve_steps + 1
    assert records[MAML_SPEC.name].adaptation_curve is None
    again = run_scenario(SCENARIOS["S2"], config, pools, "cpu", results_dir=tmp_path, progress=False)
    assert again.test.per_task_after == records["S2"].test.per_task_after
    # The trained learner is saved with the result: rebuilt, it scores the stored per-task accuracies again.
    from evaluation.evaluate import evaluate
    from experiments.scenarios import trained_learner

    rebuilt = trained_learner(SCENARIOS["S2"], config, torch.device("cpu"), results_dir=tmp_path)
    rescored = evaluate(rebuilt, pools.test, device="cpu", steps=config.test_inner_steps, progress=False)
    assert rescored.per_task_after == records["S2"].test.per_task_after
    with pytest.raises(FileNotFoundError, match="run run_scenario"):
        trained_learner(SCENARIOS["S1"], config, torch.device("cpu"), results_dir=tmp_path)


def _five_scenarios() -> dict[str, ScenarioRecord]:
    sources = ["random", "random", SOURCE, SOURCE, "random"]
    archs = ["conv4", "conv4", "resnet18", "resnet18", "conv4"]
    out = {}
    for i, name in enumerate(["S1", "S2", "S3", "S4", "ANIL (MAML budget)"]):
        record = fake_record(name, fake_train([1.0, 0.5], [0.4, 0.6]), fake_eval([0.2] * 3, [0.8] * 3), sources[i])
        out[name] = dataclasses.replace(record, architecture=archs[i])
    return out


@pytest.mark.parametrize("plot", [plot_accuracy, plot_cost])
def test_bar_labels_of_five_scenarios_do_not_overlap(plot):
    figure = plot(_five_scenarios())
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # lays the labels out
    renderer = canvas.get_renderer()
    for ax in figure.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert len(boxes) == 5
        for left, right in itertools.pairwise(boxes):
            assert left.x1 < right.x0, (plot.__name__, left, right)


def test_tasks_seen_are_capped_by_the_pool_and_unknown_without_a_meta_batch_size():
    record = fake_record("S", fake_train([1.0] * 30, [0.5] * 30), fake_eval([0.2], [0.8]), meta_batch_size=16)
    assert tasks_seen(record) == 480 and distinct_tasks_seen(record) == 100  # pool of 100, 30 x 16 drawn
    unknown = dataclasses.replace(record, meta_batch_size=None)
    assert tasks_seen(unknown) is None and distinct_tasks_seen(unknown) is None
    column = comparison_table({"S": unknown})["S"]
    assert column["Params/task ratio (trainable / distinct tasks seen)"] is None
    assert ScenarioRecord.from_dict({k: v for k, v in unknown.to_dict().items() if k != "meta_batch_size"}) == unknown


def test_initial_and_final_losses_are_means_of_the_first_and_last_five_percent():
    losses = [3.0] * 5 + [2.0] * 90 + [1.0, 1.2, 0.8, 1.0, 5.0]  # one noisy last iteration
    assert smoothed_loss(losses, "first") == pytest.approx(3.0)
    assert smoothed_loss(losses, "last") == pytest.approx(1.8)
    assert smoothed_loss([2.0, 4.0], "last") == 4.0  # at least one iteration
    record = fake_record("S", fake_train(losses, [0.5] * 100), fake_eval([0.2], [0.8]))
    assert comparison_table({"S": record}).loc[FINAL_LOSS, "S"] == pytest.approx(1.8)
    # A short run (the quick preset's 10 ResNet iterations): 5% would be one noisy iteration, so 5 are averaged.
    short = [4.0, 3.0, 3.0, 3.0, 2.0, 9.0, 1.0, 1.0, 1.0, 3.0]
    assert (loss_window_size(10), loss_window_size(4), loss_window_size(1)) == (5, 2, 1)
    assert smoothed_loss(short, "first") == pytest.approx(3.0) and smoothed_loss(short, "last") == pytest.approx(3.0)


def test_gap_is_not_measured_without_the_accuracy_at_the_training_steps():
    test = dataclasses.replace(fake_eval([0.2] * 2, [0.9] * 2), acc_at_train_steps=None, train_steps=None)
    record = fake_record("MAML", fake_train([1.0, 0.5], [0.99, 0.99]), test)
    row = "Train–test accuracy gap (same inner steps)"
    table = comparison_table({"MAML": record})
    assert math.isnan(table.loc[row, "MAML"]) and format_table(table).loc[row, "MAML"] == "n/a"
    assert table.loc["Meta-overfitting flag", "MAML"] == False  # noqa: E712 (a numpy bool)


def test_equal_budget_points_at_equal_iterations_and_equal_time():
    def history(points):
        return [{"iteration": i, "acc": a, "ci": 0.01, "wall_time_s": t, "per_task": [a] * 3} for i, t, a in points]

    s1 = fake_train([1.0] * 400, [0.5] * 400, val_history=history([(300, 52.0, 0.90)]))
    s2 = fake_train([1.0] * 1200, [0.5] * 1200,
                    val_history=history([(300, 45.0, 0.91), (600, 90.0, 0.93), (900, 135.0, 0.94)]))
    points = equal_budget_points(s1, s2)
    assert [p.iteration for p in points["iterations"]] == [300, 300]
    assert [p.iteration for p in points["time"]] == [300, 300]  # S2's next validation (90 s) exceeds S1's 52 s
    longer = fake_train([1.0] * 400, [0.5] * 400, val_history=history([(300, 100.0, 0.90)]))
    assert [p.iteration for p in equal_budget_points(longer, s2)["time"]] == [300, 600]
    untimed = fake_train([1.0], [0.5], val_history=[{"iteration": 300, "acc": 0.9, "ci": 0.01}])
    assert equal_budget_points(untimed, s2)["time"] is None
    assert equal_budget_points(untimed, s2)["iterations"][0].per_task is None
    assert equal_budget_points(fake_train([1.0], [0.5]), s2) == {"iterations": None, "time": None}


def test_untrained_body_adapts_a_zero_head_and_the_frozen_batchnorm_ablation_trains_only_the_head(evaluation28):
    from algorithms.anil import ANIL
    from experiments.scenarios import ABLATIONS, build_network, evaluate_untrained_head, make_learner

    config = PRESETS["smoke"].replace(test_inner_steps=3)
    pool = make_pool(evaluation28, 6, seed=2)
    body, _ = build_network("conv4", config)
    state = {k: v.clone() for k, v in body.state_dict().items()}
    result = evaluate_untrained_head(state, "random", config, pool, "cpu", architecture="conv4", progress=False)
    assert result.per_task_before == pytest.approx([0.2] * 6)  # equal logits: class 0, 1 query in 5
    assert result.steps == 3 and result.nil_acc is not None and result.per_task_nil is not None
    reference_body, head = build_network("conv4", config, state)
    head.weight.data.zero_()
    head.bias.data.zero_()
    learner = ANIL(reference_body, head, config.inner_lr, inner_steps=config.inner_steps)
    expected = []
    for i in range(len(pool)):
        support_x, support_y, query_x, query_y = pool.batch([i])
        with torch.no_grad():
            logits = learner.predict(query_x, learner.adapt(support_x, support_y, steps=3))
        expected.append((logits.argmax(-1) == query_y).float().mean().item())
    assert result.per_task_after == pytest.approx(expected, abs=1e-6)

    spec = ABLATIONS["S4 (BatchNorm frozen)"]
    ablation = make_learner(spec, *build_network(spec.architecture, config), config)
    assert ablation.trainable_parameters() == list(ablation.head.parameters())
    assert parameter_table(ablation.body, ablation.head)["trainable"] == 2565  # ResNet18's 5-way head only
