"""Feature extractors ("bodies") and linear heads for ANIL on Omniglot.

ANIL (Almost No Inner Loop; Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR 2020, arXiv:1909.09157) splits a classifier into a body,
learned only in the outer loop, and a final linear head, the only part adapted in the inner loop. Every
builder here therefore returns ``(body, head)``: ``body`` maps images ``(batch, 1, H, W)`` to flat features
``(batch, features)`` and ``head`` is an ``nn.Linear(features, num_classes)``. Omniglot: Lake, Salakhutdinov
& Tenenbaum, "Human-level concept learning through probabilistic program induction", Science 350 (2015).

Bodies:

* :func:`create_anil_network`: the conv4 network of the ANIL/MAML papers (4 × [conv 3×3, 64 filters,
  BatchNorm, ReLU, 2×2 max-pool]). It gets the raw images in [0, 1] (ink = 1.0); the BatchNorm after every
  convolution makes an input normalisation unnecessary.
* :func:`create_pretrained_resnet_body` / :func:`create_pretrained_vgg_body`: torchvision's ResNet18 and
  VGG11-BN, optionally with ImageNet weights. Their first convolution is made single-channel by averaging the
  RGB filters (:func:`single_channel_conv`), and their first module is :class:`GrayscaleNormalize`, so callers
  feed the same [0, 1] images as to conv4 and the ImageNet normalisation happens inside the body.

Weights (``pretrained``): ``True`` or ``"imagenet"`` downloads torchvision's ImageNet weights into the torch
hub cache (``torch.hub.get_dir()/checkpoints``, hash-checked); a path loads that state-dict file (the official
torchvision ``.pth``, for machines without internet); ``False`` or ``None`` keeps torchvision's random
initialisation. Unobtainable weights raise :class:`WeightsUnavailableError`; nothing falls back to random
weights. Each body records where its weights came from in ``body.pretrained_source``:
``"ImageNet (torchvision)"``, ``"file: <path>"`` or ``"random"``.

Parameter counts (5-way heads; asserted in ``tests/test_networks.py``):

==============================  ===========  ===========  =======  =========  ===================
body                            features     body         head     BatchNorm  trainable if frozen
==============================  ===========  ===========  =======  =========  ===================
conv4, 105×105                  2,304        111,936      11,525   512        12,037
conv4, 28×28                    64           111,936      325      512        837
ResNet18                        512          11,170,240   2,565    9,600      12,165
VGG11-BN (≥ 32×32)              4,096        128,770,688  20,485   5,504      25,989
==============================  ===========  ===========  =======  =========  ===================

"Trainable if frozen" is BatchNorm + head after :func:`freeze_body`; see :data:`RESNET_FROZEN_TOTAL_NOTE`.
"""

from __future__ import annotations

import itertools
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

from utils.io import display_path, error_path

IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)
# One grey channel replaces R, G and B, so it gets the average of their ImageNet statistics.
GRAYSCALE_MEAN: float = sum(IMAGENET_RGB_MEAN) / len(IMAGENET_RGB_MEAN)
GRAYSCALE_STD: float = sum(IMAGENET_RGB_STD) / len(IMAGENET_RGB_STD)

CONV4_FILTERS = 64
CONV4_POOLINGS = 4
# Five 2×2 max-pools with floor division: 32 → 16 → 8 → 4 → 2 → 1, whereas 31 → 15 → 7 → 3 → 1 → 0 breaks.
VGG_MIN_IMAGE_SIZE = 2**5

SOURCE_IMAGENET = "ImageNet (torchvision)"
SOURCE_RANDOM = "random"
SOURCE_FILE_PREFIX = "file: "

RESNET_FROZEN_TOTAL_NOTE = (
    "ResNet18 with a frozen body (S4) still has 11,172,805 parameters (body 11,170,240 + head 2,565), "
    "of which 12,165 are trained (9,600 BatchNorm affine + 2,565 head). The seed's table lists S4's total as "
    "11,182,405 = 11,172,805 + 9,600, which counts the BatchNorm parameters twice; we report 11,172,805."
)

BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class WeightsUnavailableError(RuntimeError):
    """The requested ImageNet weights could neither be found in the torch hub cache nor downloaded."""


class GrayscaleNormalize(nn.Module):
    """ImageNet normalisation for one grey channel: ``(x - mean) / std``.

    The statistics are non-persistent buffers: they follow ``.to(device)`` but add no parameters and no
    state-dict keys, so the pretrained bodies keep torchvision's state-dict layout and parameter counts.

    Args:
        mean: value subtracted from every pixel.
        std: positive value the centred pixels are divided by.
    """

    def __init__(self, mean: float = GRAYSCALE_MEAN, std: float = GRAYSCALE_STD) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"GrayscaleNormalize needs a positive std, got {std}.")
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise ``images`` ``(batch, 1, H, W)`` in [0, 1]; returns the same shape."""
        return (images - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.item():.4f}, std={self.std.item():.4f}"


class ImageBody(nn.Sequential):
    """An ``nn.Sequential`` body that checks its input images and records its provenance.

    The modules keep the names they are given, so a pretrained body's state-dict keys are torchvision's
    (e.g. ``layer1.0.conv1.weight``). Slicing (``body[1:3]``) returns a plain ``nn.Sequential``.

    Attributes:
        arch: architecture name for messages and tables (``"conv4"``, ``"resnet18"``, ``"vgg11_bn"``).
        num_features: width F of the output features ``(batch, F)``; equals ``head.in_features``.
        in_channels: number of input channels (1 for Omniglot).
        min_image_size: smallest height and width the layers can process.
        image_size: the only accepted height and width, or ``None`` when any size ≥ ``min_image_size`` gives
            ``num_features`` features (adaptive pooling).
        pretrained_source: ``"ImageNet (torchvision)"``, ``"file: <path>"`` or ``"random"``.
    """

    def __init__(
        self,
        layers: OrderedDict[str, nn.Module],
        *,
        arch: str,
        num_features: int,
        in_channels: int = 1,
        min_image_size: int = 1,
        image_size: int | None = None,
        pretrained_source: str = SOURCE_RANDOM,
    ) -> None:
        super().__init__(layers)
        self.arch = arch
        self.num_features = num_features
        self.in_channels = in_channels
        self.min_image_size = min_image_size
        self.image_size = image_size
        self.pretrained_source = pretrained_source

    def __getitem__(self, idx: int | slice) -> nn.Module:
        if isinstance(idx, slice):
            # nn.Sequential would rebuild the slice as ImageBody, whose feature count and checks don't apply.
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map images ``(batch, in_channels, H, W)`` to features ``(batch, num_features)``."""
        self.check_input(images)
        return super().forward(images)

    def check_input(self, images: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the problem when ``images`` cannot go through this body."""
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(
                f"The {self.arch} body expects images of shape (batch, {self.in_channels}, H, W), "
                f"got {shape}."
            )
        height, width = shape[2:]
        if min(height, width) < self.min_image_size:
            raise ValueError(
                f"The {self.arch} body needs images of at least {self.min_image_size}×{self.min_image_size} "
                f"pixels (smaller ones shrink to 0 pixels in its pooling layers), got {height}×{width}. "
                f"Load the images with image_size >= {self.min_image_size}."
            )
        if self.image_size is not None and (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"This {self.arch} body was built for {self.image_size}×{self.image_size} images (its head "
                f"expects {self.num_features} features), got {height}×{width}. Rebuild it with "
                f"create_anil_network(image_size={height}) or resize the images."
            )

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, num_features={self.num_features}, "
            f"pretrained_source={self.pretrained_source!r}"
        )


# ----------------------------------------------------------------------------------------------- parameters


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, BATCHNORM_TYPES)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``module`` (shared tensors counted once).

    Args:
        module: any module.
        trainable_only: count only parameters with ``requires_grad=True``.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_batchnorm_parameters(module: nn.Module) -> int:
    """Number of BatchNorm affine parameters (weight, bias) in ``module``; running statistics are buffers."""
    return sum(p.numel() for m in module.modules() if _is_batchnorm(m) for p in m.parameters(recurse=False))


def freeze_body(body: nn.Module, train_batchnorm: bool = True) -> nn.Module:
    """Freeze every body parameter except, by default, the BatchNorm affine ones (weight and bias).

    Sets ``requires_grad`` in place (also re-enabling BatchNorm parameters frozen earlier) and leaves the
    running statistics alone. The head is a separate module and is not touched.

    Args:
        body: the feature extractor.
        train_batchnorm: keep the BatchNorm affine parameters trainable; ``False`` freezes the whole body (the
            ablation that shows what S4's trainable BatchNorm buys).

    Returns:
        ``body`` itself, for chaining.
    """
    for module in body.modules():
        keep_trainable = train_batchnorm and _is_batchnorm(module)
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(keep_trainable)
    return body


def parameter_table(body: nn.Module, head: nn.Module) -> dict[str, int]:
    """Parameter counts of a ``(body, head)`` pair, one row of the notebook's comparison tables.

    Returns:
        ``{"total", "body", "head", "batchnorm", "trainable"}``; ``trainable`` counts ``requires_grad``
        parameters of body and head, ``batchnorm`` the BatchNorm affine parameters (part of ``body``).
    """
    return {
        "total": count_parameters(body) + count_parameters(head),
        "body": count_parameters(body),
        "head": count_parameters(head),
        "batchnorm": count_batchnorm_parameters(body) + count_batchnorm_parameters(head),
        "trainable": count_parameters(body, trainable_only=True)
        + count_parameters(head, trainable_only=True),
    }


def _check_int(value: Any, name: str, minimum: int = 1, reason: str = "") -> int:
    """Return ``value`` if it is an ``int`` (not bool) >= ``minimum``; otherwise raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{reason}, got {value!r}.")
    return value


# ------------------------------------------------------------------------------------------------- conv4


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv 3×3 (padding 1) → BatchNorm → ReLU → max-pool 2: ``(B, in, H, W) -> (B, out, H // 2, W // 2)``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def create_anil_network(
    num_classes: int = 5, input_channels: int = 1, image_size: int = 105
) -> tuple[ImageBody, nn.Linear]:
    """The conv4 network of ANIL: 4 × [conv 3×3 (64 filters, padding 1), BatchNorm, ReLU, max-pool 2].

    A flatten follows the blocks. The body takes raw images in [0, 1] (ink = 1.0), without ImageNet
    normalisation. Each max-pool floors the size, so the body gives ``64 * (image_size // 16) ** 2`` features:
    2,304 at 105×105, 64 at 28×28.

    Args:
        num_classes: head outputs (``n_way``).
        input_channels: image channels (1 for Omniglot).
        image_size: height = width of the images; at least 16, which 4 halvings turn into 1 pixel.

    Returns:
        ``(body, head)``: body ``(B, input_channels, image_size, image_size) -> (B, F)``,
        head ``Linear(F, num_classes)``.
    """
    _check_int(num_classes, "num_classes")
    _check_int(input_channels, "input_channels")
    min_size = 2**CONV4_POOLINGS
    reason = f" for conv4 ({CONV4_POOLINGS} max-pools of size 2 turn smaller images into 0 pixels)"
    _check_int(image_size, "image_size", min_size, reason)
    # floor(floor(s / 2) / 2) ... four times equals s // 2**4 for non-negative integers.
    num_features = CONV4_FILTERS * (image_size // min_size) ** 2
    channels = [input_channels] + [CONV4_FILTERS] * CONV4_POOLINGS
    blocks = [
        (f"block{i + 1}", _conv_block(c_in, c_out))
        for i, (c_in, c_out) in enumerate(itertools.pairwise(channels))
    ]
    body = ImageBody(
        OrderedDict([*blocks, ("flatten", nn.Flatten(1))]),
        arch="conv4",
        num_features=num_features,
        in_channels=input_channels,
        min_image_size=min_size,
        image_size=image_size,
    )
    return body, nn.Linear(num_features, num_classes)


# ---------------------------------------------------------------------------------------- pretrained weights


def single_channel_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of ``conv`` that takes one input channel, with the filters averaged over the input channels.

    ``weight (out, in, kh, kw) -> weight.mean(dim=1, keepdim=True) (out, 1, kh, kw)``; bias, stride, padding
    and dilation are kept. For a grey image replicated into R = G = B the original convolution would give
    ``in`` times this output; the BatchNorm right after conv1 in ResNet18 and VGG11-BN removes that factor
    when it normalises with batch statistics, but not with ImageNet running statistics (eval mode).

    Raises:
        ValueError: for grouped convolutions, whose filters do not see all input channels.
    """
    if conv.groups != 1:
        raise ValueError(f"single_channel_conv needs an ungrouped convolution, got groups={conv.groups}.")
    single = nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        single.weight.copy_(conv.weight.mean(dim=1, keepdim=True))
        if conv.bias is not None:
            single.bias.copy_(conv.bias)
    return single


def _weights_file_name(weights: WeightsEnum) -> str:
    """File name of the official weights, e.g. ``resnet18-f37072fd.pth`` (the hash prefix is part of it)."""
    return os.path.basename(urlparse(weights.url).path)


def _official_file_hint(weights: WeightsEnum) -> str:
    return f"the official torchvision file {_weights_file_name(weights)} ({weights.url})"


def _download_weights(weights: WeightsEnum) -> Mapping[str, Any]:
    """ImageNet state dict from the torch hub cache, downloading (hash-checked) if it is not there yet.

    The download is started here rather than by torch.hub, which would print the cache's absolute path.

    Raises:
        WeightsUnavailableError: offline without a cached file, or a damaged cached file; says how to fix it.
    """
    file_name = _weights_file_name(weights)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    try:
        if not cached.is_file():
            print(f'Downloading "{weights.url}" to {display_path(cached)}')
            cached.parent.mkdir(parents=True, exist_ok=True)
            match = torch.hub.HASH_REGEX.search(file_name)
            torch.hub.download_url_to_file(weights.url, str(cached), match.group(1) if match else None)
        return weights.get_state_dict(progress=True, check_hash=True, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:  # URLError is an OSError
        shown = error_path(cached)
        raise WeightsUnavailableError(
            f"Could not obtain the ImageNet weights {file_name} "
            f"({type(err).__name__}: {_first_sentence(err)}). Without internet access, download "
            f"{weights.url} elsewhere and either place it in the torch hub cache folder "
            f'{error_path(cached.parent)} (as {shown}) or pass pretrained="/path/to/{file_name}". '
            f"If {shown} already exists it may be damaged: delete it and retry."
        ) from err


def _first_sentence(err: BaseException, limit: int = 200) -> str:
    """First sentence of an exception's message (torch.load goes on to suggest weights_only=False: unsafe)."""
    text = str(err).strip()
    return text.split(". ", 1)[0].splitlines()[0][:limit] if text else ""


def _describe_source(source: str) -> str:
    if source.startswith(SOURCE_FILE_PREFIX):
        return f"the weight file {source.removeprefix(SOURCE_FILE_PREFIX)}"
    return "torchvision's ImageNet weights"


def _read_weight_file(path: Path, weights: WeightsEnum) -> Mapping[str, Any]:
    """State dict stored in ``path`` (tensors only: ``weights_only=True``, mapped to the CPU).

    Raises:
        FileNotFoundError: ``path`` is not an existing file.
        ValueError: the file cannot be read as a state dict.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"Weight file {error_path(path)} does not exist (or is not a file). Pass the path of "
            f"{_official_file_hint(weights)}, pretrained=True to download it, or pretrained=False."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged files raise UnpicklingError, EOFError, KeyError or RuntimeError alike
        raise ValueError(
            f"Cannot read the weight file {error_path(path)} ({type(err).__name__}: {_first_sentence(err)}). "
            "Expected a "
            f"state dict saved with torch.save, such as {_official_file_hint(weights)}; download it again."
        ) from err
    if not isinstance(state, Mapping):
        raise ValueError(
            f"The weight file {error_path(path)} holds a {type(state).__name__}, not a state dict (name -> tensor). "
            f"Expected {_official_file_hint(weights)}."
        )
    return state


def _resolve_weights(pretrained: Any, weights: WeightsEnum) -> tuple[Mapping[str, Any] | None, str]:
    """Interpret ``pretrained``; returns ``(state dict or None for random init, pretrained_source)``."""
    if pretrained is None or pretrained is False:
        return None, SOURCE_RANDOM
    if pretrained is True or (isinstance(pretrained, str) and pretrained == "imagenet"):
        return _download_weights(weights), SOURCE_IMAGENET
    if isinstance(pretrained, (str, os.PathLike)):
        path = Path(pretrained).expanduser()
        return _read_weight_file(path, weights), f"{SOURCE_FILE_PREFIX}{path}"
    raise ValueError(
        f"pretrained must be True or 'imagenet' (download torchvision's ImageNet weights), a path to a "
        f"state-dict file such as {_weights_file_name(weights)}, or False/None (random initialisation); "
        f"got {pretrained!r}."
    )


def _load_strict(model: nn.Module, state: Mapping[str, Any], source: str, weights: WeightsEnum) -> None:
    """``model.load_state_dict(state)`` with every key and shape required to match.

    Raises:
        ValueError: naming ``source`` and the first mismatching keys or shapes.
    """
    arch = type(model).__name__
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches and non-tensor values
        details = " ".join(line.strip() for line in str(err).splitlines()[1:4])
        raise ValueError(
            f"The weights in {_describe_source(source)} do not fit torchvision's {arch}: {details} Expected "
            f"{_official_file_hint(weights)}."
        ) from err
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        raise ValueError(
            f"The weights in {_describe_source(source)} are not a torchvision {arch} state dict: "
            f"{len(missing)} missing keys (first: {missing[:5]}), {len(unexpected)} unexpected keys "
            f"(first: {unexpected[:5]}). Expected {_official_file_hint(weights)}."
        )


# ------------------------------------------------------------------------------------------ pretrained bodies


def _resnet_layers(model: nn.Module) -> tuple[OrderedDict[str, nn.Module], nn.Linear]:
    """ResNet18's layers up to the average pool, conv1 single-channel, flatten; plus the dropped fc layer."""
    layers = OrderedDict((name, child) for name, child in model.named_children() if name != "fc")
    layers["conv1"] = single_channel_conv(model.conv1)
    layers["flatten"] = nn.Flatten(1)
    return layers, model.fc


def _vgg_layers(model: nn.Module) -> tuple[OrderedDict[str, nn.Module], nn.Linear]:
    """VGG's features (conv1 single-channel), avgpool, flatten, classifier[:-1]; plus the dropped Linear."""
    model.features[0] = single_channel_conv(model.features[0])
    layers = OrderedDict(
        features=model.features,
        avgpool=model.avgpool,
        flatten=nn.Flatten(1),
        # Slicing keeps the names "0".."5", so the keys stay classifier.0.weight, classifier.3.weight.
        classifier=model.classifier[:-1],
    )
    return layers, model.classifier[-1]


@dataclass(frozen=True)
class _Backbone:
    arch: str
    factory: Callable[..., nn.Module]
    weights: WeightsEnum
    to_layers: Callable[[nn.Module], tuple[OrderedDict[str, nn.Module], nn.Linear]]
    min_image_size: int


_RESNET18 = _Backbone("resnet18", models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, _resnet_layers, 1)
_VGG11_BN = _Backbone(
    "vgg11_bn", models.vgg11_bn, models.VGG11_BN_Weights.IMAGENET1K_V1, _vgg_layers, VGG_MIN_IMAGE_SIZE
)


def _build_pretrained(backbone: _Backbone, num_classes: int, pretrained: Any) -> tuple[ImageBody, nn.Linear]:
    """Resolve the weights, load them into the 3-channel torchvision model, then cut it into body and head."""
    _check_int(num_classes, "num_classes")
    # Weights first: a missing file or no internet fails before the (for VGG, 0.5 GB) model is built.
    state, source = _resolve_weights(pretrained, backbone.weights)
    model = backbone.factory(weights=None)
    if state is not None:
        # The official files hold the 3-channel, 1000-class model: load them as they are, convert afterwards.
        _load_strict(model, state, source, backbone.weights)
    layers, imagenet_classifier = backbone.to_layers(model)
    num_features = imagenet_classifier.in_features
    body = ImageBody(
        OrderedDict([("normalize", GrayscaleNormalize()), *layers.items()]),
        arch=backbone.arch,
        num_features=num_features,
        min_image_size=backbone.min_image_size,
        pretrained_source=source,
    )
    return body, nn.Linear(num_features, num_classes)


def create_pretrained_resnet_body(
    num_classes: int = 5, pretrained: bool | str | os.PathLike | None = True
) -> tuple[ImageBody, nn.Linear]:
    """torchvision ResNet18 without its fc layer, single-channel conv1, ImageNet normalisation inside.

    Body: ``GrayscaleNormalize`` → conv1 (RGB filters averaged) → bn1 → relu → maxpool → layer1..4 → avgpool →
    flatten, with torchvision's module names (state-dict keys). Any image size works thanks to the adaptive
    average pool; 28×28 reaches layer4 as 1×1.

    Args:
        num_classes: head outputs (``n_way``).
        pretrained: ``True``/``"imagenet"`` (download or hub cache), a path to a state-dict file such as the
            official ``resnet18-f37072fd.pth``, or ``False``/``None`` for random initialisation.

    Returns:
        ``(body, head)``: body ``(B, 1, H, W) in [0, 1] -> (B, 512)``, head ``Linear(512, num_classes)``.

    Raises:
        WeightsUnavailableError: ImageNet weights requested but neither cached nor downloadable.
        FileNotFoundError: the weight file does not exist.
        ValueError: bad ``pretrained``/``num_classes``, unreadable file, or weights of another architecture.
    """
    return _build_pretrained(_RESNET18, num_classes, pretrained)


def create_pretrained_vgg_body(
    num_classes: int = 5, pretrained: bool | str | os.PathLike | None = True
) -> tuple[ImageBody, nn.Linear]:
    """torchvision VGG11-BN up to its second 4096-wide layer, single-channel conv1, normalisation inside.

    Body: ``GrayscaleNormalize`` → features (first conv's RGB filters averaged) → avgpool (adaptive, 7×7) →
    flatten → classifier[0:6] (Linear, ReLU, Dropout, Linear, ReLU, Dropout). The five 2×2 max-pools need
    images of at least 32×32 (:data:`VGG_MIN_IMAGE_SIZE`); smaller inputs such as 28×28 raise ``ValueError``.

    Args:
        num_classes: head outputs (``n_way``).
        pretrained: ``True``/``"imagenet"``, a path to a state-dict file such as the official
            ``vgg11_bn-6002323d.pth``, or ``False``/``None`` for random initialisation.

    Returns:
        ``(body, head)``: body ``(B, 1, H, W) in [0, 1], H, W >= 32 -> (B, 4096)``,
        head ``Linear(4096, num_classes)``.

    Raises:
        WeightsUnavailableError, FileNotFoundError, ValueError: as :func:`create_pretrained_resnet_body`.
    """
    return _build_pretrained(_VGG11_BN, num_classes, pretrained)
