"""NIL, "No Inner Loop": test-time classification without any head (Raghu et al., ICLR 2020, arXiv:1909.09157).

The ANIL paper asks how much of MAML's test-time accuracy comes from the inner loop at all. Its section 5.1
("The head and the NIL (No Inner Loop) algorithm") reads, in the ICLR 2020 double-blind submission text (quoted
from a public copy of that version; its numbered reference (37) is Vinyals et al., "Matching Networks for One
Shot Learning", NeurIPS 2016):

    1. Train a few-shot learning model with ANIL/MAML algorithm as standard. We use ANIL training.
    2. At test time, remove the head of the trained model. For each task, first pass the k labelled examples
       (support set) through the body of the network, to get their penultimate layer representations. Then,
       for a test example, compute cosine similarities between its penultimate layer representation and those
       of the support set, using these similarities to weight the support set labels, as in (37).

Rules (``rule=``):

* ``"similarity"`` (default, the passage read literally): the score of class ``c`` for query ``q`` is
  ``sum over support examples i with y_i = c of cos(phi(q), phi(s_i))``, i.e. the cosine similarities weight the
  one-hot support labels.
* ``"attention"``: Matching Networks' own kernel, the similarities passed through a softmax over the support set
  before they weight the labels (``sum_i softmax_i(cos) y_i``). The passage's "as in (37)" may mean this; the
  text does not say whether the softmax is applied, so both readings are offered. The two scores rank classes
  alike at 1-shot and may differ for K > 1.
* ``"prototype"``: cosine similarity to each class's *mean* support feature (a cosine prototype classifier).

At K = 1 the three rules rank the classes identically (a class's only support feature is its prototype, and the
softmax is monotonic); for K > 1 they can differ. If NIL is about as accurate as ANIL, the body's features, not the
rapid adaptation, carry the accuracy ("feature reuse"). BatchNorm follows the learner's evaluation policy, so the
support set and every query set are normalised with their own statistics, as in ANIL's evaluation.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch.nn.functional as F
from torch import Tensor

from algorithms.learner import Adapts, Learner, validate_tasks

NILRule = Literal["similarity", "attention", "prototype"]
NIL_RULES: tuple[str, ...] = get_args(NILRule)


class SupportSet(NamedTuple):
    """What NIL keeps of a task after "adaptation": support features ``(tasks, n, features)`` and labels."""

    features: Tensor
    labels: Tensor


def class_prototypes(features: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Mean support feature of every class.

    Args:
        features: support features ``(tasks, n_way * k_shot, features)``.
        labels: support labels ``(tasks, n_way * k_shot)``.
        n_way: classes per task.

    Returns:
        Prototypes ``(tasks, n_way, features)``.
    """
    one_hot = F.one_hot(labels, n_way).to(features.dtype)  # (tasks, n, n_way)
    return one_hot.transpose(1, 2) @ features / one_hot.sum(1).unsqueeze(-1)


def _check_rule(rule: str) -> None:
    if rule not in NIL_RULES:
        raise ValueError(f"rule must be one of {NIL_RULES}, got {rule!r}.")


def nil_scores_from_features(
    support: Tensor, labels: Tensor, query: Tensor, n_way: int, rule: NILRule = "similarity"
) -> Tensor:
    """NIL class scores of query features against labelled support features.

    Args:
        support: ``(tasks, n_way * k_shot, features)``.
        labels: ``(tasks, n_way * k_shot)`` in ``[0, n_way)``.
        query: ``(tasks, n_query, features)``.
        n_way: classes per task.
        rule: ``"similarity"``, ``"attention"`` or ``"prototype"`` (module docstring).

    Returns:
        Scores ``(tasks, n_query, n_way)``; their argmax is the NIL prediction.
    """
    _check_rule(rule)
    if rule == "prototype":
        prototypes = class_prototypes(support, labels, n_way)
        return F.cosine_similarity(query.unsqueeze(2), prototypes.unsqueeze(1), dim=-1)
    cosine = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)  # (tasks, n_query, n)
    weights = cosine.softmax(-1) if rule == "attention" else cosine
    return weights @ F.one_hot(labels, n_way).to(weights.dtype)


def nil_logits(
    learner: Learner, support_x: Tensor, support_y: Tensor, query_x: Tensor, rule: NILRule = "similarity"
) -> Tensor:
    """NIL scores of the query images with ``learner``'s body (its head is never used).

    Args:
        learner: a learner whose body gives ``features(x, training)``, ``(tasks, n, C, H, W)`` -> ``(tasks, n,
            features)``, and whose ``head.out_features`` is the tasks' n_way (ANIL, MAML).
        support_x: ``(tasks, n_way * k_shot, C, H, W)``.
        support_y: ``(tasks, n_way * k_shot)``.
        query_x: ``(tasks, n_way * k_query, C, H, W)``.
        rule: see the module docstring.

    Returns:
        Scores ``(tasks, n_way * k_query, n_way)``; their argmax is the NIL prediction.
    """
    support, query = learner.features(support_x, False), learner.features(query_x, False)
    return nil_scores_from_features(support, support_y, query, learner.head.out_features, rule)


class NIL:
    """NIL as a :class:`algorithms.learner.Learner`, so code written for ANIL and MAML evaluates and shows it too.

    ``adapt`` runs no inner loop (``adapts = "none"``): it returns the support features and labels, and ``predict``
    scores the queries against them. ``evaluate(NIL(anil), pool, ...)`` therefore gives NIL's accuracy (before =
    after, gain 0). NIL is trained as the learner it wraps (section 5.1: "We use ANIL training"), so its
    ``meta_train_step`` is that learner's own, and ``inner_lr`` is the rate that learner was trained with.

    Args:
        learner: a trained learner that owns the body (``features``, ``body``, ``head``).
        rule: see the module docstring.
    """

    adapts: Adapts = "none"
    inner_steps = 0  # nothing is adapted

    def __init__(self, learner: Learner, rule: NILRule = "similarity") -> None:
        if not callable(getattr(learner, "features", None)):
            raise ValueError(f"NIL needs a learner with a features(x, training) method, got {type(learner).__name__}.")
        _check_rule(rule)
        self.learner, self.rule = learner, rule
        self.body, self.head = learner.body, learner.head
        self.meta_train_step = learner.meta_train_step  # trained as the learner it wraps

    @property
    def inner_lr(self) -> float:
        """The wrapped learner's inner learning rate; NIL itself takes no inner step."""
        return self.learner.inner_lr

    def features(self, x: Tensor, training: bool) -> Tensor:
        """The wrapped learner's body features per set, ``(tasks, n, C, H, W)`` -> ``(tasks, n, features)``."""
        return self.learner.features(x, training)

    def head_path(self) -> None:
        """No fast path: NIL has no head to adapt."""
        return None

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> SupportSet:
        """Support features and labels; ``steps`` is accepted for interface compatibility and ignored.

        Args:
            support_x: ``(tasks, n_way * k_shot, C, H, W)``.
            support_y: ``(tasks, n_way * k_shot)``.
        """
        validate_tasks(support_x, support_y, support_x, support_y, self.head.out_features, self.body)
        return SupportSet(self.features(support_x, False), support_y)

    def predict(self, query_x: Tensor, fast: SupportSet) -> Tensor:
        """NIL scores ``(tasks, n_query, n_way)`` of the query images ``(tasks, n_query, C, H, W)``."""
        query = self.features(query_x, False)
        return nil_scores_from_features(fast.features, fast.labels, query, self.head.out_features, self.rule)
