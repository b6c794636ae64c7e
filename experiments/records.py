"""What a scenario run leaves behind: its training history (:class:`TrainResult`) and its :class:`ScenarioRecord`.

ANIL (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the Effectiveness of
MAML", ICLR 2020, arXiv:1909.09157) and MAML are trained by :mod:`experiments.training` and evaluated by
:mod:`evaluation.evaluate`; :mod:`experiments.scenarios` gathers both into a :class:`ScenarioRecord`, which
:mod:`experiments.results` caches as JSON and :mod:`report` turns into tables, plots and prose. Both records are
plain dataclasses with a JSON round trip, so that a cached run reads back exactly as it was written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from evaluation.evaluate import EvalResult
from evaluation.serialise import dataclass_kwargs


@dataclass
class TrainResult:
    """History and cost of one training run; JSON-serialisable through :meth:`to_dict`.

    Attributes:
        scenario: scenario name, e.g. ``"S1"``.
        losses: meta-training loss of every iteration (query loss after adaptation).
        accs: meta-training query accuracy of every iteration.
        val_history: ``{"iteration", "acc", "ci", "wall_time_s", "per_task"}`` per validation (accuracy after
            adaptation on the validation pool, training seconds so far as in ``wall_time_s``, per-task
            accuracies); results saved before these last two keys existed lack them.
        wall_time_s: seconds spent in training steps (validation and checkpoint writes excluded).
        iterations_per_s: ``iterations_done / wall_time_s``.
        peak_memory_mb: peak memory in MiB, see ``memory_kind``.
        memory_kind: ``"cuda_max_allocated"`` or ``"cpu_peak_rss"`` (whole-process resident set).
        gpu_utilisation: mean NVML GPU utilisation in percent, ``None`` when not measured.
        device: device description.
        interrupted: training was stopped by ``KeyboardInterrupt``.
        iterations_done: completed iterations, ``len(losses)``.
        iterations_planned: the ``iterations`` argument.
    """

    scenario: str
    losses: list[float]
    accs: list[float]
    val_history: list[dict[str, Any]]
    wall_time_s: float
    iterations_per_s: float
    peak_memory_mb: float
    memory_kind: str
    gpu_utilisation: float | None
    device: str
    interrupted: bool
    iterations_done: int
    iterations_planned: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        """Inverse of :meth:`to_dict`; ``ValueError`` naming missing fields."""
        return cls(**dataclass_kwargs(cls, data))


@dataclass
class ScenarioRecord:
    """Everything the comparison needs about one scenario; JSON round trip via :meth:`to_dict`.

    Attributes:
        name: column name, e.g. ``"S1"``.
        description: one line, e.g. ``"conv4, full ANIL"``.
        architecture: ``"conv4"``, ``"resnet18"``, ...
        pretrained_source: ``"ImageNet (torchvision)"``, ``"Omniglot background, supervised"`` or
            ``"random"``.
        params: :func:`utils.networks.parameter_table` of the scenario's network.
        train: the training history and cost.
        test: evaluation on the standard pool (>= 600 tasks).
        train_tasks: size of the training task pool.
        test_seed: evaluation on the seed's 100 tasks, if measured.
        adaptation_curve: test accuracy after 0, 1, ... inner steps, if measured.
        meta_batch_size: tasks per outer step, ``None`` when unknown (results saved before it was recorded).
    """

    name: str
    description: str
    architecture: str
    pretrained_source: str
    params: dict[str, int]
    train: TrainResult
    test: EvalResult
    train_tasks: int
    test_seed: EvalResult | None = None
    adaptation_curve: list[float] | None = None
    meta_batch_size: int | None = None

    @property
    def label(self) -> str:
        """Legend label naming the architecture and the pretraining source."""
        return f"{self.name}: {self.architecture} ({self.pretrained_source})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScenarioRecord:
        """Inverse of :meth:`to_dict`; ``ValueError`` naming missing fields."""
        kwargs = dataclass_kwargs(cls, data)
        kwargs["train"] = TrainResult.from_dict(kwargs["train"])
        kwargs["test"] = EvalResult.from_dict(kwargs["test"])
        if kwargs.get("test_seed") is not None:
            kwargs["test_seed"] = EvalResult.from_dict(kwargs["test_seed"])
        return cls(**kwargs)
