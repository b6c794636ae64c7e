"""Evaluation: confidence interval, accuracies against a per-task adapt/predict reference, NIL, the curve.

Tiny real runs on 28x28 Omniglot evaluation characters with a conv4 ANIL learner (MAML for the generic path).
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from evaluation_support import conv4, make_anil, make_pool

from algorithms.maml import MAML
from algorithms.nil import nil_logits
from evaluation.evaluate import EvalResult, confidence_interval, evaluate, evaluate_with_curve


@pytest.fixture(scope="module")
def pool(evaluation28):
    return make_pool(evaluation28, num_tasks=12, seed=3)


def reference_accuracies(learner, pool, steps: int) -> list[float]:
    """Per-task query accuracy with the learner's own adapt and predict, one task at a time."""
    accs = []
    for i in range(len(pool)):
        support_x, support_y, query_x, query_y = pool.batch([i])
        with torch.no_grad():
            logits = learner.predict(query_x, learner.adapt(support_x, support_y, steps=steps))
        accs.append((logits.argmax(-1) == query_y).float().mean().item())
    return accs


def test_confidence_interval_matches_a_hand_computation():
    mean, half_width = confidence_interval([0.2, 0.4, 0.6, 0.8])
    assert mean == pytest.approx(0.5)
    sample_std = math.sqrt(((0.3**2) * 2 + (0.1**2) * 2) / 3)  # ddof = 1
    assert half_width == pytest.approx(1.96 * sample_std / 2)
    assert half_width == pytest.approx(1.96 * statistics.stdev([0.2, 0.4, 0.6, 0.8]) / 2)
    assert half_width != pytest.approx(1.96 * statistics.pstdev([0.2, 0.4, 0.6, 0.8]) / 2)
    assert confidence_interval(torch.tensor([0.3, 0.3, 0.3])) == (pytest.approx(0.3), 0.0)
    assert math.isnan(confidence_interval([0.7])[1])
    with pytest.raises(ValueError, match="at least one"):
        confidence_interval([])


def test_evaluate_matches_per_task_adapt_and_predict(pool):
    learner = make_anil(inner_steps=3)
    result = evaluate(learner, pool, batch_size=5, device="cpu", nil=True, progress=False)  # uneven batches
    before, after = reference_accuracies(learner, pool, 0), reference_accuracies(learner, pool, 3)
    assert result.per_task_before == pytest.approx(before, abs=1e-6)
    assert result.per_task_after == pytest.approx(after, abs=1e-6)
    assert (result.num_tasks, result.n_way, result.steps) == (12, 5, 3)
    assert (result.acc_after, result.ci_after) == pytest.approx(confidence_interval(after))
    assert (result.acc_before, result.ci_before) == pytest.approx(confidence_interval(before))
    assert result.gain == pytest.approx(result.acc_after - result.acc_before)
    gains = [a - b for a, b in zip(after, before, strict=True)]
    assert result.gain_ci == pytest.approx(confidence_interval(gains)[1])
    batch = pool.batch(slice(None))
    with torch.no_grad():
        nil = (nil_logits(learner, *batch[:3]).argmax(-1) == batch.query_y).float().mean(1)
    assert result.per_task_nil == pytest.approx(nil.tolist(), abs=1e-6)
    assert EvalResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert all(p.grad is None for p in learner.trainable_parameters())  # no autograd graph was built


def test_accuracy_before_adaptation_is_chance_and_adaptation_helps(evaluation28):
    # The head at its initialisation ignores each task's random label permutation: chance on average.
    result = evaluate(
        make_anil(inner_steps=5),
        make_pool(evaluation28, 200, seed=11, k_query=2),
        batch_size=50,
        device="cpu",
        progress=False,
    )
    assert abs(result.acc_before - 1 / 5) < 0.05
    assert result.acc_after > result.acc_before + 0.05  # random conv4 features already separate characters


def test_evaluate_with_curve_equals_separate_evaluate_and_curve(pool):
    """One pass gives what the two separate calls give (the reference: each task adapted on its own)."""
    learner = make_anil(inner_steps=2)
    result, curve = evaluate_with_curve(learner, pool, 4, batch_size=5, device="cpu", steps=3, nil=True,
                                        progress=False)
    alone = evaluate(learner, pool, batch_size=5, device="cpu", steps=3, nil=True, progress=False)
    for field, value in alone.to_dict().items():
        if field != "eval_time_s":
            assert getattr(result, field) == (value if value is None else pytest.approx(value)), field
    assert result.per_task_after == pytest.approx(reference_accuracies(learner, pool, 3), abs=1e-6)
    assert result.acc_at_train_steps == pytest.approx(statistics.mean(reference_accuracies(learner, pool, 2)))
    assert len(curve) == 5
    for steps in (0, 1, 4):
        assert curve[steps] == pytest.approx(statistics.mean(reference_accuracies(learner, pool, steps)))
    with pytest.raises(ValueError, match="curve_steps"):
        evaluate_with_curve(learner, pool, -1, device="cpu")


def test_a_learner_without_the_head_path_gets_its_curve_by_adapting_afresh(evaluation28):
    """MAML adapts every layer: each point of its curve is its own adapt and predict, not a head-only shortcut."""
    maml = MAML(*conv4(seed=2), inner_lr=0.4, inner_steps=1)
    small = make_pool(evaluation28, num_tasks=4, seed=6)
    result, curve = evaluate_with_curve(maml, small, 2, device="cpu", steps=2, progress=False)
    for steps in (0, 1, 2):
        assert curve[steps] == pytest.approx(statistics.mean(reference_accuracies(maml, small, steps)))
    assert result.per_task_after == pytest.approx(reference_accuracies(maml, small, 2), abs=1e-6)


def test_maml_uses_the_generic_adapt_predict_path(evaluation28):
    maml = MAML(*conv4(), inner_lr=0.4, inner_steps=1)
    small = make_pool(evaluation28, num_tasks=4, seed=5)
    result = evaluate(maml, small, device="cpu", progress=False)
    assert result.per_task_after == pytest.approx(reference_accuracies(maml, small, 1), abs=1e-6)
    assert result.train_steps is None and result.acc_at_train_steps is None  # MAML would adapt once more
    # MAML has body features per set too, so NIL (no head, no inner loop) can score its body.
    assert evaluate(maml, small, device="cpu", nil=True, progress=False).per_task_nil is not None
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(maml, small, device="cpu", batch_size=0, progress=False)


def test_accuracy_at_the_training_steps_matches_adapt_and_predict(pool):
    learner = make_anil(inner_steps=2)
    result = evaluate(learner, pool, device="cpu", steps=4, progress=False)
    at_two = reference_accuracies(learner, pool, 2)
    assert (result.steps, result.train_steps) == (4, 2)
    assert (result.acc_at_train_steps, result.ci_at_train_steps) == pytest.approx(confidence_interval(at_two))
    assert result.per_task_after == pytest.approx(reference_accuracies(learner, pool, 4), abs=1e-6)
    same = evaluate(learner, pool, device="cpu", progress=False)  # test steps = training steps
    assert same.acc_at_train_steps == same.acc_after and same.train_steps == 2
