"""The adaptation playground: its one plain function, its update path, the widget and the headless snapshot."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from algorithms.maml import MAML
from algorithms.nil import NIL
from report.playground import (
    Playground,
    adapt_and_plot,
    figure_png,
    show_playground,
    support_losses,
)
from tests.evaluation_support import conv4, make_anil, make_pool, run
from utils.tasks import with_k_shot


@pytest.fixture(scope="module")
def learner(background28):
    anil = make_anil(seed=0, inner_lr=0.4, inner_steps=2)
    run(anil, make_pool(background28, 64, seed=1), iterations=15, meta_batch_size=4)
    return anil


@pytest.fixture(scope="module")
def pool(evaluation28):
    return make_pool(evaluation28, 6, seed=4, k_query=3)


def _reference_probabilities(learner, batch, steps, inner_lr):
    """Adapt a copy of the learner with the given inner learning rate: an independent path."""
    other = copy.deepcopy(learner)
    other.inner_lr = inner_lr
    with torch.no_grad():
        fast = other.adapt(batch.support_x, batch.support_y, steps=steps)
        return other.predict(batch.query_x, fast)[0].softmax(-1)


def test_adapt_and_plot_uses_the_given_inner_lr_without_keeping_it(learner, pool):
    batch = pool.batch([2])
    fig = adapt_and_plot(learner, batch, 0, steps=7, inner_lr=1.3)
    assert learner.inner_lr == 0.4  # restored
    torch.testing.assert_close(fig.predictions["after"].probabilities, _reference_probabilities(learner, batch, 7, 1.3))
    counts, losses = fig.support_losses
    assert counts == list(range(8)) and losses.shape == (8,)


def test_support_loss_curve_matches_re_adapting(learner, pool):
    """The ANIL curve (features once, one closed-form step at a time) equals the loss after adapt(steps=s)."""
    batch = pool.batch([1])
    counts, losses = support_losses(learner, batch, 0, 6)
    with torch.no_grad():
        for s in (0, 1, 6):
            fast = learner.adapt(batch.support_x, batch.support_y, steps=s)
            expected = F.cross_entropy(learner.predict(batch.support_x, fast)[0], batch.support_y[0])
            torch.testing.assert_close(losses[counts.index(s)], expected)


def test_update_changes_the_adapted_head_and_the_figure(learner, pool):
    playground = Playground({"S1": learner, "S2": make_anil(seed=3)}, pool, steps=2)
    first = playground.figure()
    changes = [{"steps": 20}, {"inner_lr": 2.0}, {"task": "next"}, {"scenario": "S2"}, {"k_shot": 3}]
    previous_png, previous = figure_png(first), first.predictions["after"].probabilities
    for change in changes:
        fig = playground.update(**change)
        probabilities = fig.predictions["after"].probabilities
        assert probabilities.shape != previous.shape or not torch.allclose(probabilities, previous), change
        png = figure_png(fig)
        assert png != previous_png, change
        previous_png, previous = png, probabilities
    assert (playground.task, playground.k_shot, playground.scenario) == (1, 3, "S2")
    reference = _reference_probabilities(playground.learners["S2"], playground.batch(), 20, 2.0)
    torch.testing.assert_close(previous, reference)
    with pytest.raises(ValueError, match="steps"):
        playground.update(steps=101)
    with pytest.raises(ValueError, match="Unknown"):
        playground.update(lr=0.1)


def test_k_shot_keeps_the_task_and_draws_distinct_drawers(pool):
    task = with_k_shot(pool, 4, 5, torch.Generator().manual_seed(0))
    assert torch.equal(task.classes[0], pool.classes[4]) and torch.equal(task.labels[0], pool.labels[4])
    assert task.examples.shape == (1, pool.n_way, 5 + pool.k_query)
    assert all(len(set(row.tolist())) == row.numel() for row in task.examples[0])  # support and query disjoint
    batch = task.batch([0])
    assert batch.support_x.shape[1] == pool.n_way * 5 and batch.query_x.shape[1] == pool.n_way * pool.k_query


def _moved_off_initialisation(learner, seed: int):
    """Every weight of body and head moved by a seeded random amount, so that no layer sits at its initialisation
    (BatchNorm's scale 1 and shift 0 included): adapting the head alone then gives other answers than adapting
    every layer."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in [*learner.body.parameters(), *learner.head.parameters()]:
            noise = torch.randn(param.shape, generator=generator)
            param.add_(0.3 * noise * max(float(param.abs().mean()), 0.1))
    return learner


def _own_answers(learner, batch, steps: int, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference, independent of the playground: the learner's own adapt and predict on the one task."""
    with torch.no_grad():
        fast = learner.adapt(batch.support_x, batch.support_y, steps=steps)
        after = learner.predict(batch.query_x, fast)[0].softmax(-1)
        losses = [F.cross_entropy(learner.predict(batch.support_x, learner.adapt(batch.support_x, batch.support_y,
                                                                                  steps=s))[0], batch.support_y[0])
                  for s in counts]
    return after, torch.stack(losses)


@pytest.mark.parametrize("kind", ["ANIL first order", "ANIL second order", "NIL", "MAML"])
def test_the_playground_adapts_every_learner_as_the_learner_adapts_itself(pool, kind):
    """What the playground shows after adaptation, and its support-loss curve, are the learner's own ``adapt`` and
    ``predict`` (to 1e-5), whichever path it takes: ANIL's head-only fast path, or MAML adapted in every layer."""
    anil = _moved_off_initialisation(make_anil(seed=5, first_order=kind != "ANIL second order"), seed=6)
    learner = {"NIL": NIL(anil), "MAML": _moved_off_initialisation(MAML(*conv4(seed=7), inner_lr=0.4), seed=8)
               }.get(kind, anil)
    batch, steps = pool.batch([2]), 3
    fig = adapt_and_plot(learner, batch, 0, steps=steps)
    counts, losses = fig.support_losses
    assert counts == ([0, steps] if kind == "NIL" else list(range(steps + 1)))
    after, own_losses = _own_answers(learner, batch, steps, counts)
    torch.testing.assert_close(fig.predictions["after"].probabilities, after, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses, own_losses, atol=1e-5, rtol=1e-5)
    if kind == "MAML":  # the test can tell the paths apart: a head-only adaptation of MAML answers otherwise
        with torch.no_grad():
            head_only = learner.adapt(batch.support_x, batch.support_y, steps=steps, trainable="head.")
            head_only_after = learner.predict(batch.query_x, head_only)[0].softmax(-1)
        assert (head_only_after - after).abs().max() > 1e-2


def test_generic_learners_get_a_sampled_curve(pool):
    maml = MAML(*conv4(seed=1), inner_lr=0.1, inner_steps=1)
    fig = adapt_and_plot(maml, pool.batch([0]), 0, steps=3, inner_lr=0.2)
    assert fig.support_losses[0] == [0, 1, 2, 3] and maml.inner_lr == 0.1


def test_widget_controls_redraw(learner, pool):
    playground = Playground({"S1": learner}, pool, steps=2)
    widget = playground.widget()
    images = widget.children[-2:]  # the predictions mosaic above the support-loss panel, each within the width
    assert all(image.layout.max_width == "100%" for image in images)
    before = [bytes(image.value) for image in images]
    assert all(value.startswith(b"\x89PNG") for value in before)
    steps_slider = widget.children[1].children[0]
    steps_slider.value = 30
    assert playground.steps == 30 and all(bytes(image.value) != old for image, old in zip(images, before, strict=True))


def test_live_mosaic_is_the_figures_mosaic_with_its_titles(learner, pool):
    """The widget's PIL image holds exactly the pixels that the matplotlib figure shows, below a title band."""
    from PIL import Image

    from utils.viz import panels_mosaic, prediction_panels

    playground = Playground({"S1": learner}, pool, steps=3)
    fig = playground.figure()
    panels, n_way = prediction_panels(playground.batch(), 0, fig.predictions["before"], fig.predictions["after"])
    mosaic, _ = panels_mosaic(panels, n_way)
    live = np.asarray(Image.open(io.BytesIO(playground.live_images()[0])).convert("RGB"))
    assert np.array_equal(live[-mosaic.shape[0]:], mosaic)
    assert (live[: live.shape[0] - mosaic.shape[0]] < 255).any()  # the titles are drawn


def test_static_only_option_and_plain_python_return_the_snapshot(learner, pool, monkeypatch):
    monkeypatch.setenv("ANIL_HEADLESS", "1")
    snapshot = show_playground({"S1": learner}, pool, steps=5)
    assert isinstance(snapshot, Figure) and snapshot.support_losses[0][-1] == 5
    monkeypatch.delenv("ANIL_HEADLESS")
    assert isinstance(show_playground({"S1": learner}, pool), Figure)  # plain Python: no kernel at all


def test_in_a_kernel_the_widget_is_shown_with_its_png_fallback(learner, pool, monkeypatch):
    """What a kernel gets (the path that crashed under Run All): one output, the live widget plus a PNG."""
    import IPython.display

    from report import playground as module

    shown = []
    monkeypatch.delenv("ANIL_HEADLESS", raising=False)
    monkeypatch.setattr(module, "in_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda bundle, raw: shown.append((bundle, raw)))
    assert show_playground({"S1": learner}, pool, steps=4) is None
    (bundle, raw), = shown
    assert raw and "application/vnd.jupyter.widget-view+json" in bundle
    png = __import__("base64").b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG") and len(png) > 10_000  # the whole figure: mosaic and loss panel
