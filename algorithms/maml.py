"""MAML (Finn, Abbeel & Levine, ICML 2017), beside ANIL (Raghu et al., ICLR 2020, arXiv:1909.09157).

MAML adapts *every* parameter, body and head, in the inner loop, so the body must be re-run on the support set at
every inner step and, in second order, differentiated through all of them. ANIL's claim is that adapting the head
alone is nearly as accurate and much cheaper; this class shares ANIL's interface (``meta_loss``,
``meta_train_step``, ``adapt``, ``predict``) so the notebook and ``benchmarks/`` can measure that claim on the same
tasks. The inner loop uses :func:`torch.func.functional_call`, one task at a time, as MAML is usually written.
BatchNorm follows the same per-set policy as ANIL (:mod:`algorithms.features`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from algorithms.anil import _check_lr, validate_tasks
from algorithms.features import BNMode, body_mode

Params = dict[str, Tensor]


class MAML:
    """MAML meta-learner over a ``(body, head)`` pair; all parameters are adapted per task.

    Args:
        body: feature extractor, ``(n, C, H, W)`` -> ``(n, features)``.
        head: ``nn.Linear(features, n_way)``.
        inner_lr: inner SGD step size.
        outer_lr: Adam learning rate.
        inner_steps: inner steps per task.
        first_order: detach the inner gradients (FOMAML).
        eval_bn: BatchNorm policy at evaluation, ``"batch"`` or ``"running"``.
    """

    def __init__(
        self,
        body: nn.Module,
        head: nn.Linear,
        inner_lr: float = 0.01,
        outer_lr: float = 0.001,
        inner_steps: int = 5,
        first_order: bool = True,
        eval_bn: BNMode = "batch",
    ) -> None:
        if not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an integer >= 0, got {inner_steps!r}.")
        self.body, self.head = body, head
        self.model = nn.Sequential(body, head)
        self.inner_lr, self.outer_lr = _check_lr("inner_lr", inner_lr), _check_lr("outer_lr", outer_lr)
        self.inner_steps, self.first_order, self.eval_bn = inner_steps, first_order, eval_bn
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.outer_lr)

    def _adapt_task(self, x: Tensor, y: Tensor, steps: int, create_graph: bool) -> Params:
        """Inner SGD on all parameters for one task. ``x``: ``(n, C, H, W)``, ``y``: ``(n,)``."""
        params = dict(self.model.named_parameters())
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(self.model, params, (x,)), y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            params = {name: p - self.inner_lr * g for (name, p), g in zip(params.items(), grads, strict=True)}
        return params

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> list[Params]:
        """Adapted parameters of every task (evaluation BatchNorm policy; first order, no graph kept).

        Args:
            support_x: ``(tasks, n_way * k_shot, C, H, W)``.
            support_y: ``(tasks, n_way * k_shot)``.
            steps: inner steps, defaulting to ``inner_steps``.
        """
        validate_tasks(support_x, support_y, support_x, support_y, self.head.out_features, self.body)
        steps = self.inner_steps if steps is None else steps
        with torch.enable_grad(), body_mode(self.body, self.eval_bn, False, dropout=False):
            adapted = [
                self._adapt_task(x, y, steps, create_graph=False) for x, y in zip(support_x, support_y, strict=True)
            ]
        return [{k: v.detach() for k, v in params.items()} for params in adapted]

    def predict(self, query_x: Tensor, fast: list[Params]) -> Tensor:
        """Query logits ``(tasks, n_query, n_way)`` with each task's adapted parameters."""
        with body_mode(self.body, self.eval_bn, False, dropout=False):
            return torch.stack(
                [functional_call(self.model, p, (x,)) for x, p in zip(query_x, fast, strict=True)]
            )

    def meta_loss(self, tasks: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Mean query loss over tasks after per-task adaptation of all parameters, and the query accuracy."""
        support_x, support_y, query_x, query_y = tasks
        validate_tasks(support_x, support_y, query_x, query_y, self.head.out_features, self.body)
        losses, correct = [], []
        with body_mode(self.body, "batch", update_running_stats=True, dropout=False):
            for sx, sy, qx, qy in zip(support_x, support_y, query_x, query_y, strict=True):
                params = self._adapt_task(sx, sy, self.inner_steps, create_graph=not self.first_order)
                logits = functional_call(self.model, params, (qx,))
                losses.append(F.cross_entropy(logits, qy))
                correct.append((logits.argmax(-1) == qy).float().mean())
        return torch.stack(losses).mean(), torch.stack(correct).mean()

    def meta_train_step(self, tasks: Sequence[Tensor]) -> dict[str, float]:
        """One outer step: zero_grad, meta_loss, backward, Adam step; returns ``{"loss", "acc"}``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, acc = self.meta_loss(tasks)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "acc": acc.item()}
