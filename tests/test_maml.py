"""MAML's vmapped layout against its per-task loop (the reference), in float64, first and second order."""

from __future__ import annotations

import pytest
import torch

from algorithms.maml import MAML
from algorithms.nil import nil_logits
from tests.test_anil import make_tasks
from utils.networks import create_anil_network

SIZE = 16  # the smallest image conv4 accepts: keeps second order through 2 inner steps fast


def make_maml(layout: str, first_order: bool, eval_bn: str = "batch", steps: int = 2) -> MAML:
    torch.manual_seed(0)
    body, head = create_anil_network(num_classes=3, image_size=SIZE)
    return MAML(body.double(), head.double(), inner_lr=0.4, inner_steps=steps, first_order=first_order,
                eval_bn=eval_bn, layout=layout)


def tasks(seed: int = 0):
    return make_tasks(tasks=3, n_way=3, k_shot=2, k_query=2, size=SIZE, dtype=torch.float64, seed=seed)


def running_stats(maml: MAML) -> dict[str, torch.Tensor]:
    return {k: v.double().clone() for k, v in maml.model.named_buffers() if "running" in k}


@pytest.mark.parametrize("first_order", [True, False], ids=["first_order", "second_order"])
def test_vmap_loss_and_every_gradient_equal_the_loop(first_order):
    loop, vmapped = make_maml("loop", first_order), make_maml("vmap", first_order)
    batch = tasks()
    results = {}
    for name, maml in (("loop", loop), ("vmap", vmapped)):
        loss, acc = maml.meta_loss(batch)
        loss.backward()
        results[name] = loss, acc, {k: p.grad for k, p in maml.model.named_parameters()}
    torch.testing.assert_close(results["vmap"][0], results["loop"][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(results["vmap"][1], results["loop"][1])
    assert set(results["vmap"][2]) == set(results["loop"][2])
    for name, expected in results["loop"][2].items():
        # Conv biases feed a BatchNorm, which cancels them: their exact gradient is 0 (float64 noise ~1e-15).
        torch.testing.assert_close(results["vmap"][2][name], expected, rtol=1e-6, atol=1e-10, msg=name)
    assert results["loop"][2]["body.block1.0.weight"].abs().max() > 1e-3  # the gradients are not trivially 0


@pytest.mark.parametrize("first_order", [True, False], ids=["first_order", "second_order"])
def test_vmap_running_stats_average_each_tasks_sequential_update(first_order):
    """vmap: each task updates its own copy (inner steps, then query) and the copies are averaged."""
    maml = make_maml("vmap", first_order)
    batch = tasks()
    before = running_stats(maml)
    per_task = []
    for i in range(len(batch[0])):
        reference = make_maml("loop", first_order)
        reference.meta_loss([t[i : i + 1] for t in batch])
        per_task.append(running_stats(reference))
    maml.meta_train_step(batch)
    after = running_stats(maml)
    for name, value in after.items():
        expected = torch.stack([stats[name] for stats in per_task]).mean(0)
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-9, msg=name)
        assert not torch.allclose(value, before[name])


@pytest.mark.parametrize("eval_bn", ["batch", "running"])
@pytest.mark.parametrize("trainable", ["", "head."], ids=["all", "head_only"])
def test_adapt_and_predict_agree_between_layouts(eval_bn, trainable):
    loop, vmapped = make_maml("loop", True, eval_bn), make_maml("vmap", True, eval_bn)
    loop.meta_loss(tasks(seed=1))  # move the running averages away from their initial values
    vmapped.model.load_state_dict(loop.model.state_dict())  # (the layouts average them differently)
    support_x, support_y, query_x, _ = tasks()
    fast = {name: maml.adapt(support_x, support_y, steps=3, trainable=trainable) for name, maml in
            (("loop", loop), ("vmap", vmapped))}
    for name, value in fast["loop"].items():
        assert value.shape == (3, *dict(loop.model.named_parameters())[name].shape)
        torch.testing.assert_close(fast["vmap"][name], value, rtol=1e-6, atol=1e-10, msg=name)
    torch.testing.assert_close(vmapped.predict(query_x, fast["vmap"]), loop.predict(query_x, fast["loop"]),
                               rtol=1e-6, atol=1e-10)
    moved = {name: not torch.equal(value[0], dict(loop.model.named_parameters())[name])
             for name, value in fast["loop"].items() if name.endswith("weight")}
    assert all(moved[name] == name.startswith(trainable) for name in moved)


def test_features_match_between_layouts_and_serve_nil():
    loop, vmapped = make_maml("loop", True), make_maml("vmap", True)
    support_x, support_y, query_x, _ = tasks()
    torch.testing.assert_close(vmapped.features(query_x, False), loop.features(query_x, False))
    assert loop.features(query_x, False).shape == (3, 6, 64 * (SIZE // 16) ** 2)
    logits = nil_logits(vmapped, support_x, support_y, query_x)
    assert logits.shape == (3, 6, 3)
    torch.testing.assert_close(logits, nil_logits(loop, support_x, support_y, query_x))


def test_bad_layout_is_a_value_error():
    body, head = create_anil_network(num_classes=3, image_size=SIZE)
    with pytest.raises(ValueError, match="layout must be one of"):
        MAML(body, head, layout="batched")
    assert MAML(body, head, layout="auto").layout in ("loop", "vmap")
