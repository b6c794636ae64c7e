"""Presets and the resolved configuration of the tutorial (ANIL, Raghu et al., ICLR 2020, arXiv:1909.09157).

One frozen :class:`Config` holds every hyperparameter; its defaults are the base configuration, the seed's protocol.
Each preset names only the fields it changes, each with its reason (as nanoGPT's config files do), so that what sets
a preset apart is all there is to read. The notebook's ``parameters`` cell names a preset and may override single
fields; :func:`resolve_config` validates the result once, and nothing reassigns it afterwards.

Presets (outer iterations per scenario S1 / S2 / S3-S4 / MAML in brackets):

* ``"seed"``: the seed notebook's training protocol (125 / 125 / 125 / 125): 105x105, 5-way 1-shot, 5 query,
  2,000 training tasks seen once each in meta-batches of 16 (the seed's table gives training time x it/s = 125
  for every scenario), inner_lr 0.01, outer_lr 0.001, 5 inner steps, constant outer rate. Evaluated on the seed's
  100 test tasks *and* on 600 for a confidence interval. What differs from the seed, by necessity: the S3/S4 body
  is pre-trained on Omniglot when ImageNet weights are unreachable (the seed used ImageNet), and validation tasks
  from held-out background characters are scored every 25 iterations (read-only: training is unchanged).
* ``"gpu"``: the seed's hyperparameters with 8x its training (1,000 / 1,000 / 1,000 / 400) at 105x105, for the
  best accuracy in about 12 minutes on one modern GPU; the task order is a fresh permutation every 2,000 tasks.
* ``"quick"``: tuned for a laptop or a 2-core CPU (100 / 1,400 / 10 / 10, meta-batches of 8): 28x28 images,
  inner rate, outer rate and meta-batch chosen on validation tasks (``benchmarks/tune_quick.py``), a cosine outer
  schedule; the analyses (ablations, ANIL vs MAML, freezing, CKA) on the seed's 100 test tasks; the whole notebook
  in 550 s, cold, on a 2-core AVX2-only CPU (S2 alone about 280 s of it).
* ``"full"``: ``quick`` trained to convergence on a CPU (1,000 / 2,000 / 600 / 1,000): S1 and MAML at equal
  iterations, analyses on the 600 test tasks; its run is the converged reference that every other preset's run
  shows beside its own numbers (:mod:`report.reference`). Its budgets come from validation curves
  (``benchmarks/full_budget.py``): each run's last 20% of iterations gains under 0.5 point.
* ``"paper"``: the MAML/ANIL paper protocol for a GPU: 28x28, rotation augmentation, 20-way 1-shot.
* ``"smoke"``: tiny counts, for CI: every cell runs, nothing is meaningful.
* ``"auto"``: ``"seed"`` on CUDA, so a GPU user first sees the seed's experiment reproduced; ``"quick"`` elsewhere.

Pre-training (``pretrain_*`` fields) only matters when S3/S4 fall back to a body pre-trained on the Omniglot
background characters (:mod:`experiments.pretrain`); it never touches the evaluation alphabets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

LR_SCHEDULES = ("constant", "cosine")  # outer learning-rate schedules (experiments.training)
ANALYSIS_POOLS = ("test", "test_seed")  # task pools (experiments.scenarios.TaskPools) the analyses may use


@dataclass(frozen=True)
class Config:
    """Every hyperparameter of a run. The defaults are the base configuration, the seed notebook's protocol (preset
    ``"seed"``); every other preset names only the fields it changes (:data:`PRESETS`). Field comments give the
    reason for each default."""

    preset: str = "seed"
    image_size: int = 105  # Omniglot's native size (the seed); 28 is the MAML/ANIL standard and 14x cheaper.
    n_way: int = 5  # classes per task.
    k_shot: int = 1  # labelled support images per class.
    k_query: int = 5  # query images per class, on which the outer loss is measured.
    train_tasks: int = 2000  # size of the fixed training pool shared by every scenario (the seed's 2,000).
    meta_batch_size: int = 16  # tasks per outer step (the seed's 16).
    s1_iterations: int = 125  # outer steps of S1; second order costs more per step than first order. The seed's
    # table gives training time x it/s = 125 for every scenario: each of its 2,000 tasks seen once.
    s2_iterations: int = 125  # outer steps of S2.
    resnet_iterations: int = 125  # outer steps for S3/S4; a ResNet18 step costs ~10x a conv4 step on a CPU.
    inner_lr: float = 0.01  # inner SGD step on the head (the seed's).
    outer_lr: float = 0.001  # Adam step on body and head initialisation (the seed's).
    outer_lr_schedule: str = "constant"  # or "cosine" annealing to 0, which settles short runs in a better minimum.
    inner_steps: int = 5  # inner SGD steps in training.
    test_inner_steps: int = 5  # inner SGD steps at test time; MAML's protocol adapts longer at test than in training.
    bf16_body: bool = False  # bfloat16 autocast of the body where bfloat16 is native (GPU, CPU with AMX: ~1.5x
    # there); ignored on AVX2-only CPUs, where it is emulated and ~9x slower. The head stays float32.
    test_tasks: int = 600  # evaluation tasks for the 95% confidence interval (the field's standard is >= 600).
    seed_test_tasks: int = 100  # the seed's 100 test tasks, to compare with its table.
    val_tasks: int = 200  # validation tasks from held-out background characters (model selection only).
    val_fraction: float = 0.1  # share of background characters held out for validation.
    val_every: int = 25  # outer steps between validation evaluations (0: never); read-only, training is unchanged.
    rotations: bool = False  # rotation augmentation (x4 classes), as in the MAML protocol.
    pretrain_epochs: int = 20  # supervised pre-training epochs of the ResNet body without ImageNet weights.
    pretrain_characters: int = 0  # background characters used for that pre-training (0: all training
    # characters); fewer characters make each epoch cheaper, taken evenly across the alphabets.
    pretrain_lr: float = 0.004  # peak Adam rate of the one-cycle schedule of that pre-training.
    pretrain_batch_size: int = 256  # images per pre-training step.
    maml_iterations: int = 125  # outer steps of the MAML baseline (0: skip MAML); the seed's budget.
    maml_test_inner_steps: int = 5  # test-time inner steps of both sides of the ANIL-vs-MAML comparison; MAML
    # re-runs the whole body at every step, so its evaluation cost grows with this (ANIL's barely does).
    curve_steps: int = 10  # largest inner-step count of the adaptation curve.
    seed: int = 0  # seeds every torch/numpy Generator; same seed, same history on CPU.
    analysis_pool: str = "test"  # tasks of the analyses (ablations, ANIL vs MAML, MAML's freezing and CKA): "test"
    # (the test_tasks) or "test_seed" (the seed's 100: cheaper).
    split: str = "official"  # "official": background alphabets train (minus val_fraction), evaluation tests;
    # "vinyals": the MAML/ANIL papers' 1,028/172/423 characters of both folders, each x4 rotations (utils.splits).

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied and validated."""
        return validate_config(dataclasses.replace(self, **changes))


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def validate_config(config: Config) -> Config:
    """Check every field; raise ``ValueError`` naming the field and the expected range."""
    for name in (
        "image_size",
        "n_way",
        "k_shot",
        "k_query",
        "train_tasks",
        "meta_batch_size",
        "s1_iterations",
        "s2_iterations",
        "test_tasks",
        "seed_test_tasks",
        "val_tasks",
        "curve_steps",
        "pretrain_batch_size",
    ):
        _positive(name, getattr(config, name))
    non_negative = ("resnet_iterations", "inner_steps", "test_inner_steps", "val_every", "pretrain_epochs",
                    "pretrain_characters", "maml_iterations", "maml_test_inner_steps")
    for name in non_negative:
        if not isinstance(getattr(config, name), int) or getattr(config, name) < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {getattr(config, name)!r}.")
    for name in ("inner_lr", "outer_lr", "pretrain_lr"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    if config.k_shot + config.k_query > 20:
        raise ValueError(
            f"k_shot + k_query = {config.k_shot} + {config.k_query} = {config.k_shot + config.k_query} exceeds "
            "the 20 drawings per Omniglot character."
        )
    if config.outer_lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"outer_lr_schedule must be one of {LR_SCHEDULES}, got {config.outer_lr_schedule!r}.")
    if config.analysis_pool not in ANALYSIS_POOLS:
        raise ValueError(f"analysis_pool must be one of {ANALYSIS_POOLS}, got {config.analysis_pool!r}.")
    if not 0 < config.val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {config.val_fraction!r}.")
    return config


