"""Bad input is rejected early with a message naming the problem; unwritable folders leave nothing behind."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from evaluation_support import conv4, fake_eval, fake_record, fake_train, make_anil, make_pool, run
from torch import nn

from algorithms.anil import ANIL
from evaluation.evaluate import evaluate
from experiments.pretrain import pretrain_body
from experiments.results import save_result, save_table
from report.compare import comparison_table
from utils.config import PRESETS, resolve_config


@pytest.fixture(scope="module")
def pool(background28):
    return make_pool(background28, num_tasks=6, seed=0)


def count_forwards(learner) -> list[int]:
    """A list that grows by one at every forward of ``learner.body``: proves that nothing was computed."""
    calls: list[int] = []
    learner.body.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.fixture
def blocked(tmp_path):
    """A folder path that runs through a regular file: unwritable even for root."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file, not a folder")
    return blocker / "sub"


@pytest.mark.parametrize(
    ("name", "iterations", "meta_batch_size"),
    [
        ("iterations", 0, 2),
        ("iterations", -3, 2),
        ("iterations", 2.5, 2),
        ("meta_batch_size", 2, 0),
        ("meta_batch_size", 2, -1),
        ("meta_batch_size", 2, True),
    ],
)
def test_non_positive_counts_raise_value_error_naming_the_value(pool, name, iterations, meta_batch_size):
    learner = make_anil()
    calls = count_forwards(learner)
    value = iterations if name == "iterations" else meta_batch_size
    with pytest.raises(ValueError, match=re.escape(f"{name} must be an integer >= 1, got {value!r}")):
        run(learner, pool, iterations=iterations, meta_batch_size=meta_batch_size)
    assert not calls


def test_meta_batch_larger_than_the_pool_is_rejected(pool):
    with pytest.raises(ValueError, match="meta_batch_size=7 exceeds the 6 tasks"):
        run(make_anil(), pool, iterations=1, meta_batch_size=7)


@pytest.mark.parametrize("name", ["inner_lr", "outer_lr"])
@pytest.mark.parametrize("value", [0.0, -0.01, math.nan, math.inf])
def test_learning_rates_must_be_positive_and_finite(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a positive finite number, got {value!r}"):
        make_anil(**{name: value})


def test_head_size_different_from_n_way_fails_before_any_compute(pool, evaluation28):
    learner = make_anil(n_way=3)
    calls = count_forwards(learner)
    with pytest.raises(ValueError, match="The head has 3 outputs but the tasks are 5-way"):
        run(learner, pool, iterations=1)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        evaluate(learner, make_pool(evaluation28, 2, seed=0), device="cpu", progress=False)
    assert not calls


@pytest.mark.parametrize("bad_label", [5, -1])
def test_labels_outside_the_head_range_are_rejected(pool, bad_label):
    learner = make_anil()
    calls = count_forwards(learner)
    support_x, support_y, query_x, query_y = pool.batch([0, 1])
    query_y = query_y.clone()
    query_y[1, 3] = bad_label
    with pytest.raises(ValueError, match=r"query_y has labels in .*outside \[0, 5\)"):
        learner.meta_loss((support_x, support_y, query_x, query_y))
    assert not calls


@pytest.mark.parametrize("reshape", ["rank4", "rgb"])
def test_images_of_the_wrong_rank_or_channels_name_the_expected_shape(pool, reshape):
    learner = make_anil()
    support_x, support_y, query_x, query_y = pool.batch([0, 1])
    bad = support_x.squeeze(2) if reshape == "rank4" else support_x.expand(-1, -1, 3, -1, -1)
    with pytest.raises(ValueError, match=re.escape("support_x must have shape (tasks, n_images, 1, H, W)")):
        learner.meta_loss((bad, support_y, query_x, query_y))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(tasks, n, 1, H, W)`` -> ``(tasks, n, 1, size, size)``."""
    tasks, n = images.shape[:2]
    return F.interpolate(images.flatten(0, 1), size=(size, size)).view(tasks, n, 1, size, size)


def test_images_of_the_wrong_size_are_rejected_by_the_body_or_the_feature_check(pool):
    support_x, support_y, query_x, query_y = pool.batch([0, 1])
    tasks = (resize(support_x, 32), support_y, resize(query_x, 32), query_y)
    with pytest.raises(ValueError, match="built for 28×28 images"):  # utils.networks.ImageBody's own check
        make_anil().meta_loss(tasks)
    body, head = conv4()
    plain = ANIL(nn.Sequential(*body.children()), head)  # a body without ImageBody's input check
    with pytest.raises(ValueError, match=r"produced 256 features .* \(1, 32, 32\), but the head expects 64"):
        plain.meta_loss(tasks)


def test_misspelled_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown preset 'quik'") as info:
        resolve_config("quik", torch.device("cpu"))
    assert all(repr(name) in str(info.value) for name in ("auto", *PRESETS))


def test_unwritable_checkpoint_folder_fails_before_training_and_leaves_nothing(pool, blocked):
    learner = make_anil()
    calls = count_forwards(learner)
    with pytest.raises(PermissionError, match=re.escape(str(blocked))):
        run(learner, pool, iterations=2, checkpoint_path=blocked / "s1.pt")
    assert not calls and [p.name for p in blocked.parent.parent.iterdir()] == ["not-a-folder"]


def test_unwritable_results_and_cache_folders_raise_and_leave_nothing(background28, blocked):
    record = fake_record("S1", fake_train([1.0, 0.5], [0.4, 0.6]), fake_eval([0.2, 0.2], [0.6, 0.4]))
    with pytest.raises(PermissionError, match="Cannot write to the folder"):
        save_result(blocked, record, PRESETS["smoke"])
    with pytest.raises(PermissionError, match="Cannot write to the folder"):
        save_table(comparison_table({"S1": record}), blocked, "comparison")
    body = conv4()[0]
    calls: list[int] = []
    body.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(PermissionError, match=re.escape(str(blocked))):
        pretrain_body(
            body,
            background28.images[:2],
            1,
            generator=torch.Generator().manual_seed(0),
            device="cpu",
            cache_dir=blocked,
            progress=False,
        )
    assert not calls and [p.name for p in blocked.parent.parent.iterdir()] == ["not-a-folder"]
