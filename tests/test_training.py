"""Meta-training loop: results, determinism, checkpoints, interrupts, non-finite losses, and pre-training.

Tiny real runs: conv4 on 28x28 Omniglot, 5-way 1-shot tasks with 2 queries per class, meta-batches of 2.
"""

from __future__ import annotations

import json

import pytest
import torch
from evaluation_support import conv4, make_anil, make_pool, run, state_tensors

from algorithms.maml import MAML
from evaluation.evaluate import evaluate
from experiments.pretrain import PRETRAIN_SOURCE, pretrain_body
from experiments.records import TrainResult
from experiments.training import NonFiniteLossError, TaskOrder, train


@pytest.fixture(scope="module")
def pool(background28):
    """Six training tasks: three meta-batches of 2 per epoch, so short runs cross epoch boundaries."""
    return make_pool(background28, num_tasks=6, seed=0)


def stop_at(iteration: int):
    """A callback that presses the stop button after ``iteration`` completed iterations."""

    def callback(done: int, stats: dict[str, float]) -> None:
        if done == iteration:
            raise KeyboardInterrupt

    return callback


def assert_same_state(a, b) -> None:
    tensors_a, tensors_b = state_tensors(a), state_tensors(b)
    assert tensors_a.keys() == tensors_b.keys()
    for name, tensor in tensors_a.items():
        assert torch.equal(tensor, tensors_b[name]), name


def test_train_result_fields_and_json_round_trip(pool):
    result = run(make_anil(), pool, iterations=3)
    assert result.iterations_done == result.iterations_planned == len(result.losses) == len(result.accs) == 3
    assert all(torch.isfinite(torch.tensor(result.losses))) and all(0 <= a <= 1 for a in result.accs)
    assert result.wall_time_s > 0 and result.iterations_per_s == pytest.approx(3 / result.wall_time_s)
    assert result.memory_kind == "cpu_peak_rss" and result.peak_memory_mb > 10  # torch alone needs more
    assert result.gpu_utilisation is None and not result.interrupted and result.device.startswith("cpu")
    assert TrainResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    with pytest.raises(ValueError, match="missing fields"):
        TrainResult.from_dict({"scenario": "S1"})


def test_same_seed_gives_identical_history_and_a_different_seed_does_not(pool):
    first, second, other = make_anil(), make_anil(), make_anil()
    a, b = run(first, pool, iterations=4), run(second, pool, iterations=4)
    assert a.losses == b.losses and a.accs == b.accs  # exact, not approximate
    assert_same_state(first, second)
    assert run(other, pool, iterations=4, seed=1).losses != a.losses  # the task order comes from the seed


def test_task_order_visits_each_task_once_per_epoch_and_restores_exactly():
    order = TaskOrder(num_tasks=10, meta_batch_size=4, generator=torch.Generator().manual_seed(0))
    epoch = torch.cat([order.next_indices(), order.next_indices()])
    assert len(set(epoch.tolist())) == 8 and order.epoch == 1  # the last 2 tasks are skipped, not reused
    state = order.state_dict()
    following = [order.next_indices() for _ in range(5)]
    assert order.epoch == 4
    restored = TaskOrder(10, 4, torch.Generator().manual_seed(123))
    restored.load_state_dict(state)
    assert all(torch.equal(x, restored.next_indices()) for x in following)
    with pytest.raises(ValueError, match=r"CPU torch\.Generator"):
        TaskOrder(10, 4, generator=None)


def test_interrupted_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(pool, tmp_path, capsys):
    reference = make_anil()
    expected = run(reference, pool, iterations=7)
    checkpoint = tmp_path / "s1.pt"
    first = run(make_anil(), pool, iterations=7, checkpoint_path=checkpoint, checkpoint_every=2, callback=stop_at(3))
    assert first.interrupted and first.iterations_done == 3 and first.losses == expected.losses[:3]
    assert "interrupted after 3 of 7" in capsys.readouterr().out
    resumed_learner = make_anil(seed=5)  # different initial weights: everything must come from the file
    resumed = run(resumed_learner, pool, iterations=7, seed=99, checkpoint_path=checkpoint, resume_from=checkpoint)
    assert not resumed.interrupted and resumed.iterations_done == 7
    assert resumed.losses == expected.losses and resumed.accs == expected.accs
    assert_same_state(resumed_learner, reference)
    for p, q in zip(resumed_learner.trainable_parameters(), reference.trainable_parameters(), strict=True):
        state_p, state_q = resumed_learner.optimizer.state[p], reference.optimizer.state[q]
        assert all(torch.equal(state_p[k], state_q[k]) for k in state_q)


