"""Tests for utils/networks.py, the (body, head) builders for ANIL.

ANIL: Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, arXiv:1909.09157.

References are independent of the code under test: the parameter counts stated in the issue, counts derived
from torchvision's own models, torchvision's forward pass, and hand-computed values. VGG11-BN (0.5 GB) is
built three times in this file: the torchvision reference, the body loaded from a file, and a failing load.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from utils.networks import (
    GRAYSCALE_MEAN,
    GRAYSCALE_STD,
    RESNET_FROZEN_TOTAL_NOTE,
    GrayscaleNormalize,
    WeightsUnavailableError,
    count_batchnorm_parameters,
    count_parameters,
    create_anil_network,
    create_pretrained_resnet_body,
    create_pretrained_vgg_body,
    freeze_body,
    parameter_table,
    single_channel_conv,
)

RESNET_URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
VGG_URL = torchvision.models.VGG11_BN_Weights.IMAGENET1K_V1.url
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


def _images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random images ``(batch, 1, size, size)`` in [0, 1]."""
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _grey_as_rgb(images: torch.Tensor) -> torch.Tensor:
    """3-channel input on which an RGB model computes what the single-channel body computes on ``images``.

    The body normalises with the averaged statistics and convolves with the averaged filters, i.e.
    ``sum_c W_c * z / 3`` with ``z = (x - mean) / std``; ``z / 3`` on all three channels reproduces it.
    """
    mean, std = sum(RGB_MEAN) / 3, sum(RGB_STD) / 3
    return ((images - mean) / std / 3).expand(-1, 3, -1, -1)


