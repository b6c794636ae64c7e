"""The presets' budgets (the seed's 125 iterations, one pass over its tasks) and the supervised pre-training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from experiments.pretrain import (
    PRETRAIN_SOURCE,
    Augmentation,
    pretrain_body,
    pretrain_source,
    random_affine,
    split_drawings,
    spread_characters,
)
from experiments.scenarios import make_pools
from experiments.training import TaskOrder
from tests.evaluation_support import conv4
from utils.config import PRESETS, resolve_config
from utils.data import OmniglotSplit

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_seed_preset_is_the_seeds_budget_and_auto_picks_it_on_cuda():
    seed = resolve_config("seed", CPU)
    assert (seed.s1_iterations, seed.s2_iterations, seed.resnet_iterations, seed.maml_iterations) == (125,) * 4
    # 125 meta-batches of 16 are exactly one pass over the 2,000 training tasks.
    assert seed.s2_iterations * seed.meta_batch_size == seed.train_tasks == 2000
    assert (seed.image_size, seed.inner_lr, seed.outer_lr, seed.inner_steps) == (105, 0.01, 0.001, 5)
    assert resolve_config("auto", CUDA).preset == "seed" and resolve_config("auto", CPU).preset == "quick"


def test_gpu_preset_trains_longer_with_the_seeds_hyperparameters():
    seed, gpu = PRESETS["seed"], PRESETS["gpu"]
    for field in ("s1_iterations", "s2_iterations", "resnet_iterations", "maml_iterations"):
        assert getattr(gpu, field) > getattr(seed, field)
    assert gpu.s2_iterations == 1000 and gpu.image_size == 105
    same = ("inner_lr", "outer_lr", "inner_steps", "meta_batch_size", "train_tasks", "n_way", "k_shot", "k_query")
    assert all(getattr(gpu, f) == getattr(seed, f) for f in same)


def _fake_split(characters: int = 60, size: int = 8) -> OmniglotSplit:
    images = torch.randint(0, 256, (characters, 20, size, size), generator=torch.Generator().manual_seed(3),
                           dtype=torch.uint8)
    return OmniglotSplit(images, ["a"], [f"a/character{i:02d}" for i in range(characters)],
                         torch.zeros(characters, dtype=torch.long), "background")


def test_seed_preset_sees_every_task_once_in_the_same_order_for_every_scenario():
    config = PRESETS["seed"].replace(image_size=8, val_tasks=2, test_tasks=2, seed_test_tasks=2)
    pools = make_pools(_fake_split(), _fake_split(), config)
    assert len(pools.train) == 2000
    # run_scenario seeds every scenario's TaskOrder with config.seed: two orders stand for two scenarios.
    orders = [TaskOrder(len(pools.train), config.meta_batch_size, torch.Generator().manual_seed(config.seed))
              for _ in range(2)]
    batches = [torch.stack([order.next_indices() for _ in range(config.s1_iterations)]) for order in orders]
    assert torch.equal(batches[0], batches[1])
    assert torch.equal(batches[0].flatten().sort().values, torch.arange(2000))  # each task exactly once
    assert orders[0].epoch == 1


def test_held_out_drawings_are_never_trained_on():
    images = torch.arange(3 * 20, dtype=torch.uint8).view(3, 20, 1, 1).expand(3, 20, 4, 4).contiguous()
    train, held = split_drawings(images)
    assert train.shape == (3, 16, 4, 4) and held.shape == (3, 4, 4, 4)
    train_ids, held_ids = set(train[:, :, 0, 0].flatten().tolist()), set(held[:, :, 0, 0].flatten().tolist())
    assert not train_ids & held_ids and len(train_ids | held_ids) == 60
    with pytest.raises(ValueError, match="held_out"):
        split_drawings(images, 19)


def test_spread_characters_covers_the_range_evenly():
    assert spread_characters(10, 0).tolist() == list(range(10))
    assert spread_characters(10, 3).tolist() == [0, 4, 9] or spread_characters(10, 3).tolist() == [0, 5, 9]
    assert spread_characters(5, 9).tolist() == list(range(5))


def test_augmentation_is_identity_at_zero_and_deterministic_given_the_generator():
    images = torch.rand(6, 1, 28, 28)
    assert torch.allclose(random_affine(images, torch.Generator().manual_seed(0), magnitude=0.0), images, atol=1e-5)
    first = random_affine(images, torch.Generator().manual_seed(1))
    assert torch.equal(first, random_affine(images, torch.Generator().manual_seed(1)))
    assert not torch.allclose(first, random_affine(images, torch.Generator().manual_seed(2)))
    assert not torch.allclose(first, images)


def test_augmentation_matches_an_independent_rotation():
    """A rotation of exactly 90 degrees (the range scaled to the generator's first draw) is torch.rot90."""
    image = torch.rand(1, 1, 9, 9)
    generator = torch.Generator().manual_seed(0)
    u = torch.rand(1, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    rotation = 90.0 / float(u[0, 0])  # so that u * rotation = exactly 90 degrees
    out = random_affine(image, generator, Augmentation(rotation_deg=rotation, shift=0.0, scale=0.0))
    expected = [torch.rot90(image, k, dims=(2, 3)) for k in (1, -1)]
    assert min(float((out - e).abs().max()) for e in expected) < 1e-4
    assert math.isclose(float(u[0, 0]) * rotation, 90.0)


def test_pretrain_stats_round_trip_through_the_cache_and_label_the_source(background28, tmp_path, capsys):
    images = background28.images[:5]
    # 8 steps an epoch for 6 epochs: enough for BatchNorm's running statistics, which the held-out score uses.
    options = {"batch_size": 10, "lr": 1e-2, "cache_dir": tmp_path, "progress": False, "device": "cpu"}
    trained = pretrain_body(conv4()[0], images, 6, generator=torch.Generator().manual_seed(0), **options)
    stats = trained.pretrain_stats
    assert stats["characters"] == 5 and stats["epochs"] == 6 and stats["image_size"] == 28
    assert stats["train_drawings"] == 16 and stats["held_out_drawings"] == 4 and stats["seconds"] > 0
    assert stats["held_out_accuracy"] > 0.4  # chance is 0.2 over 5 characters
    assert trained.pretrained_source == pretrain_source(stats)
    assert "held-out drawings" in capsys.readouterr().out
    reloaded = pretrain_body(conv4()[0], images, 6, generator=torch.Generator().manual_seed(0), **options)
    assert reloaded.pretrain_stats == stats and reloaded.pretrained_source == trained.pretrained_source
    assert "Loaded the pre-trained conv4 body from the cache" in capsys.readouterr().out
    assert len(list(tmp_path.glob("pretrained_conv4_*.pt"))) == 1
    pretrain_body(conv4()[0], images, 6, generator=torch.Generator().manual_seed(0), **options,
                  augmentation=Augmentation(rotation_deg=5.0))
    assert len(list(tmp_path.glob("pretrained_conv4_*.pt"))) == 2  # another setting, another file


def test_pretrained_features_separate_the_unseen_drawers(background28):
    """Independent of the temporary classifier: nearest class mean of the features on the 4 held-out drawers."""
    images = background28.images[:4]
    body = pretrain_body(conv4()[0], images, 6, generator=torch.Generator().manual_seed(0), device="cpu",
                         batch_size=8, lr=1e-2, progress=False)
    assert 0.0 <= body.pretrain_stats["held_out_accuracy"] <= 1.0
    body.eval()
    with torch.no_grad():
        feats = F.normalize(body(images.float().div(255).view(-1, 1, 28, 28)), dim=1).view(4, 20, -1)
    means = F.normalize(feats[:, :16].mean(1), dim=1)
    predicted = (feats[:, 16:] @ means.T).argmax(-1)
    assert (predicted == torch.arange(4)[:, None]).float().mean() > 0.5


def test_label_format_is_exact():
    assert pretrain_source({"held_out_accuracy": 0.873}) == "Omniglot background, supervised (held-out drawings 87.3%)"
    assert pretrain_source(None) == PRETRAIN_SOURCE
