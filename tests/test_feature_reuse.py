"""Feature reuse in MAML: linear CKA's defining properties, test-time freezing and per-layer CKA on a tiny MAML."""

from __future__ import annotations

import pytest
import torch

from algorithms.anil import ANIL
from algorithms.maml import MAML
from evaluation.feature_reuse import (
    FREEZING_COLUMNS,
    default_cka_layers,
    freezing_accuracies,
    layer_cka,
    linear_cka,
    paired_summary,
)
from report.plots import plot_layer_cka
from utils.networks import create_anil_network
from utils.tasks import make_task_pool

SIZE = 16


def features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cka_of_a_representation_with_itself_is_one():
    x = features(40, 7, 0)
    torch.testing.assert_close(linear_cka(x, x), torch.tensor(1.0, dtype=torch.float64))


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x, y = features(50, 6, 1), features(50, 9, 2)
    q, _ = torch.linalg.qr(features(9, 9, 3))
    assert torch.allclose(q.T @ q, torch.eye(9, dtype=torch.float64))
    base = linear_cka(x, y)
    torch.testing.assert_close(linear_cka(x, y @ q), base)
    torch.testing.assert_close(linear_cka(3.7 * x, y), base)
    torch.testing.assert_close(linear_cka(x, 0.01 * y @ q), base)
    # Not invariant to an arbitrary (non-orthogonal) linear map: the property is specific.
    assert not torch.isclose(linear_cka(x, y @ features(9, 9, 4)), base)


def test_cka_equals_the_feature_space_formula_and_is_small_for_independent_features():
    x, y = features(500, 10, 5), features(500, 12, 6)
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = (yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    torch.testing.assert_close(linear_cka(x, y), expected)
    assert linear_cka(x, y) < 0.05
    with pytest.raises(ValueError, match="same n examples"):
        linear_cka(x, y[:10])


@pytest.fixture(scope="module")
def pool():
    images = torch.randint(0, 256, (12, 20, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return make_task_pool(images, 5, 3, 1, 2, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def maml():
    torch.manual_seed(0)
    body, head = create_anil_network(num_classes=3, image_size=SIZE)
    return MAML(body, head, inner_lr=0.5, inner_steps=2, layout="loop")


def test_freezing_gives_three_paired_accuracies_per_task(maml, pool):
    frame = freezing_accuracies(maml, pool, steps=2, batch_size=2, progress=False)
    assert frame.shape == (len(pool), 3) and tuple(frame.columns) == FREEZING_COLUMNS
    assert ((frame >= 0) & (frame <= 1)).all().all()
    unadapted = freezing_accuracies(maml, pool, steps=0, batch_size=3, progress=False)
    assert unadapted["all layers"].tolist() == unadapted["head only"].tolist()
    summary = paired_summary(frame)
    assert list(summary.index) == list(FREEZING_COLUMNS)
    assert summary.loc["all layers", "diff_vs_all layers"] == 0 and not summary.loc["all layers", "distinguishable"]
    torch.testing.assert_close(torch.tensor(summary["accuracy"].tolist()), torch.tensor(frame.mean().tolist()),
                               check_dtype=False)


def test_layer_cka_is_one_without_adaptation_and_lower_for_the_head_after_it(maml, pool):
    assert default_cka_layers(maml) == ["body.block1", "body.block2", "body.block3", "body.block4", "head"]
    unchanged = layer_cka(maml, pool, steps=0, batch_size=2, progress=False)
    torch.testing.assert_close(torch.tensor(unchanged["cka"].tolist()), torch.ones(5), check_dtype=False)
    adapted = layer_cka(maml, pool, steps=3, inputs="support+query", progress=False)
    assert list(adapted.index) == default_cka_layers(maml) and (adapted["tasks"] == len(pool)).all()
    assert ((adapted["cka"] > 0) & (adapted["cka"] <= 1 + 1e-9)).all()
    assert adapted.loc["head", "cka"] < 1 - 1e-6
    figure = plot_layer_cka(adapted)
    assert len(figure.axes[0].patches) == 5


def test_feature_reuse_rejects_other_learners_and_bad_arguments(maml, pool):
    anil = ANIL(*create_anil_network(num_classes=3, image_size=SIZE))
    with pytest.raises(ValueError, match="MAML"):
        freezing_accuracies(anil, pool, progress=False)
    with pytest.raises(ValueError, match="inputs must be"):
        layer_cka(maml, pool, inputs="all", progress=False)
    with pytest.raises(ValueError, match="Unknown layers"):
        layer_cka(maml, pool, layers=["body.nope"], progress=False)


def test_trained_learner_reloads_the_weights_run_scenario_trained(background28, evaluation28, tmp_path):
    from evaluation.evaluate import evaluate
    from experiments.scenarios import MAML_SPEC, analysis_tasks, make_pools, run_scenario, trained_learner
    from utils.config import PRESETS

    config = PRESETS["smoke"].replace(maml_iterations=2, maml_test_inner_steps=1, test_tasks=4, seed_test_tasks=2)
    pools = make_pools(background28, evaluation28, config)
    record = run_scenario(MAML_SPEC, config, pools, "cpu", results_dir=tmp_path, progress=False, maml_layout="loop")
    learner = trained_learner(MAML_SPEC, config, "cpu", pools=pools, results_dir=tmp_path, maml_layout="vmap")
    assert learner.adapts == "all" and learner.layout == "vmap"  # MAML, rebuilt in the requested layout
    # MAML is an analysis: scored on config.analysis_pool's tasks (the seed's 2 here, like quick's 100).
    again = evaluate(learner, analysis_tasks(pools, config), device="cpu", steps=1, progress=False)
    assert len(again.per_task_after) == 2
    assert again.per_task_after == pytest.approx(record.test.per_task_after, abs=1e-6)
