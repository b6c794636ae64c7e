"""Supervised pre-training of a body on the Omniglot background characters, with a held-out accuracy, cached.

The ANIL paper (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, arXiv:1909.09157) argues that good features, not rapid adaptation, carry
few-shot accuracy. Scenarios S3/S4 test that with a ResNet18 pretrained on ImageNet; when those weights cannot
be had (no internet), this module supplies a body pretrained the plain supervised way instead: classify the
background characters of Omniglot (Lake et al., Science 2015) with a temporary linear classifier, then drop the
classifier. This is in-domain supervised pre-training, the "good embedding" baseline of Tian et al. ("Rethinking
Few-Shot Image Classification: a Good Embedding Is All You Need?", ECCV 2020) and Chen et al. ("A Closer Look at
Few-shot Classification", ICLR 2019): a stronger form of the feature-reuse argument than ImageNet features, since
the features are learnt on the same kind of images. Only background characters are used (the caller passes those
outside the validation pool), so the evaluation alphabets stay unseen.

Measured, not assumed: the last ``held_out`` drawings of every character (drawers never seen in training) are
kept aside and the body's accuracy on them, with the classifier it was trained with, is reported in
``pretrain_stats["held_out_accuracy"]`` and in the source label (:func:`pretrain_source`).

Training: Adam under a one-cycle learning-rate schedule (Smith & Topin, 2019), and a small random affine
augmentation of every image (rotation, shift, scale; :func:`random_affine`), batched on the device with
``affine_grid``/``grid_sample``.

Randomness: one seed is drawn from the caller's generator (on a cache hit too, so the caller's generator ends
in the same state either way) and seeds a private CPU generator for the batch order and the augmentation; the
temporary classifier starts at zero. The cache file ``pretrained_<arch>_<fingerprint>.pt`` is keyed by the
architecture, parameter shapes, initial weights, the images and every training setting, so changing any of them
retrains; it stores the weights together with ``pretrain_stats``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from utils.data import to_float
from utils.io import atomic_torch_save, display_path, ensure_writable_dir, error_path

PRETRAIN_SOURCE = "Omniglot background, supervised"
CACHE_FORMAT = 2
HELD_OUT_DRAWINGS = 4  # of the 20 drawings of a character: 16 train, 4 measure


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random affine augmentation; each image draws uniformly within them.

    Attributes:
        rotation_deg: largest rotation either way, in degrees.
        shift: largest shift either way, as a fraction of the image side.
        scale: largest relative zoom either way (0.1: 0.9x to 1.1x).
    """

    rotation_deg: float = 10.0
    shift: float = 0.08
    scale: float = 0.1


def random_affine(
    images: torch.Tensor, generator: torch.Generator, augmentation: Augmentation = Augmentation(),
    magnitude: float = 1.0,
) -> torch.Tensor:
    """Apply an independent random rotation, shift and scale to every image, batched.

    Args:
        images: float ``(B, C, H, W)`` on any device; the background must be 0 (ink = 1.0, see ``to_float``),
            since pixels moved in from outside the image are zeros.
        generator: seeded CPU ``torch.Generator``: the only source of randomness (3 draws per image).
        augmentation: the ranges.
        magnitude: multiplies every range; 0 gives the images back unchanged.

    Returns:
        Float ``(B, C, H, W)`` on ``images.device``.
    """
    batch = images.shape[0]
    u = torch.rand(batch, 4, generator=generator, dtype=torch.float64) * 2 - 1  # uniform in [-1, 1]
    angle = u[:, 0] * math.radians(augmentation.rotation_deg) * magnitude
    zoom = 1 + u[:, 1] * augmentation.scale * magnitude
    # affine_grid maps output to input coordinates in [-1, 1]: the inverse transform, so divide by the zoom.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift = u[:, 2:] * 2 * augmentation.shift * magnitude  # a side is 2 units long in grid coordinates
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def split_drawings(images: torch.Tensor, held_out: int = HELD_OUT_DRAWINGS) -> tuple[torch.Tensor, torch.Tensor]:
    """Split every character's drawings into training and held-out ones.

    Args:
        images: uint8 ``(characters, drawings, H, W)``; drawing ``d`` of every character is by drawer ``d``.
        held_out: drawings per character kept aside: the last ``held_out`` drawers, never seen in training.

    Returns:
        ``(train, held)``: ``(characters, drawings - held_out, H, W)`` and ``(characters, held_out, H, W)``.
    """
    drawings = images.shape[1]
    if isinstance(held_out, bool) or not isinstance(held_out, int) or not 0 < held_out < drawings - 1:
        raise ValueError(
            f"held_out must be an integer between 1 and {drawings - 2} (of {drawings} drawings), got {held_out!r}."
        )
    return images[:, : drawings - held_out], images[:, drawings - held_out :]