def _preset(name: str, **changes: Any) -> Config:
    """The base configuration (:class:`Config`'s defaults) with a preset's changes, validated."""
    return Config(preset=name).replace(**changes)


PRESETS: dict[str, Config] = {
    "seed": _preset("seed"),  # the base configuration itself: the seed notebook's protocol
    "gpu": _preset(
        "gpu",
        # 8x the seed's training for the best accuracy in about 12 minutes on one modern GPU; the pool stays the
        # seed's 2,000 tasks, so the task order is a fresh permutation every 2,000 tasks.
        s1_iterations=1000,
        s2_iterations=1000,
        resnet_iterations=1000,
        maml_iterations=400,  # batched MAML costs ~8x ANIL per step on a GPU (benchmarks/README.md): 400 fits
        val_every=250,  # four validations per scenario; every 25 iterations would cost 40
    ),
    "quick": _preset(
        "quick",
        # A laptop or a 2-core CPU: the whole notebook in 550 s, cold, on a 2-core AVX2-only CPU (S2 about 280 s).
        image_size=28,  # 14x cheaper than 105 on a CPU, and the MAML/ANIL standard
        train_tasks=24000,  # more than S2's 1,400 x 8 = 11,200 tasks: no task is seen twice
        meta_batch_size=8,  # best on validation tasks at this budget (benchmarks/tune_quick.py)
        s1_iterations=100,  # a budget: S1 and S2 meet at 100 iterations for the equal-budget comparison
        s2_iterations=1400,  # the most that fits the 10-minute notebook beside everything else
        resnet_iterations=10,  # a ResNet18 step costs ~10x a conv4 step on a CPU
        maml_iterations=10,  # MAML's body re-runs at every inner step: a trend, not a converged run
        inner_lr=0.1,  # chosen on validation tasks among 0.05-0.4 (benchmarks/tune_quick.py)
        outer_lr=0.006,  # validated best at 7,200-8,000 tasks (98.10% against 97.84% at 0.003)
        outer_lr_schedule="cosine",  # settles a short run in a better minimum
        test_inner_steps=50,  # the head keeps improving up to about 40 steps on validation tasks (tune_quick)
        bf16_body=True,  # ~1.5x on a CPU with AMX; ignored where bfloat16 is emulated
        val_tasks=100,  # half the seed's: validation is read-only, and its cost counts in the CPU budget
        val_every=100,  # S1 (100 it.) and S2 meet at 100 iterations: the equal-budget comparison
        pretrain_epochs=6,  # 80 characters x 6 epochs: 78.1% held-out in 43 s (benchmarks/README.md)
        pretrain_characters=80,
        pretrain_batch_size=128,
        curve_steps=50,  # up to the test-time steps
        analysis_pool="test_seed",  # the seed's 100 test tasks keep the analyses within the CPU budget
    ),
    "paper": _preset(
        "paper",
        # The MAML/ANIL paper protocol for a GPU: 20-way 1-shot at 28x28 on the Vinyals split with rotations.
        image_size=28,
        n_way=20,
        k_query=15,
        split="vinyals",
        rotations=True,
        train_tasks=960000,  # 60,000 iterations x 16 tasks: every task fresh
        s1_iterations=60000,
        s2_iterations=60000,
        resnet_iterations=5000,  # a ResNet18 step costs ~10x a conv4 step
        maml_iterations=5000,
        inner_lr=0.1,  # the MAML paper's step size for 20-way Omniglot
        outer_lr_schedule="cosine",
        test_inner_steps=10,  # the papers adapt twice as long at test time
        maml_test_inner_steps=10,
        val_every=2000,
    ),
    "smoke": _preset(
        "smoke",
        # Tiny counts for CI: every cell runs, nothing is meaningful.
        image_size=28,
        train_tasks=64,
        meta_batch_size=4,
        s1_iterations=4,
        s2_iterations=4,
        resnet_iterations=2,
        maml_iterations=2,
        inner_lr=0.4,  # large steps: two inner steps still adapt the head
        outer_lr=0.003,
        inner_steps=2,
        test_inner_steps=2,
        maml_test_inner_steps=2,
        test_tasks=20,
        seed_test_tasks=10,
        val_tasks=8,
        val_every=2,
        pretrain_epochs=1,
        pretrain_characters=40,
        pretrain_batch_size=64,
        curve_steps=3,
        analysis_pool="test_seed",
    ),
}


