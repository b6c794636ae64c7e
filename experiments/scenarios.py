"""The four training scenarios of the tutorial, and MAML beside them, run by one function.

ANIL (Raghu et al., "Rapid Learning or Feature Reuse?", ICLR 2020, arXiv:1909.09157) is compared here in four
settings: a conv4 body trained from scratch in second order (S1) and first order (S2), and a pretrained
ResNet18 body either fine-tuned (S3) or frozen except for its BatchNorm layers (S4). :func:`run_scenario`
builds the network, meta-trains it on the shared task pool, evaluates it on the shared evaluation tasks and
caches the result under a key of the whole configuration, so one function serves every scenario.

Ablations (:data:`ABLATIONS`, :func:`evaluate_untrained_head`) isolate what each ingredient buys: S4 with its
BatchNorm frozen too (only the head's initialisation is learnt), S2 trained for S1's number of iterations (an
equal-budget S1/S2 comparison on the test tasks), and the pretrained body with no meta-training at all, its head
adapted from zero or replaced by NIL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from algorithms.anil import ANIL
from algorithms.maml import MAML, MAMLLayout
from evaluation.evaluate import EvalResult, evaluate, evaluate_with_curve
from experiments.pretrain import pretrain_body, spread_characters
from experiments.records import ScenarioRecord
from experiments.results import changed_fields, load_cached, result_key, result_path, save_result
from experiments.training import train
from utils.config import Config
from utils.data import OmniglotSplit, split_characters
from utils.io import atomic_torch_save, display_path, error_path
from utils.networks import (
    WeightsUnavailableError,
    create_anil_network,
    create_pretrained_resnet_body,
    parameter_table,
)
from utils.splits import vinyals_split
from utils.tasks import TaskPool, make_task_pool


@dataclass(frozen=True)
class ScenarioSpec:
    """What distinguishes one scenario from another."""

    name: str
    description: str
    architecture: Literal["conv4", "resnet18"]
    first_order: bool
    freeze_body: bool
    iterations_field: str = "s2_iterations"  # the Config field with this scenario's outer steps
    test_steps_field: str = "test_inner_steps"  # the Config field with its test-time inner steps
    algorithm: Literal["anil", "maml"] = "anil"
    allow_bf16: bool = True  # False where a float32 timing comparison must stay fair (against MAML)
    freeze_batchnorm: bool = False  # with freeze_body: freeze BatchNorm's affine parameters too (an ablation)
    analysis: bool = False  # an ablation or comparison, evaluated on the tasks of Config.analysis_pool


SCENARIOS: dict[str, ScenarioSpec] = {
    "S1": ScenarioSpec("S1", "conv4, second order", "conv4", first_order=False, freeze_body=False,
                       iterations_field="s1_iterations"),
    "S2": ScenarioSpec("S2", "conv4, first order", "conv4", first_order=True, freeze_body=False),
    "S3": ScenarioSpec("S3", "ResNet18, trainable body", "resnet18", first_order=True, freeze_body=False,
                       iterations_field="resnet_iterations"),
    "S4": ScenarioSpec("S4", "ResNet18, frozen body + BatchNorm", "resnet18", first_order=True, freeze_body=True,
                       iterations_field="resnet_iterations"),
}
MAML_SPEC = ScenarioSpec("MAML", "conv4 MAML, second order", "conv4", first_order=False, freeze_body=False,
                         iterations_field="maml_iterations", test_steps_field="maml_test_inner_steps",
                         algorithm="maml", analysis=True)
ABLATIONS: dict[str, ScenarioSpec] = {
    "S4 (BatchNorm frozen)": ScenarioSpec("S4 (BatchNorm frozen)", "ResNet18, whole body frozen", "resnet18",
                                         first_order=True, freeze_body=True, freeze_batchnorm=True,
                                         iterations_field="resnet_iterations", analysis=True),
    # S1 against S2 at an equal number of iterations, on the test tasks (S2's own run usually trains longer).
    "S2 (S1's iterations)": ScenarioSpec("S2 (S1's iterations)", "conv4, first order, S1's budget", "conv4",
                                        first_order=True, freeze_body=False, iterations_field="s1_iterations",
                                        analysis=True),
}
ANIL_AT_MAML_BUDGET = ScenarioSpec("ANIL (MAML budget)", "conv4 ANIL, second order", "conv4",
                                   first_order=False, freeze_body=False, iterations_field="maml_iterations",
                                   test_steps_field="maml_test_inner_steps", allow_bf16=False, analysis=True)


@dataclass(frozen=True)
class TaskPools:
    """The fixed task pools every scenario shares."""

    train: TaskPool  # official: background characters minus the validation ones; vinyals: its 1,028 x 4
    val: TaskPool  # held-out characters: model selection only
    test: TaskPool  # official: images_evaluation; vinyals: its 423 x 4 characters; >= 600 tasks
    test_seed: TaskPool  # the same characters as test, 100 tasks: the seed's count, drawn here
    train_images: torch.Tensor  # uint8 (characters, 20, H, W) of the training characters


def make_pools(background: OmniglotSplit, evaluation: OmniglotSplit, config: Config) -> TaskPools:
    """Seeded training, validation and test pools over the characters of ``config.split``.

    ``"official"``: training and validation characters from ``images_background`` (``val_fraction`` held out),
    test tasks from ``images_evaluation`` only. ``"vinyals"``: the characters listed by :func:`vinyals_split`,
    from both folders, every pool with rotations (each rotation of a character is a class, as in the lists).
    """
    train_images, val_images, test_images, rotations = _split_images(background, evaluation, config)
    shape = (config.n_way, config.k_shot, config.k_query)

    def pool(images: torch.Tensor, tasks: int, offset: int, rotated: bool) -> TaskPool:
        generator = torch.Generator().manual_seed(config.seed * 1000 + offset)
        return make_task_pool(images, tasks, *shape, generator, rotations=rotated)

    return TaskPools(
        train=pool(train_images, config.train_tasks, 1, config.rotations or rotations),
        val=pool(val_images, config.val_tasks, 2, rotations),
        test=pool(test_images, config.test_tasks, 3, rotations),
        test_seed=pool(test_images, config.seed_test_tasks, 4, rotations),
        train_images=train_images,
    )


def _split_images(background: OmniglotSplit, evaluation: OmniglotSplit, config: Config
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Train, validation and test images ``(characters, 20, H, W)`` of ``config.split``, and whether every pool
    rotates (the Vinyals lists name rotated classes)."""
    if config.split == "vinyals":
        split = vinyals_split(background, evaluation)
        return split.train, split.val, split.test, True
    if config.split != "official":
        raise ValueError(f"split must be 'official' or 'vinyals', got {config.split!r}.")
    train_idx, val_idx = split_characters(background, config.val_fraction, np.random.default_rng(config.seed))
    return background.images[train_idx], background.images[val_idx], evaluation.images, False


