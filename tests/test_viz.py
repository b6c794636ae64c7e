"""Tests for utils/viz.py: each function returns a Figure whose panels show the right images and titles."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from utils.tasks import sample_tasks
from utils.viz import alphabet_title, plot_alphabets, plot_character_versions, plot_task


def _shown(ax) -> np.ndarray:
    """The image array drawn in an axes."""
    return np.asarray(ax.images[0].get_array())


def test_plot_task_shows_each_image_under_its_label(background28):
    batch = sample_tasks(background28.images, 3, 5, 2, 3, torch.Generator().manual_seed(0))
    fig = plot_task(batch, task=1)
    try:
        assert isinstance(fig, Figure)
        assert len(fig.axes) == 5 * (2 + 3)
        sets = [
            (fig.axes[:10], batch.support_x[1], batch.support_y[1]),
            (fig.axes[10:], batch.query_x[1], batch.query_y[1]),
        ]
        for axes, x, y in sets:
            for ax in axes:
                label = int(ax.get_title().removeprefix("label "))
                assert ax.get_subplotspec().colspan.start == label  # one column per label, in order
                # the drawn image is one of the set's images with that label
                candidates = x[y == label, 0].numpy()
                assert any(np.array_equal(_shown(ax), c) for c in candidates)
            titles = [ax.get_title() for ax in axes]
            assert sorted(titles) == sorted(f"label {int(v)}" for v in y)
        texts = [sub.get_suptitle() for sub in fig.subfigs]
        assert "5-way 2-shot" in texts[0] and "3 per class" in texts[1]
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="task=3 is out of range: the batch holds 3 tasks"):
        plot_task(batch, task=3)


@pytest.mark.parametrize("character", [17, "Latin/character05"])
def test_plot_character_versions_shows_the_20_drawings(background28, character):
    fig = plot_character_versions(background28, character)
    try:
        row = background28.index_of(character)
        alphabet, name = background28.characters[row].split("/")
        assert len(fig.axes) == 20
        suptitle = fig.get_suptitle()
        assert alphabet in suptitle and name in suptitle
        for drawer, ax in enumerate(fig.axes):
            assert np.array_equal(_shown(ax), background28.images[row, drawer].numpy())
            assert ax.get_title() == f"drawer {drawer + 1}"
    finally:
        plt.close(fig)


def test_plot_alphabets_one_panel_per_alphabet(evaluation28):
    fig = plot_alphabets(evaluation28)
    try:
        assert len(fig.axes) == len(evaluation28.alphabets) == 20
        for ax, alphabet in zip(fig.axes, evaluation28.alphabets, strict=True):
            assert ax.get_title().replace("\n", " ") == alphabet.replace("_", " ")
            first_row = evaluation28.characters.index(
                next(c for c in evaluation28.characters if c.startswith(f"{alphabet}/"))
            )
            assert np.array_equal(_shown(ax), evaluation28.images[first_row, 0].numpy())
    finally:
        plt.close(fig)


def test_alphabet_title_wraps_without_losing_words():
    name = "Blackfoot_(Canadian_Aboriginal_Syllabics)"
    title = alphabet_title(name)
    assert "\n" in title and title.replace("\n", " ") == "Blackfoot (Canadian Aboriginal Syllabics)"
    assert alphabet_title("Anglo-Saxon_Futhorc").replace("\n", " ") == "Anglo-Saxon Futhorc"


def test_figures_render_headless(background28, tmp_path):
    fig = plot_alphabets(background28)
    try:
        fig.savefig(tmp_path / "alphabets.png")  # no GUI backend needed
        assert (tmp_path / "alphabets.png").stat().st_size > 1000
    finally:
        plt.close(fig)


@pytest.fixture(scope="module")
def trained_anil(background28):
    """A conv4 ANIL learner meta-trained for a few steps: right on some queries, wrong on others."""
    from tests.evaluation_support import make_anil, make_pool, run

    learner = make_anil(seed=0)
    run(learner, make_pool(background28, 64, seed=1), iterations=20, meta_batch_size=4)
    return learner


def test_plot_predictions_colours_and_probabilities_match_the_learner(trained_anil, evaluation28):
    from utils.viz import RIGHT_COLOUR, WRONG_COLOUR, plot_predictions

    batch = sample_tasks(evaluation28.images, 3, 5, 1, 4, torch.Generator().manual_seed(2))
    fig = plot_predictions(trained_anil, batch, task=2, steps=10)
    # Independent reference: the learner's own adapt/predict on the whole batch, then softmax.
    with torch.no_grad():
        for panel, steps in (("before", 0), ("after", 10)):
            fast = trained_anil.adapt(batch.support_x, batch.support_y, steps=steps)
            probs = trained_anil.predict(batch.query_x, fast)[2].softmax(-1)
            drawn = fig.predictions[panel]
            torch.testing.assert_close(drawn.probabilities, probs, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(drawn.probabilities.sum(-1), torch.ones(20))
            right = probs.argmax(-1) == batch.query_y[2]
            # Each caption "<label>: <p>%" is one query's answer, coloured by right/wrong, in batch order.
            expected = [(f"{int(p.argmax())}: {float(p.max()):.0%}", RIGHT_COLOUR if ok else WRONG_COLOUR)
                        for p, ok in zip(probs, right, strict=True)]
            assert fig.captions[panel] == expected
            titles = [t.get_text() for t in fig.axes[0].texts]
            assert any(f"{int(right.sum())}/20 right" in t for t in titles)
    # The trained learner is neither always right nor always wrong after adaptation, so both colours were tested.
    assert 0 < int(fig.predictions["after"].correct.sum()) < 20
    assert fig.captions["support"] == [(f"label {int(y)}", "black") for y in batch.support_y[2]]


def test_plot_predictions_frames_have_the_caption_colour(trained_anil, evaluation28):
    """The pixels drawn around each query image are green exactly when that query is answered right."""
    from matplotlib.colors import to_rgb

    from utils.viz import RIGHT_COLOUR, WRONG_COLOUR, caption_cells, mosaic_cell_size, plot_predictions

    batch = sample_tasks(evaluation28.images, 1, 5, 1, 4, torch.Generator().manual_seed(5))
    fig = plot_predictions(trained_anil, batch, steps=10)
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    (cell_h, cell_w), correct = mosaic_cell_size(), fig.predictions["after"].correct
    offset = fig.panel_offsets["after"]
    for i, (row, column) in enumerate(caption_cells(batch.query_y[0], 5)):
        pixel = mosaic[row * cell_h, offset + column * cell_w] / 255  # top-left frame pixel of query i
        colour = RIGHT_COLOUR if bool(correct[i]) else WRONG_COLOUR
        np.testing.assert_allclose(pixel, to_rgb(colour), atol=1 / 255)
