"""ANIL core against an independent, plain per-task reference loop (autograd.grad, one forward per set)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from algorithms.anil import ANIL
from utils.networks import create_anil_network, create_pretrained_resnet_body, freeze_body


def make_tasks(tasks: int, n_way: int, k_shot: int, k_query: int, size: int, dtype, seed: int = 0):
    """Random images and per-task label permutations, shaped like a TaskBatch."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randperm(n_way, generator=g) for _ in range(tasks)])
    support_y = labels.repeat_interleave(k_shot, dim=1)
    query_y = labels.repeat_interleave(k_query, dim=1)
    support_x = torch.rand(tasks, n_way * k_shot, 1, size, size, generator=g, dtype=dtype)
    query_x = torch.rand(tasks, n_way * k_query, 1, size, size, generator=g, dtype=dtype)
    return support_x, support_y, query_x, query_y


def reference_meta_loss(body, head, tasks, inner_lr: float, steps: int, first_order: bool) -> torch.Tensor:
    """The textbook per-task ANIL loop: separate forwards, explicit SGD on the head with autograd.grad."""
    body.train()
    losses = []
    for sx, sy, qx, qy in zip(*tasks, strict=True):
        support, query = body(sx), body(qx)
        weight, bias = head.weight, head.bias
        for _ in range(steps):
            inner = F.cross_entropy(F.linear(support, weight, bias), sy)
            gw, gb = torch.autograd.grad(inner, (weight, bias), create_graph=not first_order)
            weight, bias = weight - inner_lr * gw, bias - inner_lr * gb
        losses.append(F.cross_entropy(F.linear(query, weight, bias), qy))
    return torch.stack(losses).mean()


def build(arch: str, dtype):
    torch.manual_seed(0)
    if arch == "conv4":
        body, head = create_anil_network(num_classes=3, image_size=28)
    else:
        body, head = create_pretrained_resnet_body(num_classes=3, pretrained=None)
    return body.to(dtype), head.to(dtype)