def spread_characters(num_characters: int, count: int) -> torch.Tensor:
    """``count`` character indices spread evenly over ``range(num_characters)`` (0: all of them).

    Characters are ordered by alphabet, so evenly spaced indices draw from every alphabet instead of the first few.
    """
    if count == 0 or count >= num_characters:
        return torch.arange(num_characters)
    return torch.linspace(0, num_characters - 1, count, dtype=torch.float64).round().long()


def pretrain_source(stats: dict[str, Any] | None) -> str:
    """The source label of a pre-trained body, with its held-out accuracy.

    >>> pretrain_source({"held_out_accuracy": 0.873})
    'Omniglot background, supervised (held-out drawings 87.3%)'
    """
    if not stats or stats.get("held_out_accuracy") is None:
        return PRETRAIN_SOURCE
    return f"{PRETRAIN_SOURCE} (held-out drawings {100 * stats['held_out_accuracy']:.1f}%)"


@dataclass(frozen=True)
class PretrainSettings:
    """Every setting of a pre-training run (all part of the cache key)."""

    epochs: int
    batch_size: int = 256
    lr: float = 4e-3
    held_out: int = HELD_OUT_DRAWINGS
    augmentation: Augmentation = Augmentation()
    amp_dtype: str | None = None  # "bfloat16" runs the body under autocast (a GPU's tensor cores)

    def check(self) -> None:
        """``ValueError`` naming the first bad setting."""
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < float("inf")):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}.")
        if self.amp_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"amp_dtype must be None, 'bfloat16' or 'float16', got {self.amp_dtype!r}.")


def _digest(tensors: list[torch.Tensor]) -> str:
    """blake2b digest of the bytes of ``tensors``."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        digest.update(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def pretrain_fingerprint(
    body: nn.Module, images: torch.Tensor, settings: PretrainSettings, seed: int
) -> tuple[str, dict[str, Any]]:
    """Cache key of a pre-training run and the settings it hashes.

    Returns:
        ``(key, settings)``: a 16-hex-digit key and the JSON-serialisable settings.
    """
    state = body.state_dict()
    hashed = {
        "format": CACHE_FORMAT,
        "arch": getattr(body, "arch", type(body).__name__),
        "parameters": {name: list(t.shape) for name, t in state.items()},
        "initial_weights": _digest(list(state.values())),
        "images": list(images.shape),
        "images_digest": _digest([images]),
        "settings": asdict(settings),
        "seed": seed,
    }
    key = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]
    return key, hashed


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"images must be uint8 (characters, drawings, H, W) as from utils.data.load_omniglot, got "
            f"{images.dtype} {tuple(images.shape)}."
        )


def _flatten(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(classes, drawings, H, W)`` -> images ``(classes * drawings, 1, H, W)`` and their class labels."""
    classes, drawings, height, width = images.shape
    return images.reshape(-1, 1, height, width), torch.arange(classes).repeat_interleave(drawings)


def _autocast(device: torch.device, amp_dtype: str | None) -> torch.autocast:
    dtype = getattr(torch, amp_dtype) if amp_dtype else torch.float32
    return torch.autocast(device.type, dtype=dtype, enabled=amp_dtype is not None)


