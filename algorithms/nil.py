"""NIL, "No Inner Loop": test-time classification without any head (Raghu et al., ICLR 2020, arXiv:1909.09157).

The ANIL paper asks how much of MAML's test-time accuracy comes from the inner loop at all. NIL removes it: the
learnt head is dropped and every query image is classified by the cosine similarity of its body features to the
support features of each class (their mean for K-shot tasks, the single feature for one-shot tasks). If NIL is
about as accurate as ANIL, the body's features, not the rapid adaptation, carry the accuracy ("feature reuse").
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from algorithms.anil import ANIL


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


def nil_logits(anil: ANIL, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
    """Cosine-similarity logits of the query images to the support prototypes, with ``anil``'s body.

    Args:
        anil: a trained ANIL learner; only its body and evaluation BatchNorm policy are used.
        support_x: ``(tasks, n_way * k_shot, C, H, W)``.
        support_y: ``(tasks, n_way * k_shot)``.
        query_x: ``(tasks, n_way * k_query, C, H, W)``.

    Returns:
        Logits ``(tasks, n_way * k_query, n_way)``; their argmax is the NIL prediction.
    """
    prototypes = class_prototypes(anil.features(support_x, False), support_y, anil.head.out_features)
    query = anil.features(query_x, False)
    return F.cosine_similarity(query.unsqueeze(2), prototypes.unsqueeze(1), dim=-1)
