"""The sync-free meta-train step and its CUDA graph: identical histories on the CPU, replay equal to eager on CUDA.

CPU tests compare :func:`experiments.training.train` (statistics kept on the device and read in batches) against a
plain loop that reads ``loss.item()`` after every chunk, as the step did before. CUDA tests (skipped without a
GPU) compare a replayed graph step with an eager one.
"""

from __future__ import annotations

import math

import pytest
import torch
from evaluation_support import conv4, make_anil, make_pool, run, state_tensors

from algorithms.anil import ANIL
from algorithms.cuda_graph import GraphCaptureError, GraphedStep, resolve_graph_mode
from algorithms.maml import MAML
from experiments import training
from experiments.training import NonFiniteLossError, TaskOrder, outer_lr_factor

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def pool(background28):
    """Eight training tasks: two meta-batches of 4 per epoch."""
    return make_pool(background28, num_tasks=8, seed=0)


def reference_run(learner, pool, iterations: int, meta_batch_size: int, schedule: str = "constant"):
    """The pre-sync-free loop: one ``.item()`` per chunk, floats summed on the host; stops at a non-finite loss.

    Returns:
        ``(losses, accs, first_bad_iteration or None)``.
    """
    order = TaskOrder(len(pool), meta_batch_size, torch.Generator().manual_seed(0))
    losses, accs = [], []
    for it in range(iterations):
        tasks = pool.batch(order.next_indices(), "cpu")
        for group in learner.optimizer.param_groups:
            group["lr"] = learner.outer_lr * outer_lr_factor(schedule, it, iterations)
        learner.optimizer.zero_grad(set_to_none=True)
        n = len(tasks[0])
        chunk = getattr(learner, "task_chunk", None) or n  # MAML has no chunks: one meta_loss over all tasks
        loss_sum = acc_sum = 0.0
        for start in range(0, n, chunk):
            part = [t[start : start + chunk] for t in tasks]
            loss, acc = learner.meta_loss(part)
            (loss * (len(part[0]) / n)).backward()
            loss_sum, acc_sum = loss_sum + loss.item() * len(part[0]), acc_sum + acc.item() * len(part[0])
        learner.optimizer.step()
        if not math.isfinite(loss_sum / n):
            return losses, accs, it + 1
        losses.append(loss_sum / n)
        accs.append(acc_sum / n)
    return losses, accs, None


@pytest.mark.parametrize("task_chunk", [4, 3])  # one chunk (float32 statistics), and chunks of 3 + 1 (float64)
def test_sync_free_training_gives_a_bit_identical_history(pool, monkeypatch, task_chunk):
    monkeypatch.setattr(training, "READ_EVERY", 3)  # reads after iterations 3, 6 and at the end (7)
    expected_learner, learner = make_anil(task_chunk=task_chunk), make_anil(task_chunk=task_chunk)
    losses, accs, _ = reference_run(expected_learner, pool, 7, 4, "cosine")
    result = run(learner, pool, iterations=7, meta_batch_size=4, lr_schedule="cosine")
    assert result.losses == losses and result.accs == accs  # exact
    for name, tensor in state_tensors(expected_learner).items():
        assert torch.equal(tensor, state_tensors(learner)[name]), name
    for p, q in zip(learner.trainable_parameters(), expected_learner.trainable_parameters(), strict=True):
        assert all(torch.equal(learner.optimizer.state[p][k], expected_learner.optimizer.state[q][k])
                   for k in learner.optimizer.state[q])


def make_maml(layout: str = "vmap", first_order: bool = False, **kwargs) -> MAML:
    body, head = conv4(0)
    return MAML(body, head, **{"inner_lr": 0.4, "outer_lr": 0.003, "inner_steps": 2, "first_order": first_order,
                               "layout": layout, **kwargs})


@pytest.mark.parametrize("layout", ["vmap", "loop"])
def test_maml_sync_free_training_gives_a_bit_identical_history(pool, monkeypatch, layout):
    """MAML's step returns device tensors too (it read .item() every step); the history must not change."""
    monkeypatch.setattr(training, "READ_EVERY", 3)
    expected_learner, learner = make_maml(layout), make_maml(layout)
    losses, accs, _ = reference_run(expected_learner, pool, 5, 4, "cosine")
    result = run(learner, pool, iterations=5, meta_batch_size=4, lr_schedule="cosine")
    assert result.losses == losses and result.accs == accs  # exact
    for name, tensor in state_tensors(expected_learner).items():
        assert torch.equal(tensor, state_tensors(learner)[name]), name