@torch.no_grad()
def classification_accuracy(
    body: nn.Module, classifier: nn.Module, images: torch.Tensor, device: torch.device, amp_dtype: str | None = None,
    batch_size: int = 512,
) -> float:
    """Accuracy of ``classifier(body(x))`` on uint8 ``(classes, drawings, H, W)`` (label = class row), eval mode."""
    flat, labels = _flatten(images)
    was_training, correct = body.training, 0
    body.eval()
    for start in range(0, len(flat), batch_size):
        with _autocast(device, amp_dtype):
            logits = classifier(body(to_float(flat[start : start + batch_size].to(device))).float())
        correct += int((logits.argmax(1).cpu() == labels[start : start + batch_size]).sum())
    body.train(was_training)
    return correct / len(flat)


def _train_epochs(
    body: nn.Module, classifier: nn.Linear, images: torch.Tensor, settings: PretrainSettings,
    generator: torch.Generator, device: torch.device, progress: bool,
) -> tuple[float, float]:
    """Train ``body`` + ``classifier`` on the character ids of augmented ``images`` (one-cycle Adam).

    Args:
        images: uint8 ``(classes, drawings, H, W)``; the label of ``images[c, d]`` is ``c``.

    Returns:
        Mean loss and accuracy (augmented images, train mode) over the last epoch.
    """
    flat, labels = _flatten(images)
    params = [p for p in itertools.chain(body.parameters(), classifier.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    # The last partial batch is skipped: a BatchNorm in train mode cannot normalise a batch of one image.
    starts = range(0, max(len(flat) - settings.batch_size + 1, 1), settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.epochs * len(starts))
    for epoch in range(settings.epochs):
        order, losses, correct, seen = torch.randperm(len(flat), generator=generator), [], 0, 0
        bar = tqdm(starts, desc=f"Pre-training epoch {epoch + 1}/{settings.epochs}", disable=not progress)
        for start in bar:
            idx = order[start : start + settings.batch_size]
            x = random_affine(to_float(flat[idx].to(device)), generator, settings.augmentation)
            with _autocast(device, settings.amp_dtype):
                logits = classifier(body(x).float())
            loss = F.cross_entropy(logits, labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            correct, seen = correct + int((logits.argmax(1).cpu() == labels[idx]).sum()), seen + len(idx)
    return sum(losses) / len(losses), correct / seen


def _pretrain(
    body: nn.Module, images: torch.Tensor, settings: PretrainSettings, seed: int, device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Train on the first drawings, score the held-out ones; restores the body's mode; returns the statistics."""
    was_training, started = body.training, time.perf_counter()
    train_images, held_images = split_drawings(images, settings.held_out)
    with torch.no_grad():  # infer the feature width with a dry forward of two images
        features = body.eval()(to_float(_flatten(train_images)[0][:2].to(device))).shape[1]
    classifier = nn.Linear(features, images.shape[0], device=device)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    body.train()
    loss, acc = _train_epochs(body, classifier, train_images, settings, torch.Generator().manual_seed(seed),
                              device, progress)
    held = classification_accuracy(body, classifier, held_images, device, settings.amp_dtype)
    body.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {
        "held_out_accuracy": held, "train_accuracy": acc, "train_loss": loss, "epochs": settings.epochs,
        "seconds": time.perf_counter() - started, "characters": int(images.shape[0]),
        "train_drawings": int(train_images.shape[1]), "held_out_drawings": int(held_images.shape[1]),
        "image_size": int(images.shape[-1]), "batch_size": settings.batch_size, "lr": settings.lr,
        "amp_dtype": settings.amp_dtype or "float32", "device": str(device),
    }


def describe_stats(arch: str, stats: dict[str, Any]) -> str:
    """One sentence on a pre-training run: data, schedule, cost and the held-out accuracy."""
    return (
        f"Pre-trained the {arch} body on {stats['characters']} background characters x {stats['train_drawings']} "
        f"drawings at {stats['image_size']}x{stats['image_size']} for {stats['epochs']} epoch(s) in "
        f"{stats['seconds']:.1f} s on {stats['device']} ({stats['amp_dtype']}): held-out drawings "
        f"{100 * stats['held_out_accuracy']:.1f}% ({stats['characters']}-way, {stats['held_out_drawings']} unseen "
        f"drawers per character), training {100 * stats['train_accuracy']:.1f}% (last epoch, augmented)."
    )


def _load_cached(path: Path, key: str) -> dict[str, Any] | None:
    """The cached ``{"state_dict", "stats"}``, or ``None`` (with a warning) when the file is unusable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["fingerprint"] != key:
            raise ValueError(f"fingerprint {payload['fingerprint']} != {key}")
        return {"state_dict": payload["state_dict"], "stats": dict(payload["stats"])}
    except Exception as err:  # damaged files raise UnpicklingError, EOFError, IndexError, RuntimeError alike
        warnings.warn(f"Pre-training cache {error_path(path)} is unusable ({type(err).__name__}); retraining.",
                      stacklevel=3)
        return None


def pretrain_body(
    body: nn.Module,
    images: torch.Tensor,
    epochs: int,
    *,
    generator: torch.Generator,
    device: torch.device | str,
    batch_size: int = 256,
    lr: float = 4e-3,
    held_out: int = HELD_OUT_DRAWINGS,
    augmentation: Augmentation = Augmentation(),
    amp_dtype: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> nn.Module:
    """Supervised pre-training of ``body`` on character classification, or its cached result.

    Args:
        body: feature extractor on ``device``, ``(B, 1, H, W) -> (B, features)``; trained in place.
        images: uint8 background images ``(characters, 20, H, W)``; the last ``held_out`` drawings of each are
            only scored.
        epochs: passes over the training drawings.
        generator: seeded CPU ``torch.Generator``; exactly one seed is drawn from it.
        device: training device.
        batch_size: images per step.
        lr: peak Adam rate of the one-cycle schedule.
        held_out: drawings per character kept for the held-out accuracy.
        augmentation: ranges of the random affine augmentation.
        amp_dtype: ``"bfloat16"`` to run the body under autocast, ``None`` for float32.
        cache_dir: folder for ``pretrained_<arch>_<fingerprint>.pt``; ``None`` disables the cache.
        progress: show a progress bar.

    Returns:
        ``body`` with pretrained weights, ``body.pretrain_stats`` (``held_out_accuracy``, ``train_accuracy``,
        ``train_loss``, ``epochs``, ``seconds``, ``characters``, ``image_size``, ...) and
        ``body.pretrained_source`` = :func:`pretrain_source` of them.
    """
    _check_images(images)
    settings = PretrainSettings(epochs, batch_size, lr, held_out, augmentation, amp_dtype)
    settings.check()
    split_drawings(images, held_out)  # validates held_out before any compute
    device = torch.device(device)
    seed = int(torch.randint(2**62, (1,), generator=generator))
    key, _ = pretrain_fingerprint(body, images, settings, seed)
    arch = getattr(body, "arch", type(body).__name__)
    path = None if cache_dir is None else ensure_writable_dir(cache_dir) / f"pretrained_{arch}_{key}.pt"
    cached = _load_cached(path, key) if path is not None and path.is_file() else None
    if cached is not None:
        body.load_state_dict(cached["state_dict"])
        stats = cached["stats"]
        print(f"Loaded the pre-trained {arch} body from the cache {display_path(path)}.")
    else:
        stats = _pretrain(body, images, settings, seed, device, progress)
        if path is not None:
            atomic_torch_save({"fingerprint": key, "state_dict": body.state_dict(), "stats": stats}, path)
            print(f"Saved it to the cache {display_path(path)}.")
    print(describe_stats(arch, stats))
    body.pretrained_source, body.pretrain_stats = pretrain_source(stats), stats
    return body