def _eval_forward(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``module(images)`` in eval mode (running statistics, no dropout), restoring the previous mode."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(images)
    finally:
        module.train(was_training)


def _trainable_names(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def _batchnorm_parameter_names(module: nn.Module) -> set[str]:
    return {
        f"{name}.{suffix}"
        for name, m in module.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        for suffix in ("weight", "bias")
    }


def _assert_converted_state(
    body: nn.Module, reference: dict[str, torch.Tensor], conv1: str, dropped: str
) -> None:
    """``body``'s state dict is ``reference`` minus the ``dropped`` layer, ``conv1`` averaged over RGB."""
    body_state = body.state_dict()
    expected_keys = {key for key in reference if not key.startswith(f"{dropped}.")}
    assert set(body_state) == expected_keys
    for key, tensor in body_state.items():
        expected = reference[key].mean(dim=1, keepdim=True) if key == conv1 else reference[key]
        assert torch.equal(tensor, expected), key


# --------------------------------------------------------------------------------------------- helpers


def test_count_helpers_on_a_hand_counted_model() -> None:
    conv, bn, linear = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(3, 4)
    model = nn.Sequential(conv, bn, linear)
    model.append(linear)  # shared module: its parameters count once
    assert count_parameters(model) == (2 * 9 + 2) + (2 + 2) + (3 * 4 + 4)
    assert count_batchnorm_parameters(model) == 4
    conv.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 2 + 4 + 16
    assert parameter_table(nn.Sequential(conv, bn), linear) == {
        "total": 40,
        "body": 24,
        "head": 16,
        "batchnorm": 4,
        "trainable": 22,
    }


def test_freeze_body_leaves_only_batchnorm_affine_trainable() -> None:
    body, head = create_anil_network()
    body.requires_grad_(False)  # freeze_body must also re-enable BatchNorm parameters frozen before
    assert freeze_body(body) is body
    assert _trainable_names(body) == _batchnorm_parameter_names(body)
    assert len(_trainable_names(body)) == 2 * 4
    assert all(p.requires_grad for p in head.parameters())
    assert parameter_table(body, head)["trainable"] == 4 * 2 * 64 + head.weight.numel() + head.bias.numel()
    freeze_body(body)
    assert _trainable_names(body) == _batchnorm_parameter_names(body)


def test_single_channel_conv_averages_filters_and_keeps_the_geometry() -> None:
    rgb = nn.Conv2d(3, 8, kernel_size=5, stride=2, padding=2, dilation=1, bias=True)
    grey = single_channel_conv(rgb)
    assert (grey.in_channels, grey.out_channels) == (1, 8)
    assert (grey.kernel_size, grey.stride, grey.padding) == (rgb.kernel_size, rgb.stride, rgb.padding)
    assert torch.equal(grey.weight, rgb.weight.mean(dim=1, keepdim=True))
    assert torch.equal(grey.bias, rgb.bias)
    images = _images(11)
    with torch.no_grad():
        torch.testing.assert_close(grey(images), rgb(images.expand(-1, 3, -1, -1) / 3))
    with pytest.raises(ValueError, match="groups=3"):
        single_channel_conv(nn.Conv2d(3, 3, 3, groups=3))


def test_grayscale_normalize_uses_the_mean_imagenet_statistics() -> None:
    assert pytest.approx(sum(RGB_MEAN) / 3) == GRAYSCALE_MEAN
    assert pytest.approx(sum(RGB_STD) / 3) == GRAYSCALE_STD
    normalize = GrayscaleNormalize()
    assert count_parameters(normalize) == 0
    assert normalize.state_dict() == {}  # the pretrained bodies keep torchvision's state-dict keys
    images = _images(5)
    torch.testing.assert_close(normalize(images), (images - sum(RGB_MEAN) / 3) / (sum(RGB_STD) / 3))


# ------------------------------------------------------------------------------------------------ conv4


def test_conv4_parameter_counts_match_the_issue_and_the_layer_formula() -> None:
    # conv 3×3: 9 * c_in * 64 weights + 64 biases; BatchNorm: 64 weights + 64 biases.
    formula_body = sum(9 * c_in * 64 + 64 + 2 * 64 for c_in in (1, 64, 64, 64))
    body, head = create_anil_network(num_classes=5, input_channels=1, image_size=105)
    table = parameter_table(body, head)
    assert table == {
        "total": 123_461,
        "body": 111_936,
        "head": 11_525,
        "batchnorm": 512,
        "trainable": 123_461,
    }
    assert table["body"] == formula_body
    assert isinstance(head, nn.Linear)
    assert body.pretrained_source == "random"


@pytest.mark.parametrize(("image_size", "features", "head_parameters"), [(105, 2304, 11_525), (28, 64, 325)])
def test_conv4_forward_shapes(image_size: int, features: int, head_parameters: int) -> None:
    body, head = create_anil_network(image_size=image_size)
    out = body(_images(image_size))
    assert out.shape == (2, features) == (2, head.in_features)
    assert head(out).shape == (2, 5)
    assert count_parameters(head) == head_parameters


@pytest.mark.parametrize("image_size", [16, 17, 31, 32, 47, 84])
def test_conv4_feature_formula_matches_the_real_forward(image_size: int) -> None:
    body, head = create_anil_network(num_classes=3, image_size=image_size)
    assert body(_images(image_size, batch=3)).shape == (3, head.in_features)


def test_conv4_rejects_bad_arguments_and_inputs() -> None:
    for bad_size in (15, 0, 28.0, True):
        with pytest.raises(ValueError, match=">= 16"):
            create_anil_network(image_size=bad_size)
    with pytest.raises(ValueError, match="num_classes"):
        create_anil_network(num_classes=0)
    body, _ = create_anil_network(image_size=28)
    with pytest.raises(ValueError, match=r"28×28.*105×105"):
        body(_images(105))
    with pytest.raises(ValueError, match=r"\(batch, 1, H, W\)"):
        body(torch.zeros(2, 3, 28, 28))
    assert type(body[1:3]) is nn.Sequential and len(body[1:3]) == 2


# ------------------------------------------------------------------------------------------------ ResNet18


@pytest.fixture(scope="module")
def resnet_reference() -> nn.Module:
    """A randomly initialised torchvision ResNet18 (3 channels, 1000 classes) standing in for ImageNet."""
    return torchvision.models.resnet18(weights=None)


@pytest.fixture(scope="module")
def resnet_file(resnet_reference: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18-local.pth"
    torch.save(resnet_reference.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def resnet_loaded(resnet_file: Path) -> tuple[nn.Module, nn.Linear]:
    return create_pretrained_resnet_body(num_classes=5, pretrained=resnet_file)


def test_resnet_parameter_counts(
    resnet_reference: nn.Module, resnet_loaded: tuple[nn.Module, nn.Linear]
) -> None:
    body, head = resnet_loaded
    removed_channels = resnet_reference.conv1.weight[:, 1:].numel()
    derived_body = (
        count_parameters(resnet_reference) - count_parameters(resnet_reference.fc) - removed_channels
    )
    table = parameter_table(body, head)
    assert table == {
        "total": 11_172_805,
        "body": 11_170_240,
        "head": 2_565,
        "batchnorm": 9_600,
        "trainable": 11_172_805,
    }
    assert table["body"] == derived_body
    assert table["batchnorm"] == sum(
        2 * m.num_features for m in body.modules() if isinstance(m, nn.BatchNorm2d)
    )


def test_resnet_frozen_body_trains_only_batchnorm_and_head() -> None:
    body, head = create_pretrained_resnet_body(pretrained=False)
    freeze_body(body)
    assert _trainable_names(body) == _batchnorm_parameter_names(body)
    table = parameter_table(body, head)
    assert table["trainable"] == 12_165 == table["batchnorm"] + table["head"]
    assert table["total"] == 11_172_805
    # The note the comparison table cites must agree with the counts (the seed double-counted BatchNorm).
    for number in (table["total"], table["body"], table["trainable"], table["total"] + table["batchnorm"]):
        assert f"{number:,}" in RESNET_FROZEN_TOTAL_NOTE


def test_resnet_loads_a_local_file_and_averages_conv1(
    resnet_reference: nn.Module,
    resnet_file: Path,
    resnet_loaded: tuple[nn.Module, nn.Linear],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body, _ = resnet_loaded
    assert body.pretrained_source == f"file: {resnet_file}"
    assert isinstance(body[0], GrayscaleNormalize)
    _assert_converted_state(body, resnet_reference.state_dict(), conv1="conv1.weight", dropped="fc")
    # End to end against torchvision's own forward (fc removed), in eval mode to use the loaded statistics.
    monkeypatch.setattr(resnet_reference, "fc", nn.Identity())
    images = _images(40)
    expected = _eval_forward(resnet_reference, _grey_as_rgb(images))
    torch.testing.assert_close(_eval_forward(body, images), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("image_size", [28, 105])
def test_resnet_forward_shapes(resnet_loaded: tuple[nn.Module, nn.Linear], image_size: int) -> None:
    body, head = resnet_loaded
    out = body(_images(image_size))
    assert out.shape == (2, 512) == (2, head.in_features)
    assert head(out).shape == (2, 5)


# ---------------------------------------------------------------------------------------- weight errors


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the torch hub cache at an empty folder so that no cached weight file is used by accident."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


@pytest.fixture
def offline(empty_hub: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every download fail like a machine without internet; returns the URLs that were attempted."""
    attempted: list[str] = []

    def fail(url: str, *args: object, **kwargs: object) -> None:
        attempted.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution (simulated)")

    # torchvision's WeightsEnum.get_state_dict -> torch.hub.load_state_dict_from_url, which calls this on a
    # cache miss; patching it keeps the real cache lookup in the test.
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    return attempted


@pytest.mark.parametrize("pretrained", [True, "imagenet"])
@pytest.mark.parametrize(
    ("builder", "file_name", "url"),
    [
        (create_pretrained_resnet_body, "resnet18-f37072fd.pth", RESNET_URL),
        (create_pretrained_vgg_body, "vgg11_bn-6002323d.pth", VGG_URL),
    ],
)
def test_offline_imagenet_request_explains_how_to_get_the_weights(
    builder, file_name: str, url: str, pretrained: object, offline: list[str], empty_hub: Path
) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        builder(pretrained=pretrained)
    message = str(info.value)
    assert file_name in message
    assert url in message
    assert str(empty_hub / "checkpoints") in message  # absolute: right from any working folder
    assert f'pretrained="/path/to/{file_name}"' in message
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value.__cause__, URLError)
    assert offline == [url]


def test_imagenet_weights_placed_in_the_hub_cache_are_used_without_download(
    resnet_reference: nn.Module, resnet_file: Path, offline: list[str], empty_hub: Path
) -> None:
    cached = empty_hub / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(resnet_file.read_bytes())
    body, _ = create_pretrained_resnet_body(pretrained=True)
    assert offline == []
    assert body.pretrained_source == "ImageNet (torchvision)"
    assert torch.equal(body.conv1.weight, resnet_reference.conv1.weight.mean(dim=1, keepdim=True))


def test_random_initialisation_is_recorded() -> None:
    for pretrained in (False, None):
        body, _ = create_pretrained_resnet_body(pretrained=pretrained)
        assert body.pretrained_source == "random"


def test_missing_weight_file_raises_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        create_pretrained_resnet_body(pretrained=missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        create_pretrained_vgg_body(pretrained=str(missing))


@pytest.mark.parametrize("content", ["garbage", "empty", "truncated", "list"])
def test_unreadable_weight_file_raises_value_error_naming_it(
    content: str, resnet_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / f"{content}.pth"
    if content == "list":
        torch.save([torch.zeros(3)], path)
    else:
        data = {
            "garbage": np.random.default_rng(0).bytes(4096),
            "empty": b"",
            "truncated": resnet_file.read_bytes()[:100_000],
        }[content]
        path.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        create_pretrained_resnet_body(pretrained=path)


def test_weights_of_another_architecture_raise_value_error_naming_the_file(
    resnet_file: Path, vgg_file: Path
) -> None:
    with pytest.raises(ValueError, match=re.escape(str(vgg_file)) + ".*missing keys"):
        create_pretrained_resnet_body(pretrained=vgg_file)
    with pytest.raises(ValueError, match=re.escape(str(resnet_file)) + ".*missing keys"):
        create_pretrained_vgg_body(pretrained=resnet_file)


def test_shape_mismatch_raises_value_error_naming_file_and_key(resnet_file: Path, tmp_path: Path) -> None:
    state = torch.load(resnet_file, weights_only=True)
    state["fc.weight"], state["fc.bias"] = torch.zeros(10, 512), torch.zeros(10)  # a 10-class fine-tune
    path = tmp_path / "resnet18-10-classes.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*fc.weight"):
        create_pretrained_resnet_body(pretrained=path)


def test_invalid_pretrained_and_num_classes_values() -> None:
    for bad in (1, 0.5, ["imagenet"]):
        with pytest.raises(ValueError, match="pretrained must be True or 'imagenet'"):
            create_pretrained_resnet_body(pretrained=bad)
    with pytest.raises(ValueError, match="num_classes"):
        create_pretrained_vgg_body(num_classes=0, pretrained=False)


# ------------------------------------------------------------------------------------------------ VGG11-BN


@pytest.fixture(scope="module")
def vgg_reference() -> nn.Module:
    return torchvision.models.vgg11_bn(weights=None)


@pytest.fixture(scope="module")
def vgg_file(vgg_reference: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "vgg11_bn-local.pth"
    torch.save(vgg_reference.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vgg_loaded(vgg_file: Path) -> tuple[nn.Module, nn.Linear]:
    return create_pretrained_vgg_body(num_classes=5, pretrained=vgg_file)


def test_vgg_parameter_counts_derived_from_torchvision(
    vgg_reference: nn.Module, vgg_loaded: tuple[nn.Module, nn.Linear]
) -> None:
    body, head = vgg_loaded
    imagenet_layer = vgg_reference.classifier[-1]
    removed_channels = vgg_reference.features[0].weight[:, 1:].numel()
    derived_body = count_parameters(vgg_reference) - count_parameters(imagenet_layer) - removed_channels
    derived_bn = sum(2 * m.num_features for m in vgg_reference.modules() if isinstance(m, nn.BatchNorm2d))
    derived_head = (imagenet_layer.in_features + 1) * 5
    table = parameter_table(body, head)
    assert table == {
        "total": derived_body + derived_head,
        "body": derived_body,
        "head": derived_head,
        "batchnorm": derived_bn,
        "trainable": derived_body + derived_head,
    }
    assert round(table["body"] / 1e6, 2) == 128.77
    assert table["head"] == 20_485
    freeze_body(body)
    try:
        assert parameter_table(body, head)["trainable"] == derived_bn + derived_head
    finally:
        body.requires_grad_(True)


def test_vgg_loads_a_local_file_and_averages_conv1(
    vgg_reference: nn.Module,
    vgg_file: Path,
    vgg_loaded: tuple[nn.Module, nn.Linear],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body, _ = vgg_loaded
    assert body.pretrained_source == f"file: {vgg_file}"
    assert isinstance(body[0], GrayscaleNormalize)
    _assert_converted_state(
        body, vgg_reference.state_dict(), conv1="features.0.weight", dropped="classifier.6"
    )
    # torchvision's forward with the last classifier layer removed; eval mode also disables dropout.
    monkeypatch.setattr(vgg_reference.classifier, "6", nn.Identity())
    images = _images(32)
    expected = _eval_forward(vgg_reference, _grey_as_rgb(images))
    torch.testing.assert_close(_eval_forward(body, images), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("image_size", [32, 105])
def test_vgg_forward_shapes(vgg_loaded: tuple[nn.Module, nn.Linear], image_size: int) -> None:
    body, head = vgg_loaded
    with torch.no_grad():
        out = body(_images(image_size))
    assert out.shape == (2, 4096) == (2, head.in_features)
    assert head(out).shape == (2, 5)


def test_vgg_minimum_image_size_is_32(vgg_loaded: tuple[nn.Module, nn.Linear]) -> None:
    body, _ = vgg_loaded
    with pytest.raises(ValueError, match=r"at least 32×32.*28×28"):
        body(_images(28))
    # The limit is tight: torchvision's conv stack itself fails at 31×31 (five floor-halvings reach 0).
    with torch.no_grad():
        assert body.features(_images(32)).shape[-2:] == (1, 1)
        with pytest.raises(RuntimeError, match="too small"):
            body.features(_images(31))