def compare_with_reference(arch, dtype, first_order, freeze, layout, rtol, atol, inner_lr=0.4):
    body, head = build(arch, dtype)
    ref_body, ref_head = copy.deepcopy(body), copy.deepcopy(head)
    if freeze:
        freeze_body(ref_body)
    tasks = make_tasks(tasks=3, n_way=3, k_shot=2, k_query=2, size=28, dtype=dtype)
    anil = ANIL(
        body,
        head,
        inner_lr=inner_lr,
        inner_steps=3,
        first_order=first_order,
        freeze_body=freeze,
        layout=layout,
    )
    loss, _ = anil.meta_loss(tasks)
    loss.backward()
    ref_loss = reference_meta_loss(ref_body, ref_head, tasks, inner_lr, 3, first_order)
    ref_params = [p for p in (*ref_body.parameters(), *ref_head.parameters()) if p.requires_grad]
    ref_grads = torch.autograd.grad(ref_loss, ref_params, allow_unused=True)
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    ours = [p for p in (*body.parameters(), *head.parameters()) if p.requires_grad]
    assert len(ours) == len(ref_params)
    ref_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(ours, ref_grads, strict=True)]
    # Entries that are zero in exact arithmetic (a conv bias before BatchNorm) hold only rounding noise, so
    # absolute differences are judged on the scale of the whole meta-gradient.
    scale = max(g.abs().max().item() for g in ref_grads)
    for p, g_ref in zip(ours, ref_grads, strict=True):
        g = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(g, g_ref, rtol=rtol, atol=atol + rtol * scale)
    return [p.grad for p in ours]


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("freeze", [False, True])
@pytest.mark.parametrize("arch", ["conv4", "resnet18"])
def test_matches_per_task_reference_float32(arch, first_order, freeze):
    # inner_lr 0.1: with 0.4 the second-order ResNet18 gradient (BatchNorm over 6 images at 1x1 resolution)
    # amplifies float32 rounding past 1e-4 in *both* implementations; float64 below checks it at 0.4.
    compare_with_reference(
        arch, torch.float32, first_order, freeze, "loop", rtol=1e-4, atol=0.0, inner_lr=0.1
    )


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("freeze", [False, True])
@pytest.mark.parametrize("arch", ["conv4", "resnet18"])
def test_matches_per_task_reference_float64(arch, first_order, freeze):
    compare_with_reference(arch, torch.float64, first_order, freeze, "loop", rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("layout", ["vmap", "grouped"])
def test_batched_layouts_match_reference(layout, first_order):
    compare_with_reference("conv4", torch.float64, first_order, False, layout, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("freeze", [False, True])
def test_grouped_layout_matches_reference_on_resnet18(freeze):
    compare_with_reference("resnet18", torch.float64, False, freeze, "grouped", rtol=1e-6, atol=1e-10)


def test_second_order_reaches_the_body_through_support_features():
    """First order gives the body no gradient from the support set; second order does, so they differ."""
    first = compare_with_reference("conv4", torch.float64, True, False, "loop", 1e-6, 1e-10)
    second = compare_with_reference("conv4", torch.float64, False, False, "loop", 1e-6, 1e-10)
    assert not torch.allclose(first[0], second[0])


def tiny_network():
    torch.manual_seed(1)
    body = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
    ).double()
    return body, nn.Linear(2 * 3 * 3, 3).double()


def test_second_order_gradient_matches_finite_differences():
    body, head = tiny_network()
    tasks = make_tasks(tasks=2, n_way=3, k_shot=1, k_query=2, size=6, dtype=torch.float64, seed=3)
    anil = ANIL(body, head, inner_lr=0.5, inner_steps=3, first_order=False)
    anil.meta_loss(tasks)[0].backward()
    eps = 1e-6
    for param, index in ((head.weight, (0, 0)), (body[0].weight, (1, 0, 1, 2))):
        with torch.no_grad():
            original = param[index].item()
            param[index] = original + eps
            plus = anil.meta_loss(tasks)[0].item()
            param[index] = original - eps
            minus = anil.meta_loss(tasks)[0].item()
            param[index] = original
        numeric = (plus - minus) / (2 * eps)
        assert param.grad[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_frozen_body_step_changes_only_batchnorm_and_head():
    body, head = create_anil_network(num_classes=3, image_size=28)
    anil = ANIL(body, head, inner_lr=0.4, outer_lr=0.01, inner_steps=2, freeze_body=True)
    before = {k: v.clone() for k, v in (*body.named_parameters(), *head.named_parameters())}
    anil.meta_train_step(make_tasks(tasks=2, n_way=3, k_shot=1, k_query=2, size=28, dtype=torch.float32))
    for name, p in body.named_parameters():
        is_bn = isinstance(dict(body.named_modules())[name.rsplit(".", 1)[0]], nn.BatchNorm2d)
        assert torch.equal(p, before[name]) != is_bn, name
    assert not torch.equal(head.weight, before["weight"])


def test_frozen_batchnorm_ablation_trains_only_the_head():
    body, head = create_anil_network(num_classes=3, image_size=28)
    anil = ANIL(body, head, inner_lr=0.4, outer_lr=0.01, inner_steps=2, freeze_body=True, freeze_batchnorm=True)
    before = {k: v.clone() for k, v in body.named_parameters()}
    assert any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert anil.trainable_parameters() == [head.weight, head.bias]
    head_before = head.weight.clone()
    for seed in range(2):
        anil.meta_train_step(make_tasks(tasks=2, n_way=3, k_shot=1, k_query=2, size=28, dtype=torch.float32,
                                        seed=seed))
    for name, p in body.named_parameters():
        assert torch.equal(p, before[name]), name  # BatchNorm's weight and bias included: bit-identical
    assert not torch.equal(head.weight, head_before)
    with pytest.raises(ValueError, match="freeze_body=True"):
        ANIL(*create_anil_network(num_classes=3, image_size=28), freeze_batchnorm=True)


def test_adapt_and_predict_leave_module_state_untouched():
    body, head = create_anil_network(num_classes=3, image_size=28)
    anil = ANIL(body, head, inner_lr=0.4, inner_steps=2)
    tasks = make_tasks(tasks=2, n_way=3, k_shot=1, k_query=2, size=28, dtype=torch.float32)
    state = {k: v.clone() for k, v in (*body.state_dict().items(), *head.state_dict().items())}
    with torch.no_grad():
        fast = anil.adapt(tasks[0], tasks[1])
        logits = anil.predict(tasks[2], fast)
    assert logits.shape == (2, 6, 3)
    assert fast.weight.shape == (2, 3, 64)
    after = {**body.state_dict(), **head.state_dict()}
    for name, value in state.items():
        assert torch.equal(value, after[name]), name
    # Training-mode meta_loss is where the BatchNorm running averages are meant to move.
    anil.meta_loss(tasks)
    key = next(k for k in state if k.endswith("running_mean"))
    assert not torch.equal(body.state_dict()[key], state[key])


def test_zero_steps_is_the_unadapted_head():
    body, head = create_anil_network(num_classes=3, image_size=28)
    anil = ANIL(body, head, inner_steps=0)
    tasks = make_tasks(tasks=2, n_way=3, k_shot=1, k_query=2, size=28, dtype=torch.float32)
    with torch.no_grad():
        fast = anil.adapt(tasks[0], tasks[1])
    assert torch.equal(fast.weight[1], head.weight)


def test_bf16_body_keeps_a_float32_head_and_stays_close_to_float32():
    tasks = make_tasks(tasks=2, n_way=3, k_shot=1, k_query=2, size=28, dtype=torch.float32)
    losses = []
    for amp in (None, torch.bfloat16):
        body, head = build("conv4", torch.float32)
        anil = ANIL(body, head, inner_lr=0.1, inner_steps=2, amp_dtype=amp)
        loss, _ = anil.meta_loss(tasks)
        assert loss.dtype == torch.float32
        loss.backward()
        assert head.weight.grad.dtype == torch.float32
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=0.05)
    assert losses[1] != losses[0]  # bfloat16 really ran


def test_grouped_layout_updates_running_stats_like_vmap_and_restores_the_modules():
    """Same features as a per-set loop; running averages equal vmap's average of per-set updates."""
    from algorithms.features import set_features

    body, _ = build("conv4", torch.float64)
    x = make_tasks(tasks=4, n_way=3, k_shot=2, k_query=1, size=28, dtype=torch.float64)[0]
    bodies = {layout: copy.deepcopy(body) for layout in ("loop", "vmap", "grouped")}
    feats = {layout: set_features(b, x, layout, "batch", update_running_stats=True) for layout, b in bodies.items()}
    torch.testing.assert_close(feats["grouped"], feats["loop"], rtol=1e-9, atol=1e-12)
    grouped, vmapped = bodies["grouped"].state_dict(), bodies["vmap"].state_dict()
    assert not torch.equal(grouped["block1.1.running_mean"], body.state_dict()["block1.1.running_mean"])
    for key, value in vmapped.items():  # both average the per-set updates in float32
        torch.testing.assert_close(grouped[key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert all("forward" not in vars(m) for m in bodies["grouped"].modules())  # the patch is undone
    frozen = copy.deepcopy(body)
    set_features(frozen, x, "grouped", "batch", update_running_stats=False)
    for key, value in body.state_dict().items():
        assert torch.equal(frozen.state_dict()[key], value), key
    running = set_features(copy.deepcopy(body), x, "grouped", "running", update_running_stats=False)
    torch.testing.assert_close(running, set_features(copy.deepcopy(body), x, "loop", "running", False))


def test_grouped_running_stats_with_cumulative_momentum():
    """momentum=None (cumulative average): a fresh layer's first update is the mean of the per-set statistics."""
    from algorithms.features import grouped_batch_norm

    layer = nn.BatchNorm2d(2, momentum=None).double()
    x = torch.randn(3 * 4, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = grouped_batch_norm(layer, x, sets=3)
    sets = x.view(3, 4, 2, 5, 5)
    expected_mean = sets.mean(dim=(1, 3, 4)).mean(0)
    expected_var = sets.var(dim=(1, 3, 4), correction=1).mean(0)
    torch.testing.assert_close(layer.running_mean, expected_mean)
    torch.testing.assert_close(layer.running_var, expected_var)
    assert layer.num_batches_tracked.item() == 1
    reference = torch.cat([nn.functional.batch_norm(s, None, None, training=True) for s in sets])
    torch.testing.assert_close(out, reference)


def _per_set_batch_norm(layer: nn.BatchNorm2d, x: torch.Tensor, sets: int) -> torch.Tensor:
    """Reference: each set through PyTorch's own training-mode batch_norm, alone (no running statistics)."""
    return torch.cat([F.batch_norm(s, None, None, layer.weight, layer.bias, training=True, eps=layer.eps)
                      for s in x.chunk(sets)])


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_grouped_norm_matches_per_set_batch_norm(dtype, affine):
    """GroupedNorm's written-out backward equals autograd through F.batch_norm run on each set alone."""
    from algorithms.features import grouped_batch_norm

    g = torch.Generator().manual_seed(0)
    layer = nn.BatchNorm2d(3, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5, generator=g)
            layer.bias.uniform_(-1.0, 1.0, generator=g)
    # A mean far from zero, as conv outputs have, checks the backward's sum(g * x) - mean * sum(g) rearrangement.
    x = torch.randn(4 * 5, 3, 6, 6, generator=g, dtype=dtype) * 2 + 5
    grad_out = torch.randn(x.shape, generator=g, dtype=dtype)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    results = {}
    for name in ("fused", "plain", "reference"):
        module, inp = copy.deepcopy(layer), x.clone().requires_grad_()
        out = _per_set_batch_norm(module, inp, 4) if name == "reference" else grouped_batch_norm(
            module, inp, 4, fused=name == "fused")
        out.backward(grad_out)
        params = [p.grad for p in module.parameters()]
        results[name] = (out.detach(), inp.grad, *params, *module.buffers())
    compared = 2 + 2 * affine  # output, input gradient, then weight and bias gradients
    for ours, ref in zip(results["fused"][:compared], results["reference"][:compared], strict=True):
        torch.testing.assert_close(ours, ref, **tol)
    for ours, plain in zip(results["fused"], results["plain"], strict=True):  # same running statistics too
        torch.testing.assert_close(ours, plain, **tol)


def test_fused_grouped_norm_refuses_a_second_derivative_and_handles_bfloat16():
    from algorithms.features import grouped_batch_norm

    x = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    out = grouped_batch_norm(nn.BatchNorm2d(2).double(), x, sets=2, fused=True)
    (grad,) = torch.autograd.grad(out.pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()
    layer, xb = nn.BatchNorm2d(2), x.detach().float().to(torch.bfloat16).requires_grad_()
    out_b = grouped_batch_norm(copy.deepcopy(layer), xb, sets=2, fused=True)
    out_b.float().pow(2).sum().backward()
    expected = _per_set_batch_norm(layer, xb.detach().float(), 2)
    assert out_b.dtype == xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out_b.float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("first_order", [True, False])
def test_grouped_layout_with_autograd_batch_norm_matches_reference(first_order):
    """ANIL(fused_bn=False): the grouped layout's autograd formula, the reference GroupedNorm replaces."""
    body, head = build("conv4", torch.float64)
    tasks = make_tasks(tasks=3, n_way=3, k_shot=2, k_query=2, size=28, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        anil = ANIL(copy.deepcopy(body), copy.deepcopy(head), inner_lr=0.4, inner_steps=3,
                    first_order=first_order, layout="grouped", fused_bn=fused)
        anil.meta_loss(tasks)[0].backward()
        grads.append([p.grad for p in anil.trainable_parameters()])
    for fused_grad, plain_grad in zip(*grads, strict=True):
        torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-8, atol=1e-12)