def build_network(arch: str, config: Config, body_state: Mapping[str, torch.Tensor] | None = None,
                  source: str = "random") -> tuple[nn.Module, nn.Linear]:
    """A fresh ``(body, head)``, initialised from ``config.seed`` (optionally loading ``body_state``).

    Module initialisers read PyTorch's global generator, so it is forked and seeded here and left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if arch == "conv4":
            body, head = create_anil_network(config.n_way, image_size=config.image_size)
        else:
            body, head = create_pretrained_resnet_body(config.n_way, pretrained=None)
    if body_state is not None:
        body.load_state_dict(body_state)
    body.pretrained_source = source
    return body, head


@dataclass(frozen=True)
class PretrainedBody:
    """The S3/S4 body weights, where they come from and, when pre-trained here, how well."""

    state_dict: dict[str, torch.Tensor]  # ResNet18 body weights, on the CPU
    source: str  # labels every table and plot, e.g. "Omniglot background, supervised (held-out drawings 87.3%)"
    stats: dict | None = None  # experiments.pretrain's pretrain_stats; None for ImageNet or random weights


def bf16_is_native(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run on native units: a GPU's tensor cores, or a CPU with AMX.

    On AVX2-only CPUs bfloat16 is emulated: measured on a 2-core AMD EPYC, an S2 step took 3.9 s under bfloat16
    autocast against 0.44 s in float32, so autocast is only worth it where this returns True.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # torch.cpu._is_amx_tile_supported is private but is the only way to ask whether bfloat16 matmuls are native.
    return device.type == "cpu" and getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


def pretrain_amp_dtype(config: Config, device: torch.device) -> str | None:
    """Autocast dtype of the supervised pre-training: bfloat16 where it is native (:func:`bf16_is_native`).

    On a GPU always; on a CPU with AMX when ``config.bf16_body`` asks for it; elsewhere float32. The
    pre-training's precision is not part of any seed protocol.
    """
    native = bf16_is_native(device)
    return "bfloat16" if native and (device.type == "cuda" or config.bf16_body) else None


def load_pretrained_body(pretrained: str, config: Config, train_images: torch.Tensor, device: torch.device,
                         cache_dir: str | Path, progress: bool = True) -> PretrainedBody:
    """The ResNet18 body weights for S3/S4, their source and (when pre-trained on Omniglot) ``pretrain_stats``.

    Args:
        pretrained: ``"imagenet"``, a path to torchvision's ``resnet18-f37072fd.pth``, ``"omniglot"`` (supervised
            pre-training on the background characters, see :mod:`experiments.pretrain`) or ``"none"``.
        config: run configuration (seed, image size, ``pretrain_*`` fields).
        train_images: uint8 background training characters ``(characters, 20, H, W)`` (validation ones excluded).
        device: where pre-training runs.
        cache_dir: folder for the cached pre-trained body.
        progress: show progress bars.
    """
    if pretrained not in ("omniglot", "none"):
        try:
            body, _ = create_pretrained_resnet_body(config.n_way, pretrained=pretrained)
            return PretrainedBody(body.state_dict(), body.pretrained_source)
        except WeightsUnavailableError as err:
            cause = type(err.__cause__ or err).__name__
            print(f"S3/S4 body: pre-trained on the Omniglot background characters, because torchvision's ImageNet "
                  f"weights could not be obtained ({cause}; README, 'Pretrained weights offline', says how).")
    body, _ = build_network("resnet18", config)
    if pretrained == "none":
        return PretrainedBody(body.state_dict(), "random")
    images = train_images[spread_characters(len(train_images), config.pretrain_characters)]
    body = pretrain_body(body.to(device), images, config.pretrain_epochs,
                         generator=torch.Generator().manual_seed(config.seed), device=device,
                         batch_size=config.pretrain_batch_size, lr=config.pretrain_lr,
                         amp_dtype=pretrain_amp_dtype(config, device), cache_dir=cache_dir, progress=progress)
    return PretrainedBody({k: v.cpu() for k, v in body.state_dict().items()}, body.pretrained_source,
                          body.pretrain_stats)


def make_learner(spec: ScenarioSpec, body: nn.Module, head: nn.Linear, config: Config,
                 maml_layout: MAMLLayout = "auto") -> ANIL | MAML:
    """The ANIL (or MAML) learner of a scenario, with the configuration's learning rates and steps.

    ``maml_layout``: MAML's form, ``"auto"`` (the faster per device), ``"loop"`` (per task) or ``"vmap"``
    (batched over tasks); both forms give the same losses and gradients (``tests/test_maml.py``).
    """
    if spec.algorithm == "maml":
        return MAML(body, head, config.inner_lr, config.outer_lr, config.inner_steps, first_order=spec.first_order,
                    layout=maml_layout)
    bf16 = config.bf16_body and spec.allow_bf16 and bf16_is_native(head.weight.device)
    return ANIL(body, head, config.inner_lr, config.outer_lr, config.inner_steps,
                freeze_body=spec.freeze_body, first_order=spec.first_order,
                amp_dtype=torch.bfloat16 if bf16 else None, freeze_batchnorm=spec.freeze_batchnorm)


def run_scenario(spec: ScenarioSpec, config: Config, pools: TaskPools, device: torch.device, *,
                 results_dir: str | Path, body_state: Mapping | None = None,
                 source: str = "random", reuse: bool = True, progress: bool = True,
                 maml_layout: MAMLLayout = "auto") -> ScenarioRecord:
    """Meta-train, evaluate and cache one scenario; a cached result of the same configuration is reused.

    Args:
        spec: the scenario.
        config: hyperparameters (every field is part of the cache key).
        pools: shared task pools.
        device: compute device.
        results_dir: where results are cached as JSON/CSV.
        body_state: initial body weights (pretrained scenarios).
        source: pretraining source label.
        reuse: load a cached result of the identical configuration instead of training.
        progress: show progress bars.
        maml_layout: MAML's form (:func:`make_learner`); it changes the speed, not the result, so it is not part
            of the cache key.
    """
    iterations, test_steps = getattr(config, spec.iterations_field), getattr(config, spec.test_steps_field)
    weights = weights_path(spec, config, results_dir, source)
    # A result without its trained weights (written by older code) is recomputed: the playground needs them.
    cached = load_cached(results_dir, spec.name, _key(spec, config, source)) if reuse and weights.is_file() else None
    if cached is not None:
        print(f"{spec.name}: loaded the cached result of this exact configuration ({display_path(results_dir)}).")
        return cached
    if reuse:
        _say_why_it_retrains(spec.name, config, results_dir)
    body, head = build_network(spec.architecture, config, body_state, source)
    learner = make_learner(spec, body.to(device), head.to(device), config, maml_layout)
    history = train(learner, pools.train, iterations, config.meta_batch_size,
                    generator=torch.Generator().manual_seed(config.seed), device=device, scenario=spec.name,
                    val_pool=pools.val, val_every=config.val_every, progress=progress,
                    lr_schedule=config.outer_lr_schedule)
    pool = analysis_tasks(pools, config) if spec.analysis else pools.test
    if spec.algorithm == "anil":
        test, curve = evaluate_with_curve(learner, pool, config.curve_steps, device=device, steps=test_steps,
                                          nil=True, progress=progress)
    else:  # MAML's per-task inner loop makes a 0..k-step curve over every test task too slow to be worth it.
        test, curve = evaluate(learner, pool, device=device, steps=test_steps, progress=progress), None
    seed_tasks = test if pool is pools.test_seed else evaluate(learner, pools.test_seed, device=device,
                                                               steps=test_steps, progress=progress)
    record = ScenarioRecord(
        name=spec.name, description=spec.description, architecture=spec.architecture, pretrained_source=source,
        params=parameter_table(body, head), train=history, train_tasks=len(pools.train),
        meta_batch_size=config.meta_batch_size, test=test, test_seed=seed_tasks, adaptation_curve=curve,
    )
    save_result(results_dir, record, config, spec=spec.__dict__, iterations=iterations, source=source)
    atomic_torch_save({"body": body.state_dict(), "head": head.state_dict()}, weights)
    # One line that a saved notebook keeps (its progress bars are dropped: static viewers show them at 0%).
    print(f"{spec.name}: trained {history.iterations_done:,} iterations in {history.wall_time_s:.0f} s "
          f"({history.iterations_per_s:.2f} it/s); {100 * test.acc_after:.1f}% ± {100 * test.ci_after:.1f} on "
          f"{test.num_tasks} test tasks after {test_steps} inner steps (evaluated in {test.eval_time_s:.0f} s).")
    return record


def _say_why_it_retrains(name: str, config: Config, results_dir: str | Path) -> None:
    """Print the fields in which ``config`` differs from the newest cached run of ``name``, if there is one."""
    changed = changed_fields(results_dir, name, config)
    if changed:
        listed = ", ".join(f"{field} {old!r} -> {new!r}" for field, (old, new) in changed.items())
        print(f"{name}: retraining; the cached run in {display_path(results_dir)} differs in {listed}.")


def analysis_tasks(pools: TaskPools, config: Config) -> TaskPool:
    """The tasks of the analyses (ablations, ANIL vs MAML, freezing, CKA): ``pools.test``, or the 100 of the seed's
    count drawn here, ``pools.test_seed``, to fit a CPU budget (``config.analysis_pool``)."""
    return getattr(pools, config.analysis_pool)


def on_analysis_tasks(record: ScenarioRecord, config: Config) -> EvalResult:
    """``record``'s evaluation on the analyses' tasks (:func:`analysis_tasks`), to pair an analysis with it."""
    result = getattr(record, config.analysis_pool)  # ScenarioRecord names its evaluations like TaskPools' pools
    if result is None:
        raise ValueError(f"{record.name} has no evaluation on the {config.analysis_pool!r} tasks; re-run it.")
    return result


def _key(spec: ScenarioSpec, config: Config, source: str) -> str:
    """Cache key of a scenario's result and weights: the whole configuration, the scenario, its budget, source."""
    iterations = getattr(config, spec.iterations_field)
    return result_key(config, spec.name, spec=spec.__dict__, iterations=iterations, source=source)


