"""NIL (Raghu et al., ICLR 2020, section 5.1) against a per-example loop, and the one-step prototype identity.

The references here are plain Python loops over tasks, queries and support examples in float64, independent of
the batched matrix products in :mod:`algorithms.nil` and :mod:`algorithms.anil`.
"""

from __future__ import annotations

import math

import pytest
import torch
from evaluation_support import make_anil, make_pool

from algorithms.anil import HeadParams, inner_loop
from algorithms.nil import NIL, nil_logits, nil_scores_from_features
from evaluation.evaluate import evaluate


def loop_scores(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int, rule: str):
    """NIL scores one task, one query, one support example at a time (float64)."""
    support, query = support.double(), query.double()
    out = torch.zeros(query.shape[0], query.shape[1], n_way, dtype=torch.float64)
    for t in range(query.shape[0]):
        for q in range(query.shape[1]):
            cos = [
                float(query[t, q] @ s) / (float(query[t, q].norm()) * float(s.norm())) for s in support[t]
            ]
            if rule == "attention":
                total = sum(math.exp(c) for c in cos)
                cos = [math.exp(c) / total for c in cos]
            for i, c in enumerate(cos):
                out[t, q, int(labels[t, i])] += c
    return out


def loop_prototype_scores(support, labels, query, n_way):
    """Cosine to each class's mean support feature, one task, query and class at a time (float64)."""
    support, query = support.double(), query.double()
    out = torch.zeros(query.shape[0], query.shape[1], n_way, dtype=torch.float64)
    for t in range(query.shape[0]):
        for c in range(n_way):
            members = [support[t, i] for i in range(support.shape[1]) if int(labels[t, i]) == c]
            proto = sum(members) / len(members)
            for q in range(query.shape[1]):
                out[t, q, c] = float(query[t, q] @ proto) / (float(query[t, q].norm()) * float(proto.norm()))
    return out


def random_task(tasks: int, n_way: int, k_shot: int, n_query: int, features: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randperm(n_way * k_shot, generator=g) % n_way for _ in range(tasks)])
    support = torch.randn(tasks, n_way * k_shot, features, generator=g)
    query = torch.randn(tasks, n_query, features, generator=g)
    return support, labels, query


@pytest.mark.parametrize("rule", ["similarity", "attention"])
def test_label_weighting_rules_match_a_per_example_loop(rule):
    support, labels, query = random_task(tasks=3, n_way=4, k_shot=3, n_query=5, features=7, seed=0)
    scores = nil_scores_from_features(support, labels, query, 4, rule)
    assert scores.shape == (3, 5, 4)
    torch.testing.assert_close(scores.double(), loop_scores(support, labels, query, 4, rule), atol=1e-5, rtol=1e-5)


def test_prototype_rule_matches_a_per_class_loop():
    support, labels, query = random_task(tasks=2, n_way=3, k_shot=4, n_query=6, features=5, seed=1)
    scores = nil_scores_from_features(support, labels, query, 3, "prototype")
    torch.testing.assert_close(scores.double(), loop_prototype_scores(support, labels, query, 3), atol=1e-5, rtol=1e-5)


def test_paper_rule_differs_from_prototypes_at_k_greater_than_one():
    # Class 0: support at 0° and 90° (mean at 45°); class 1: twice the same point at 30°. A query at 45° is
    # closest to class 0's prototype (cos 0° = 1 against cos 15° = 0.966), but the summed per-example cosines
    # favour class 1 (2 cos 15° = 1.93 against 2 cos 45° = 1.41).
    angle = torch.tensor([0.0, 90.0, 30.0, 30.0]).deg2rad()
    support = torch.stack([angle.cos(), angle.sin()], -1).unsqueeze(0)  # (1, 4, 2)
    labels = torch.tensor([[0, 0, 1, 1]])
    query = torch.tensor([[[1.0, 1.0]]])
    assert nil_scores_from_features(support, labels, query, 2, "prototype").argmax(-1).item() == 0
    assert nil_scores_from_features(support, labels, query, 2, "similarity").argmax(-1).item() == 1


def test_all_rules_agree_at_one_shot():
    support, labels, query = random_task(tasks=4, n_way=5, k_shot=1, n_query=10, features=8, seed=2)
    similarity = nil_scores_from_features(support, labels, query, 5, "similarity")
    torch.testing.assert_close(similarity, nil_scores_from_features(support, labels, query, 5, "prototype"))
    attention = nil_scores_from_features(support, labels, query, 5, "attention")
    assert torch.equal(attention.argmax(-1), similarity.argmax(-1))


def test_nil_learner_plugs_into_evaluate_and_matches_nil_logits(evaluation28):
    anil = make_anil()
    pool = make_pool(evaluation28, num_tasks=6, seed=4)
    result = evaluate(NIL(anil), pool, device="cpu", progress=False)
    reference = evaluate(anil, pool, device="cpu", nil=True, progress=False)
    assert result.per_task_after == pytest.approx(reference.per_task_nil)
    assert result.per_task_before == result.per_task_after and result.steps == 0
    batch = pool.batch(slice(None))
    with torch.no_grad():
        predicted = NIL(anil, rule="prototype").predict(batch.query_x, NIL(anil).adapt(*batch[:2]))
        torch.testing.assert_close(predicted, nil_logits(anil, *batch[:3], rule="prototype"))
    with pytest.raises(ValueError, match="rule must be one of"):
        NIL(anil, rule="nearest")
    with pytest.raises(ValueError, match="features"):
        NIL(object())


def test_one_inner_step_from_a_zero_head_is_a_dot_product_prototype_classifier():
    """W_1 = (alpha / N) (Y - 1/n_way)^T F_S and b_1 = 0 for a balanced support set, from W_0 = 0, b_0 = 0."""
    n_way, k_shot, lr = 5, 3, 0.7
    support, labels, query = random_task(tasks=2, n_way=n_way, k_shot=k_shot, n_query=8, features=6, seed=5)
    zero = HeadParams(torch.zeros(n_way, 6), torch.zeros(n_way))
    one_step = inner_loop(support, labels, zero, steps=1, lr=lr, first_order=True)
    n = n_way * k_shot
    for t in range(2):
        expected = torch.zeros(n_way, 6, dtype=torch.float64)
        for i in range(n):
            for c in range(n_way):
                expected[c] += lr / n * ((1.0 if int(labels[t, i]) == c else 0.0) - 1 / n_way) * support[t, i].double()
        torch.testing.assert_close(one_step.weight[t].double(), expected, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(one_step.bias[t], torch.zeros(n_way), atol=1e-6, rtol=0)
        # Row c is (lr / n_way) (mu_c - mu): the logits rank classes like the dot product with the class means.
        means = torch.stack([support[t][labels[t] == c].mean(0) for c in range(n_way)])
        logits = query[t] @ one_step.weight[t].T
        assert torch.equal(logits.argmax(-1), (query[t] @ means.T).argmax(-1))
