"""Capture a whole training step (forward, backward, optimizer step) in one CUDA graph and replay it.

On a GPU an ANIL meta-iteration (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR 2020, arXiv:1909.09157) launches hundreds of small kernels, so at
28x28 the host, not the GPU, sets the pace. A ``torch.cuda.CUDAGraph`` records those launches once and replays
them with one call. This module is the learner-independent part, following PyTorch's "whole network capture"
recipe (``torch.cuda.graph`` documentation):

* eager warm-up steps run on a side stream (lazy initialisation of cuDNN/cuBLAS handles and of the optimizer
  state happens there, outside the capture); the capture then uses the same stream;
* the step reads its inputs from static buffers, which every later call copies the new inputs into;
* the optimizer must be ``capturable`` (its step counters live on the GPU), and a learning rate that changes
  between replays must be a GPU tensor, updated in place (:func:`make_capturable`, and
  :meth:`algorithms.learner.OuterLoop.set_outer_lr`);
* nothing inside the step may read a GPU value on the host (``.item()``, ``int(tensor)``).

A graph is tied to the memory addresses it recorded. :class:`GraphedStep` therefore keeps one graph for one input
signature (shapes, dtypes, hyperparameters), runs any other signature eagerly, and recaptures when the
parameters, buffers or optimizer state it recorded were replaced (``optimizer.load_state_dict`` on resume, say).
When capture fails, ``"auto"`` falls back to eager steps with a one-line notice; ``True`` raises.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

GraphMode = Literal["auto"] | bool
WARMUP_STEPS = 2  # eager steps before capture: lazy initialisation (optimizer state, library handles) happens here


def resolve_graph_mode(mode: GraphMode, device: torch.device) -> bool:
    """Whether a learner on ``device`` captures its step: ``"auto"`` on CUDA only, never on a CPU or MPS.

    Raises:
        ValueError: ``mode`` is not ``"auto"``, ``True`` or ``False``, or ``True`` on a device without CUDA graphs.
    """
    if not (mode == "auto" or isinstance(mode, bool)):
        raise ValueError(f"cuda_graph must be 'auto', True or False, got {mode!r}.")
    if mode is True and device.type != "cuda":
        raise ValueError(
            f"cuda_graph=True needs a CUDA device, but the learner is on {device}; pass 'auto' (graphs on CUDA "
            "only) or False."
        )
    return bool(mode) and device.type == "cuda"


def make_capturable(optimizer: torch.optim.Optimizer, lr: Tensor) -> None:
    """Make ``optimizer`` capturable in place, with the learning rate read from the GPU tensor ``lr``.

    Also repairs what ``load_state_dict`` of a non-capturable checkpoint brings back: the flag, a float
    learning rate and step counters on the CPU.

    Args:
        optimizer: an Adam-like optimizer with a ``capturable`` option.
        lr: 0-d float tensor on the parameters' device, shared by every parameter group.
    """
    for group in optimizer.param_groups:
        current = group["lr"]
        if current is not lr:
            lr.fill_(float(current))  # a float, or a CPU tensor restored from a checkpoint
            group["lr"] = lr
        group["capturable"] = True
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            step = state.get("step")
            if isinstance(step, Tensor) and step.device != param.device:
                state["step"] = step.to(device=param.device, dtype=torch.float32)


def _fingerprint(tensors: Iterable[Tensor]) -> tuple[int, ...]:
    """Addresses of the tensors a graph recorded; any change means the graph would read stale memory."""
    return tuple(t.data_ptr() for t in tensors)


class GraphCaptureError(RuntimeError):
    """Capturing a step in a CUDA graph failed (raised only with ``cuda_graph=True``)."""


class GraphedStep:
    """Run ``step(*inputs)`` eagerly for a few calls, then capture it in a CUDA graph and replay it.

    Args:
        step: the training step; reads only its input tensors and module/optimizer state, returns one tensor.
            It must not synchronise with the host, and it zeroes gradients itself (``set_to_none=True``).
        state: the tensors the step reads or updates in place (parameters, buffers, optimizer state); their
            addresses are checked on every call and a change triggers a recapture.
        prepare: called before warm-up and before capture, e.g. ``make_capturable`` on the optimizer.
        strict: raise :class:`GraphCaptureError` when capture fails instead of falling back to eager steps.
        warmup: eager steps, on the capture stream, before each capture.
        name: what the one-line fallback notice calls the step.
    """

    def __init__(
        self,
        step: Callable[..., Tensor],
        state: Callable[[], Iterable[Tensor]],
        prepare: Callable[[], None],
        strict: bool = False,
        warmup: int = WARMUP_STEPS,
        name: str = "training step",
    ) -> None:
        self.step, self.state, self.prepare = step, state, prepare
        self.strict, self.warmup, self.name = strict, warmup, name
        self.disabled = False
        self.reset()

    def reset(self) -> None:
        """Forget the graph (it is recaptured after ``warmup`` eager steps)."""
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: Hashable = None
        self.static_inputs: list[Tensor] = []
        self.static_output: Tensor | None = None
        self.fingerprint: tuple[int, ...] = ()
        self.warm, self.stream = 0, None

    @property
    def captured(self) -> bool:
        """Whether a graph is ready to replay."""
        return self.graph is not None

    def __call__(self, inputs: Sequence[Tensor], key: Hashable) -> Tensor:
        """One step on ``inputs``; ``key`` names everything besides the state that the graph depends on.

        Returns:
            The step's output, a fresh tensor (never the graph's static output, which the next replay overwrites).
        """
        if self.disabled:
            return self.step(*inputs)
        if self.graph is not None:
            if key != self.key:
                return self.step(*inputs)  # another signature: eager, the graph stays for its own
            if _fingerprint(self.state()) == self.fingerprint:
                for static, new in zip(self.static_inputs, inputs, strict=True):
                    static.copy_(new, non_blocking=True)
                self.graph.replay()
                return self.static_output.clone()
            self.reset()  # parameters or optimizer state were replaced: warm up again, then recapture
        if self.key != key:
            self.key, self.warm = key, 0
        if self.warm < self.warmup:
            self.warm += 1
            return self._warm_up(inputs)  # the step's own errors (bad input, say) propagate unchanged
        try:
            self._capture(inputs)
        except Exception as err:  # nothing ran during the failed capture: the eager step does this one
            return self._fall_back(err, inputs)
        self.graph.replay()
        return self.static_output.clone()

    def _side_stream(self) -> torch.cuda.Stream:
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        return self.stream

    def _warm_up(self, inputs: Sequence[Tensor]) -> Tensor:
        """One eager step on the capture stream, ordered after and before the current stream's work."""
        self.prepare()
        stream, current = self._side_stream(), torch.cuda.current_stream()
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            output = self.step(*inputs)
        current.wait_stream(stream)
        return output

    def _capture(self, inputs: Sequence[Tensor]) -> None:
        """Record the step on static copies of ``inputs``; recording runs nothing, the first replay does."""
        self.prepare()
        stream = self._side_stream()
        static_inputs = [x.clone() for x in inputs]
        graph = torch.cuda.CUDAGraph()
        stream.wait_stream(torch.cuda.current_stream())
        # thread_local: a notebook's background threads (progress bars, NVML) cannot invalidate the capture.
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            static_output = self.step(*static_inputs)
        self.graph, self.static_inputs, self.static_output = graph, static_inputs, static_output
        self.fingerprint = _fingerprint(self.state())

    def _fall_back(self, err: Exception, inputs: Sequence[Tensor]) -> Tensor:
        """Eager steps from now on, with a one-line notice (``"auto"``), or an error (``True``)."""
        self.reset()
        if self.strict:
            raise GraphCaptureError(f"CUDA-graph capture of the {self.name} failed: {err}") from err
        self.disabled = True
        first_line = (str(err).strip().splitlines() or [""])[0][:160]
        print(f"NOTICE: CUDA-graph capture of the {self.name} failed ({type(err).__name__}: {first_line}); "
              "running it eagerly.")
        return self.step(*inputs)