def weights_path(spec: ScenarioSpec, config: Config, results_dir: str | Path, source: str = "random") -> Path:
    """Where :func:`run_scenario` saves the trained body and head: beside the result, ``<scenario>-<key>.pt``."""
    return result_path(results_dir, spec.name, _key(spec, config, source)).with_suffix(".pt")


def trained_learner(spec: ScenarioSpec, config: Config, device: torch.device | str, *, results_dir: str | Path,
                    source: str = "random", pools: TaskPools | None = None, body_state: Mapping | None = None,
                    progress: bool = True, maml_layout: MAMLLayout = "auto") -> ANIL | MAML:
    """The learner that :func:`run_scenario` trained with the same arguments, rebuilt from its saved weights.

    When the weights are missing (a result cached before weights were kept) and ``pools`` is given, the scenario is
    trained again with :func:`run_scenario` (``reuse=False``), which saves them. ``maml_layout`` as in
    :func:`make_learner` (it changes speed, not results).

    Raises:
        FileNotFoundError: the scenario has not been run with this configuration and no ``pools`` were given.
    """
    path = weights_path(spec, config, results_dir, source)
    if not path.is_file() and pools is not None:
        print(f"{spec.name}: no trained weights for this configuration in {display_path(results_dir)}; training it.")
        run_scenario(spec, config, pools, device, results_dir=results_dir, body_state=body_state, source=source,
                     reuse=False, progress=progress, maml_layout=maml_layout)
    if not path.is_file():
        raise FileNotFoundError(
            f"No trained weights of {spec.name} for this configuration at {error_path(path)}; "
            "run run_scenario with the same config, results_dir and source first."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    body, head = build_network(spec.architecture, config, source=source)
    body.load_state_dict(state["body"])
    head.load_state_dict(state["head"])
    return make_learner(spec, body.to(device), head.to(device), config, maml_layout)


def evaluate_untrained_head(body_state: Mapping[str, torch.Tensor] | None, source: str, config: Config,
                            pool: TaskPool, device: torch.device | str, *, architecture: str = "resnet18",
                            progress: bool = True) -> EvalResult:
    """A pretrained body with **no meta-training**: its head adapted from zero, and NIL, on ``pool``.

    Nothing is trained, so there is no :class:`TrainResult`: the result is an :class:`EvalResult` whose
    ``acc_before`` is the zero head (every logit equal, so exactly chance on balanced query sets), ``acc_after``
    the head after ``config.test_inner_steps`` SGD steps of size ``config.inner_lr`` from zero, and ``nil_acc``
    NIL on the same body. BatchNorm normalises each set with its own statistics, as for the trained scenarios.

    Args:
        body_state: the pretrained body's weights (:func:`load_pretrained_body`), ``None`` for a random body.
        source: where they come from (labels only).
        config: run configuration (seed, n_way, inner_lr, test_inner_steps).
        pool: evaluation tasks, e.g. ``pools.test``.
        device: compute device.
        architecture: ``"resnet18"`` (S3/S4's body) or ``"conv4"``.
        progress: show a progress bar.
    """
    body, head = build_network(architecture, config, body_state, source)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    learner = ANIL(body.to(device), head.to(device), config.inner_lr, config.outer_lr, config.inner_steps)
    return evaluate(learner, pool, device=device, steps=config.test_inner_steps, nil=True, progress=progress)
