"""Resumable meta-training checkpoints for ANIL and MAML learners.

Meta-training ANIL (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding
the Effectiveness of MAML", ICLR 2020, arXiv:1909.09157) on a CPU takes minutes to hours, so a run must
survive the notebook's stop button and a kernel restart. A checkpoint holds everything that determines the
rest of the run: body and head state dicts (BatchNorm running statistics included), the Adam state, the task
order (generator state, the current epoch's permutation and the position in it), the iteration index and the
history. Resuming from it on a CPU therefore ends with parameters bit-identical to an uninterrupted run.

Checkpoints are written atomically (:func:`utils.io.atomic_torch_save`) and read with ``weights_only=True``. A
checkpoint whose metadata (scenario, learner, ``n_way``, hyperparameters, parameter names and shapes, task
pool size, meta-batch size) differs from the run that loads it is rejected with a ``ValueError`` that names
the file and every mismatch; the file itself is never modified by a failed load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from algorithms.learner import TrainableLearner
from utils.io import atomic_torch_save

CHECKPOINT_FORMAT = 1
HYPERPARAMETERS = ("inner_lr", "outer_lr", "inner_steps", "first_order", "freeze_body")
_PAYLOAD_KEYS = ("metadata", "body", "head", "optimizer", "order", "progress")


def checkpoint_metadata(learner: TrainableLearner, scenario: str, num_tasks: int,
                        meta_batch_size: int) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that resumes from it.

    Args:
        learner: an ANIL or MAML learner (``.body``, ``.head``, hyperparameter attributes).
        scenario: scenario name, e.g. ``"S1"``.
        num_tasks: size of the training task pool.
        meta_batch_size: tasks per outer step.
    """
    modules = {"body": learner.body, "head": learner.head}
    return {
        "format": CHECKPOINT_FORMAT,
        "scenario": scenario,
        "learner": type(learner).__name__,
        "n_way": learner.head.out_features,
        "hyperparameters": {name: getattr(learner, name, None) for name in HYPERPARAMETERS},
        "num_tasks": num_tasks,
        "meta_batch_size": meta_batch_size,
        "parameters": {
            f"{prefix}.{name}": list(tensor.shape)
            for prefix, module in modules.items()
            for name, tensor in module.state_dict().items()
        },
        "trainable": [
            f"{prefix}.{name}"
            for prefix, module in modules.items()
            for name, p in module.named_parameters()
            if p.requires_grad
        ],
    }


def save_checkpoint(
    path: str | os.PathLike, learner: TrainableLearner, metadata: dict[str, Any], order: dict, progress: dict
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: destination file.
        learner: the learner whose body, head and optimizer are saved.
        metadata: :func:`checkpoint_metadata` of the run.
        order: the task order's state (see ``experiments.training.TaskOrder.state_dict``).
        progress: iteration index, history and resource statistics.
    """
    payload = {
        "metadata": metadata,
        "body": learner.body.state_dict(),
        "head": learner.head.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "order": order,
        "progress": progress,
    }
    return atomic_torch_save(payload, path)


def _describe(key: str, saved: Any, expected: Any) -> str:
    """One line saying how ``saved`` differs from ``expected`` for metadata entry ``key``."""
    if key == "parameters" and isinstance(saved, dict):
        names = sorted(set(saved) ^ set(expected))
        names += sorted(n for n in set(saved) & set(expected) if saved[n] != expected[n])
        shown = ", ".join(f"{n} {saved.get(n)} vs {expected.get(n)}" for n in names[:4])
        return f"parameters: {len(names)} names or shapes differ (checkpoint vs this run: {shown}, ...)"
    return f"{key}: checkpoint has {saved!r}, this run has {expected!r}"


def _read_payload(path: Path) -> dict[str, Any]:
    """Load a checkpoint file; ``ValueError`` naming the file when it is unreadable or incomplete."""
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; pass resume_from=None to start afresh.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated files raise EOFError, RuntimeError or UnpicklingError alike
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"Checkpoint {path} cannot be read ({type(err).__name__}: {first_line}); it is corrupt or not a "
            "checkpoint written by experiments.training.train. Delete it, or pass resume_from=None."
        ) from err
    missing = [key for key in _PAYLOAD_KEYS if not isinstance(payload, dict) or key not in payload]
    if not missing and not isinstance(payload["metadata"], dict):
        missing = ["metadata (a dict)"]
    if missing:
        raise ValueError(f"Checkpoint {path} is not a training checkpoint: it lacks {missing}.")
    return payload


def read_checkpoint(path: str | os.PathLike, metadata: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint and check that it was written by a run matching ``metadata``; changes nothing.

    Args:
        path: checkpoint file written by :func:`save_checkpoint`.
        metadata: :func:`checkpoint_metadata` of the run that resumes.

    Returns:
        The payload: ``metadata``, ``body``, ``head``, ``optimizer``, ``order`` and ``progress``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is corrupt, or was written by a different scenario, learner or architecture.
    """
    path = Path(path)
    payload = _read_payload(path)
    saved = payload["metadata"]
    mismatches = [_describe(k, saved.get(k), v) for k, v in metadata.items() if saved.get(k) != v]
    if mismatches:
        raise ValueError(
            f"Checkpoint {path} does not match this run: " + "; ".join(mismatches) + ". Resume with the "
            "same scenario, network and settings, or use another checkpoint path to start afresh."
        )
    return payload


def restore_learner(learner: TrainableLearner, payload: dict[str, Any]) -> None:
    """Load body, head and optimizer state of a payload returned by :func:`read_checkpoint`."""
    learner.body.load_state_dict(payload["body"])
    learner.head.load_state_dict(payload["head"])
    learner.optimizer.load_state_dict(payload["optimizer"])