# The paper's question on converged models, for a CPU: quick's validated settings, trained until the validation
# curves level off (the last 20% of the iterations gain under 0.5 point), analyses on all 600 test tasks. It names
# only what it changes in "quick". The notebook applies the rule to every curve (evaluation.curves).
PRESETS["full"] = PRESETS["quick"].replace(
    preset="full",
    s1_iterations=1000,  # ANIL (S1) and MAML at the same iterations and meta-batch: the paper's comparison
    maml_iterations=1000,  # MAML second order, per task on a CPU: about 24 min of a 2-core AVX2 EPYC
    s2_iterations=2000,  # quick's 1,400 still gained on validation; first order is cheap
    # S3 at 200 was still rising (+1.7 points over its last 20% on validation); at 600 it levelled off (+0.2)
    resnet_iterations=600,
    val_every=50,  # the levelling-off rule needs validations inside the last 20% of every run
    analysis_pool="test",  # freezing, CKA and ANIL vs MAML on all 600 test tasks
)

def resolve_config(preset: str, device: torch.device, **overrides: Any) -> Config:
    """The preset's configuration with ``overrides`` (fields left ``None`` keep the preset's value).

    Args:
        preset: ``"auto"``, or one of :data:`PRESETS`.
        device: the compute device; ``"auto"`` picks ``"seed"`` on CUDA and ``"quick"`` elsewhere.
        **overrides: field values, e.g. ``inner_lr=0.2``.

    Raises:
        ValueError: for an unknown preset (listing the valid ones) or field, or an invalid value.
    """
    if preset == "auto":
        preset = "seed" if device.type == "cuda" else "quick"
    if preset not in PRESETS:
        raise ValueError(
            f"Unknown preset {preset!r}. Valid presets: 'auto', {', '.join(map(repr, PRESETS))}."
        )
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown configuration field(s) {unknown}. Valid fields: {sorted(fields)}.")
    return PRESETS[preset].replace(**{k: v for k, v in overrides.items() if v is not None})


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA if available, else Apple MPS, else CPU (or the ``requested`` one), and print the choice."""
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif torch.backends.mps.is_available():
            requested = "mps"
        else:
            requested = "cpu"
    device = torch.device(requested)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
    print(f"Device: {device} ({name}); torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    return device