@pytest.mark.parametrize("make", [make_anil, make_maml], ids=["anil", "maml"])
def test_step_returns_detached_device_tensors(pool, make):
    stats = make().meta_train_step(pool.batch([0, 1]))
    assert set(stats) == {"loss", "acc"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_non_finite_loss_is_caught_at_the_batched_read_and_names_its_iteration(pool, monkeypatch):
    monkeypatch.setattr(training, "READ_EVERY", 4)
    _, _, bad = reference_run(make_anil(outer_lr=1e30), pool, 6, 4)
    assert bad is not None and bad < 4, "the loss must overflow before the first read for this test"
    with pytest.raises(NonFiniteLossError, match=f"'S2'.* at iteration {bad} of 6"):
        run(make_anil(outer_lr=1e30), pool, iterations=6, meta_batch_size=4, scenario="S2")


class FloatLearner:
    """A learner whose step returns floats (as MAML's did): the loop must accept both."""

    def __init__(self, anil) -> None:
        self.body, self.head, self.optimizer = anil.body, anil.head, anil.optimizer
        self.inner_lr, self.outer_lr, self.set_outer_lr = anil.inner_lr, anil.outer_lr, anil.set_outer_lr
        self.meta_train_step = lambda tasks: {k: v.item() for k, v in anil.meta_train_step(tasks).items()}


def test_learners_returning_floats_train_alike(pool, monkeypatch):
    monkeypatch.setattr(training, "READ_EVERY", 2)
    floats = run(FloatLearner(make_anil()), pool, iterations=3, meta_batch_size=4, lr_schedule="cosine")
    tensors = run(make_anil(), pool, iterations=3, meta_batch_size=4, lr_schedule="cosine")
    assert floats.losses == tensors.losses and floats.accs == tensors.accs


def test_graph_mode_is_validated_and_off_without_cuda():
    assert resolve_graph_mode("auto", torch.device("cpu")) is False
    assert resolve_graph_mode(False, torch.device("cuda")) is False
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_graph_mode(True, torch.device("cpu"))
    with pytest.raises(ValueError, match="cuda_graph must be"):
        resolve_graph_mode("yes", torch.device("cpu"))
    assert not make_anil().graph_captured


class FakeGraph:
    """Stands in for ``torch.cuda.CUDAGraph`` on a CPU: replay runs the recorded step on the static inputs."""

    def __init__(self, graphed: GraphedStep) -> None:
        self.graphed, self.replays = graphed, 0

    def replay(self) -> None:
        self.replays += 1
        self.graphed.static_output.copy_(self.graphed.step(*self.graphed.static_inputs))


def cpu_graphs(monkeypatch, fail: bool = False) -> None:
    """Run GraphedStep's bookkeeping on a CPU: warm-up without streams, capture as a FakeGraph (or a failure)."""

    def capture(self, inputs):
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing\nsecond line")
        self.static_inputs = [x.clone() for x in inputs]
        self.static_output = torch.zeros(())  # recording runs nothing
        self.graph, self.fingerprint = FakeGraph(self), tuple(t.data_ptr() for t in self.state())

    monkeypatch.setattr(GraphedStep, "_warm_up", lambda self, inputs: self.step(*inputs))
    monkeypatch.setattr(GraphedStep, "_capture", capture)


def counting_step():
    """A stateful step ``total += x`` returning the new total, and its state."""
    total = torch.zeros(())

    def step(x):
        total.add_(x)
        return total.clone()

    return step, total


def test_graphed_step_warms_up_captures_replays_and_recaptures_on_new_state(monkeypatch):
    cpu_graphs(monkeypatch)
    step, total = counting_step()
    state = [total]
    graphed = GraphedStep(step, state=lambda: state, prepare=lambda: None, warmup=2)
    outs = [graphed([torch.tensor(float(i))], key="a").item() for i in range(1, 5)]
    assert outs == [1, 3, 6, 10] and graphed.captured and graphed.graph.replays == 2  # 2 eager, then 2 replays
    assert graphed([torch.tensor(1.0)], key="b").item() == 11  # another signature runs eagerly ...
    assert graphed([torch.tensor(2.0)], key="a").item() == 13 and graphed.graph.replays == 3  # ... graph kept
    state[0] = torch.zeros(())  # the state was replaced (as by load_state_dict): warm up again, then recapture
    assert graphed([torch.tensor(1.0)], key="a").item() == 14 and not graphed.captured


def test_capture_failure_falls_back_to_eager_with_a_one_line_notice(monkeypatch, capsys):
    cpu_graphs(monkeypatch, fail=True)
    step, _ = counting_step()
    graphed = GraphedStep(step, state=list, prepare=lambda: None, warmup=2, name="toy step")
    assert [graphed([torch.tensor(1.0)], key="a").item() for _ in range(5)] == [1, 2, 3, 4, 5]
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "NOTICE: CUDA-graph capture of the toy step failed (RuntimeError" in out
    assert graphed.disabled and not graphed.captured
    strict = GraphedStep(counting_step()[0], state=list, prepare=lambda: None, strict=True, warmup=1)
    strict([torch.tensor(1.0)], key="a")
    with pytest.raises(GraphCaptureError, match="stream is capturing"):
        strict([torch.tensor(1.0)], key="a")


def cuda_pair(learner_class=ANIL, **kwargs):
    """Two identical learners on CUDA: one replaying a graph, one eager with the same capturable Adam."""
    learners = []
    for _ in range(2):
        body, head = conv4(0)
        options = {"inner_lr": 0.4, "outer_lr": 0.003, "inner_steps": 2, "cuda_graph": True, **kwargs}
        learners.append(learner_class(body.cuda(), head.cuda(), **options))
    learners[1]._graph.disabled = True
    return learners


@CUDA
@pytest.mark.parametrize("kind", ["anil-auto", "anil-grouped", "maml-vmap"])  # grouped: GroupedNorm's backward
@pytest.mark.parametrize("first_order", [True, False])
def test_replayed_graph_step_equals_an_eager_step(pool, monkeypatch, first_order, kind):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    name, layout = kind.split("-")
    graphed, eager = cuda_pair(ANIL if name == "anil" else MAML, first_order=first_order, layout=layout)
    for step in range(6):
        tasks = pool.batch([step % 8, (step + 1) % 8, (step + 2) % 8, (step + 3) % 8], "cuda")
        stats = []
        for learner in (graphed, eager):
            learner.set_outer_lr(0.003 * (1 - step / 6))
            stats.append({k: float(v) for k, v in learner.meta_train_step(tasks).items()})
        assert stats[0]["loss"] == pytest.approx(stats[1]["loss"], rel=1e-5, abs=1e-6)
        assert stats[0]["acc"] == pytest.approx(stats[1]["acc"], abs=1e-6)
    assert graphed.graph_captured and not eager.graph_captured
    for name, tensor in state_tensors(eager).items():  # parameters and BatchNorm running statistics
        torch.testing.assert_close(state_tensors(graphed)[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@CUDA
def test_pinned_cuda_batch_equals_the_cpu_batch(pool):
    for cpu, gpu in zip(pool.batch([0, 3]), pool.batch([0, 3], "cuda"), strict=True):
        # Labels exactly; images up to the last bit of uint8 -> float division, which CPU and GPU round alike only
        # to 1 ulp. A race on the pinned buffer would show up as whole pixels that differ.
        assert gpu.is_cuda
        if cpu.is_floating_point():
            torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-7)
            assert torch.equal((gpu.cpu() * 255).round(), (cpu * 255).round())
        else:
            assert torch.equal(cpu, gpu.cpu())


@CUDA
def test_graphed_training_resumes_after_the_optimizer_state_is_replaced(pool, tmp_path, monkeypatch):
    """Resuming replaces Adam's state tensors: the graph must notice and recapture, not replay stale memory."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    def fit(learner, **kwargs):
        return training.train(learner, pool, 8, 4, generator=torch.Generator().manual_seed(0), device="cuda",
                              scenario="S2", progress=False, **kwargs)

    reference, learner = cuda_pair()
    learner._graph.disabled = False
    expected = fit(reference)
    checkpoint = tmp_path / "g.pt"

    def stop(it, stats):
        if it == 5:
            raise KeyboardInterrupt

    fit(learner, checkpoint_path=checkpoint, callback=stop)
    assert learner.graph_captured
    result = fit(learner, resume_from=checkpoint)  # same learner: its graph recorded the old Adam state
    assert result.losses == pytest.approx(expected.losses, rel=1e-4, abs=1e-5)
    for name, tensor in state_tensors(reference).items():
        torch.testing.assert_close(state_tensors(learner)[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_speed_levers_give_the_same_meta_loss(pool, monkeypatch):
    """channels_last, a compiled grouped body and autograd's BatchNorm formula change speed only (compiled with the
    cheap "eager" backend)."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, **{**kw, "backend": "eager"}))
    tasks = pool.batch([0, 1])
    expected = make_anil(layout="grouped").meta_loss(tasks)[0]
    for lever in ({"channels_last": True}, {"compile_body": True}, {"fused_bn": False}):
        learner = make_anil(layout="grouped", **lever)
        loss = learner.meta_loss(tasks)[0]
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6, msg=str(lever))
        assert (learner._compiled is not None) == ("compile_body" in lever)
