"""Supervised pre-training of a body on the Omniglot background characters, cached on disk.

The ANIL paper (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, arXiv:1909.09157) argues that good features, not rapid adaptation, carry
few-shot accuracy. Scenarios S3/S4 test that with a ResNet18 pretrained on ImageNet; when those weights cannot
be had (no internet), this module supplies a body pretrained the plain supervised way instead: classify each
of the 964 background characters of Omniglot (Lake et al., Science 2015) with a temporary linear classifier,
then drop the classifier. Only background characters are used, so the evaluation characters stay unseen.

Randomness: one seed is drawn from the caller's generator (on a cache hit too, so the caller's generator ends
in the same state either way) and seeds a private generator for the batch order; the temporary classifier
starts at zero. The cache file ``pretrained_<arch>_<fingerprint>.pt`` is keyed by the architecture, parameter
shapes, initial weights, the images, epochs, batch size, learning rate and that seed, so changing any of them
retrains.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from utils.data import to_float
from utils.io import atomic_torch_save, display_path, ensure_writable_dir

PRETRAIN_SOURCE = "Omniglot background, supervised"
CACHE_FORMAT = 1


def _digest(tensors: list[torch.Tensor]) -> str:
    """blake2b digest of the bytes of ``tensors``."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        digest.update(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def pretrain_fingerprint(
    body: nn.Module, images: torch.Tensor, epochs: int, seed: int, batch_size: int, lr: float
) -> tuple[str, dict[str, Any]]:
    """Cache key of a pre-training run and the settings it hashes.

    Returns:
        ``(key, settings)``: a 16-hex-digit key and the JSON-serialisable settings.
    """
    state = body.state_dict()
    settings = {
        "format": CACHE_FORMAT,
        "arch": getattr(body, "arch", type(body).__name__),
        "parameters": {name: list(t.shape) for name, t in state.items()},
        "initial_weights": _digest(list(state.values())),
        "images": list(images.shape),
        "images_digest": _digest([images]),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return key, settings


def _check_arguments(images: torch.Tensor, epochs: int, batch_size: int, lr: float) -> None:
    """``ValueError`` naming the first bad argument."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"images must be uint8 (characters, drawings, H, W) as from utils.data.load_omniglot, got "
            f"{images.dtype} {tuple(images.shape)}."
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not (isinstance(lr, (int, float)) and 0 < lr < float("inf")):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}.")


def _train_epochs(
    body: nn.Module,
    images: torch.Tensor,
    epochs: int,
    seed: int,
    device: Any,
    batch_size: int,
    lr: float,
    progress: bool,
) -> tuple[float, float]:
    """Train ``body`` + a zero-initialised linear classifier on the character ids of ``images``.

    Args:
        images: uint8 ``(classes, drawings, H, W)``; the label of ``images[c, d]`` is ``c``.

    Returns:
        Mean loss and accuracy over the last epoch.
    """
    classes, drawings, height, width = images.shape
    flat, labels = images.reshape(-1, 1, height, width), torch.arange(classes).repeat_interleave(drawings)
    with torch.no_grad():  # infer the feature width with a dry forward of two images
        features = body(to_float(flat[:2].to(device))).shape[1]
    classifier = nn.Linear(features, classes, device=device)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    params = [p for p in itertools.chain(body.parameters(), classifier.parameters()) if p.requires_grad]
    optimizer, generator = torch.optim.Adam(params, lr=lr), torch.Generator().manual_seed(seed)
    # The last partial batch is skipped: a BatchNorm in train mode cannot normalise a batch of one image.
    starts = range(0, max(len(flat) - batch_size + 1, 1), batch_size)
    for epoch in range(epochs):
        order, losses, correct = torch.randperm(len(flat), generator=generator), [], 0
        for start in tqdm(starts, desc=f"Pre-training epoch {epoch + 1}/{epochs}", disable=not progress):
            idx = order[start : start + batch_size]
            logits = classifier(body(to_float(flat[idx].to(device))))
            loss = F.cross_entropy(logits, labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            correct += int((logits.argmax(1).cpu() == labels[idx]).sum())
    return sum(losses) / len(losses), correct / (len(starts) * min(batch_size, len(flat)))


def _load_cached(path: Path, key: str) -> dict[str, Any] | None:
    """The cached ``{"state_dict", "stats"}``, or ``None`` (with a warning) when the file is unusable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["fingerprint"] != key:
            raise ValueError(f"fingerprint {payload['fingerprint']} != {key}")
        return {"state_dict": payload["state_dict"], "stats": dict(payload["stats"])}
    except Exception as err:  # damaged files raise UnpicklingError, EOFError, IndexError, RuntimeError alike
        warnings.warn(f"Pre-training cache {display_path(path)} is unusable ({type(err).__name__}); retraining.",
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
    lr: float = 1e-3,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> nn.Module:
    """Supervised pre-training of ``body`` on character classification, or its cached result.

    Args:
        body: feature extractor on ``device``, ``(B, 1, H, W) -> (B, features)``; trained in place.
        images: uint8 background images ``(characters, 20, H, W)``.
        epochs: passes over the images.
        generator: seeded CPU ``torch.Generator``; exactly one seed is drawn from it.
        device: training device.
        batch_size: images per step.
        lr: Adam learning rate.
        cache_dir: folder for ``pretrained_<arch>_<fingerprint>.pt``; ``None`` disables the cache.
        progress: show a progress bar.

    Returns:
        ``body`` with pretrained weights, ``body.pretrained_source = "Omniglot background, supervised"`` and
        ``body.pretrain_stats`` (last epoch's ``loss`` and ``accuracy``, and the training ``seconds``).
    """
    _check_arguments(images, epochs, batch_size, lr)
    seed = int(torch.randint(2**62, (1,), generator=generator))
    key, _ = pretrain_fingerprint(body, images, epochs, seed, batch_size, lr)
    arch = getattr(body, "arch", type(body).__name__)
    path = None if cache_dir is None else ensure_writable_dir(cache_dir) / f"pretrained_{arch}_{key}.pt"
    cached = _load_cached(path, key) if path is not None and path.is_file() else None
    if cached is not None:
        body.load_state_dict(cached["state_dict"])
        stats = cached["stats"]
        print(f"Loaded the pre-trained {arch} body from the cache {display_path(path)}.")
    else:
        stats = _pretrain(body, images, epochs, seed, device, batch_size, lr, progress)
        if path is not None:
            atomic_torch_save({"fingerprint": key, "state_dict": body.state_dict(), "stats": stats}, path)
            print(f"Saved it to the cache {display_path(path)}.")
    body.pretrained_source, body.pretrain_stats = PRETRAIN_SOURCE, stats
    return body


def _pretrain(
    body: nn.Module,
    images: torch.Tensor,
    epochs: int,
    seed: int,
    device: Any,
    batch_size: int,
    lr: float,
    progress: bool,
) -> dict[str, float]:
    """Train in train mode (restoring the mode afterwards); returns and prints the last epoch's statistics."""
    was_training, started = body.training, time.perf_counter()
    body.train()
    loss, acc = _train_epochs(body, images, epochs, seed, device, batch_size, lr, progress)
    body.train(was_training)
    stats = {"loss": loss, "accuracy": acc, "seconds": time.perf_counter() - started}
    print(
        f"Pre-trained the {getattr(body, 'arch', type(body).__name__)} body on {images.shape[0]} background "
        f"characters for {epochs} epoch(s) in {stats['seconds']:.1f} s (last epoch: loss {loss:.3f}, "
        f"accuracy {acc:.3f})."
    )
    return stats