def test_keyboard_interrupt_keeps_history_and_writes_a_final_checkpoint(pool, tmp_path, capsys):
    checkpoint = tmp_path / "run.pt"
    result = run(make_anil(), pool, iterations=50, checkpoint_path=checkpoint, callback=stop_at(2))
    assert result.interrupted and result.iterations_done == 2 and len(result.losses) == 2
    saved = torch.load(checkpoint, weights_only=True)["progress"]["state"]
    assert saved["iteration"] == 2 and saved["losses"] == result.losses
    out = capsys.readouterr().out
    assert "interrupted" in out and str(checkpoint) in out


def test_non_finite_loss_names_scenario_iteration_and_cause_and_keeps_last_checkpoint(pool, tmp_path):
    checkpoint, written = tmp_path / "nan.pt", []
    learner = make_anil(outer_lr=1e30)  # one Adam step of 1e30 makes the next forward overflow
    with pytest.raises(NonFiniteLossError) as info:
        run(
            learner,
            pool,
            iterations=5,
            scenario="S2",
            checkpoint_path=checkpoint,
            checkpoint_every=1,
            callback=lambda it, stats: written.append(checkpoint.read_bytes()),
        )
    assert written, "the first iteration must still be finite for this test to check the checkpoint"
    message = str(info.value)
    assert "'S2'" in message and f"iteration {len(written) + 1}" in message and "learning rate" in message
    assert str(checkpoint) in message
    assert checkpoint.read_bytes() == written[-1]
    assert isinstance(info.value, FloatingPointError)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_raises_value_error_and_is_left_unchanged(pool, tmp_path, damage):
    checkpoint = tmp_path / "bad.pt"
    if damage == "garbage":
        checkpoint.write_bytes(b"this is not a checkpoint" * 20)
    else:
        run(make_anil(), pool, iterations=1, checkpoint_path=checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    before = checkpoint.read_bytes()
    with pytest.raises(ValueError, match="corrupt") as info:
        run(make_anil(), pool, iterations=2, checkpoint_path=checkpoint, resume_from=checkpoint)
    assert str(checkpoint) in str(info.value)
    assert checkpoint.read_bytes() == before


def test_mismatched_checkpoint_names_the_differences(pool, tmp_path):
    checkpoint = tmp_path / "conv4.pt"
    run(make_anil(), pool, iterations=1, checkpoint_path=checkpoint)
    before = checkpoint.read_bytes()
    other_arch = MAML(*conv4(image_size=32))  # 256 features instead of 64
    with pytest.raises(ValueError, match="does not match") as info:
        run(other_arch, pool, iterations=2, checkpoint_path=checkpoint, resume_from=checkpoint)
    assert str(checkpoint) in str(info.value) and "head.weight" in str(info.value)
    assert "learner" in str(info.value)
    with pytest.raises(ValueError, match=r"scenario: checkpoint has 'S1', this run has 'S3'"):
        run(make_anil(), pool, iterations=2, scenario="S3", resume_from=checkpoint)
    with pytest.raises(ValueError, match="inner_lr"):
        run(make_anil(inner_lr=0.1), pool, iterations=2, resume_from=checkpoint)
    assert checkpoint.read_bytes() == before


def test_validation_runs_on_the_validation_pool_every_k_iterations(pool, background28):
    val_pool = make_pool(background28, num_tasks=4, seed=7)
    learner = make_anil()
    result = run(learner, pool, iterations=4, val_pool=val_pool, val_every=2)
    assert [entry["iteration"] for entry in result.val_history] == [2, 4]
    final = evaluate(learner, val_pool, device="cpu", progress=False)
    assert result.val_history[-1]["acc"] == final.acc_after and result.val_history[-1]["ci"] == final.ci_after
    assert result.val_history[-1]["per_task"] == final.per_task_after  # paired comparisons at equal budgets
    times = [entry["wall_time_s"] for entry in result.val_history]
    assert 0 < times[0] < times[1] == result.wall_time_s  # training seconds so far, validations excluded
    with pytest.raises(ValueError, match="val_pool"):
        run(make_anil(), pool, iterations=2, val_every=2)


def test_a_run_shorter_than_val_every_still_ends_with_a_validation(pool, background28):
    # A student who lowers the iterations below val_every must still get a validation curve (the notebook plots it).
    val_pool = make_pool(background28, num_tasks=4, seed=7)
    assert [v["iteration"] for v in run(make_anil(), pool, iterations=3, val_pool=val_pool,
                                        val_every=5).val_history] == [3]
    assert [v["iteration"] for v in run(make_anil(), pool, iterations=5, val_pool=val_pool,
                                        val_every=2).val_history] == [2, 4, 5]


def test_maml_trains_and_resumes_through_the_same_interface(pool, tmp_path):
    maml = MAML(*conv4(), inner_lr=0.4, inner_steps=1)
    checkpoint = tmp_path / "maml.pt"
    result = run(maml, pool, iterations=2, scenario="MAML", checkpoint_path=checkpoint)
    assert result.iterations_done == 2 and all(map(lambda x: x == x, result.losses))
    assert torch.load(checkpoint, weights_only=True)["metadata"]["learner"] == "MAML"


def pretrain(images, epochs, cache_dir, generator=None, **kwargs):
    """pretrain_body of a conv4 body with fixed initial weights, on the CPU, quietly."""
    options = {"batch_size": 20, "lr": 1e-2, "cache_dir": cache_dir, "progress": False, **kwargs}
    generator = generator or torch.Generator().manual_seed(0)
    return pretrain_body(conv4()[0], images, epochs, generator=generator, device="cpu", **options)


def test_pretrain_body_learns_caches_and_reloads(background28, tmp_path, capsys):
    images = background28.images[:5]  # 5 characters x 20 drawings
    generator, again_generator = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    trained = pretrain(images, 2, tmp_path, generator=generator)
    assert trained.pretrained_source.startswith(PRETRAIN_SOURCE + " (held-out drawings ")
    assert trained.pretrain_stats["train_accuracy"] > 0.5  # chance is 0.2 over 5 characters
    assert "Pre-trained the conv4 body" in capsys.readouterr().out
    assert len(list(tmp_path.glob("pretrained_conv4_*.pt"))) == 1
    reloaded = pretrain(images, 2, tmp_path, generator=again_generator)
    assert "Loaded the pre-trained conv4 body from the cache" in capsys.readouterr().out
    assert reloaded.pretrain_stats == trained.pretrain_stats
    assert all(
        torch.equal(a, b) for a, b in zip(trained.state_dict().values(), reloaded.state_dict().values(), strict=True)
    )
    assert torch.equal(generator.get_state(), again_generator.get_state())  # same draws, hit or miss
    pretrain(images, 1, tmp_path)
    assert len(list(tmp_path.glob("pretrained_conv4_*.pt"))) == 2  # other epochs, other file


def test_corrupt_pretrain_cache_is_ignored_with_a_warning(background28, tmp_path):
    images = background28.images[:3]
    pretrain(images, 1, tmp_path, batch_size=30)
    (cache,) = tmp_path.glob("pretrained_conv4_*.pt")
    cache.write_bytes(b"broken")
    with pytest.warns(UserWarning, match="unusable"):
        body = pretrain(images, 1, tmp_path, batch_size=30)
    assert body.pretrained_source.startswith(PRETRAIN_SOURCE)
    assert torch.load(cache, weights_only=True)["fingerprint"]  # rewritten, complete


def test_cosine_schedule_anneals_the_outer_rate_and_is_a_function_of_the_iteration(pool):
    from experiments.training import outer_lr_factor

    assert outer_lr_factor("constant", 7, 10) == 1.0
    assert outer_lr_factor("cosine", 0, 10) == 1.0
    assert outer_lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    learner = make_anil()
    seen = []
    train(learner, pool, 4, 2, generator=torch.Generator().manual_seed(0), device="cpu", scenario="cos",
          lr_schedule="cosine", progress=False,
          callback=lambda i, s: seen.append(learner.optimizer.param_groups[0]["lr"]))
    expected = [learner.outer_lr * outer_lr_factor("cosine", i, 4) for i in range(4)]
    assert seen == pytest.approx(expected)
    with pytest.raises(ValueError, match="lr_schedule"):
        train(learner, pool, 1, 2, generator=torch.Generator(), device="cpu", scenario="x", lr_schedule="step")
