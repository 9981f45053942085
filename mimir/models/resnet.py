"""ResNet50 in plain torch, with torchvision's parameter names.

The published MIMIR modules are torchvision ``resnet50`` networks whose ``fc``
layer was replaced by ``Linear(2048, 2 * T)``: for each of T targets a
standardised mean and a log variance. This file rebuilds that network without
depending on torchvision; every parameter and buffer has the name and shape
torchvision gives it, so torchvision and MIMIR state dicts load with
``strict=True``.

``width`` scales every layer: torchvision's ResNet50 has ``width=64`` (stem 64
channels, stages 64/128/256/512 bottleneck planes, 2048 features); ``width=16``
divides every channel count by 4 (512 features). Slim variants are for small
demo and test modules.

Checkpoints are only ever read with ``torch.load(..., weights_only=True)``: a
downloaded file can hold tensors, never code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mimir.errors import ModuleError

#: Bottleneck blocks per stage of ResNet50.
LAYERS = (3, 4, 6, 3)
#: Output channels of a bottleneck = planes * EXPANSION.
EXPANSION = 4
#: torchvision's base width.
BASE_WIDTH = 64


def feature_dim(width: int = BASE_WIDTH) -> int:
    """Number of features entering ``fc`` (2048 for the standard width)."""
    return 8 * width * EXPANSION


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (stride on the 3x3 convolution, "ResNet v1.5")."""

    expansion = EXPANSION

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet50(nn.Module):
    """ResNet50 with ``num_outputs`` outputs and a channel ``width`` (64 = torchvision).

    Parameters
    ----------
    num_outputs:
        Size of the final linear layer (1000 for ImageNet; ``2 * T`` for a
        mean-variance network with T targets).
    width:
        Channels of the stem; every stage is scaled by ``width / 64``.
    zero_init_residual:
        As in torchvision: start each block's last BatchNorm at zero (training only).
    """

    def __init__(self, num_outputs: int = 1000, width: int = BASE_WIDTH, zero_init_residual: bool = False):
        super().__init__()
        if width < 1 or num_outputs < 1:
            raise ValueError("width and num_outputs must be positive")
        self.width = width
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, LAYERS[0])
        self.layer2 = self._make_layer(width * 2, LAYERS[1], stride=2)
        self.layer3 = self._make_layer(width * 4, LAYERS[2], stride=2)
        self.layer4 = self._make_layer(width * 8, LAYERS[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(feature_dim(width), num_outputs)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * EXPANSION:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * EXPANSION, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * EXPANSION),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * EXPANSION
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        """The pooled feature vector (B, 32 * width) before ``fc``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def resnet50(num_outputs: int = 1000, width: int = BASE_WIDTH) -> ResNet50:
    """A ResNet50 (random weights)."""
    return ResNet50(num_outputs=num_outputs, width=width)


def mean_variance_resnet50(num_targets: int, width: int = BASE_WIDTH) -> ResNet50:
    """A ResNet50 whose ``fc`` gives (mean, log variance) for ``num_targets`` targets."""
    return ResNet50(num_outputs=2 * num_targets, width=width)


def architecture_of(state_dict: Mapping[str, Tensor]) -> tuple[int, int]:
    """(width, num_outputs) of a ResNet50 state dict, read from the tensor shapes.

    Raises :class:`ModuleError` when the dict is not a ResNet50 of any width.
    """
    try:
        width = int(state_dict["conv1.weight"].shape[0])
        fc = state_dict["fc.weight"]
        num_outputs, in_features = (int(s) for s in fc.shape)
    except (KeyError, ValueError, AttributeError, TypeError):
        raise ModuleError("not a ResNet50 state dict (no conv1.weight / fc.weight)") from None
    if in_features != feature_dim(width):
        raise ModuleError(
            f"not a ResNet50 state dict: fc takes {in_features} features, expected {feature_dim(width)} "
            f"for stem width {width}"
        )
    return width, num_outputs


def _unwrap(obj: Any) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModuleError("checkpoint holds no state dict of tensors")
    sd = dict(obj)
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a torch checkpoint safely and return its ResNet state dict on the CPU.

    Accepts a bare state dict or a dict with a ``state_dict`` entry (as in
    MIMIR's ``snapshot.pth.tar``). Uses ``weights_only=True``: a file that
    needs arbitrary unpickling is refused.
    """
    name = os.path.basename(os.fspath(path))
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModuleError("file not found", path=name) from None
    except Exception as exc:  # pickle errors, zip errors, weights_only refusals
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModuleError(
            f"cannot read torch checkpoint safely ({first[:200]})",
            path=name,
            hint="Only plain tensor checkpoints are accepted (torch.load weights_only=True).",
        ) from None
    try:
        return _unwrap(obj)
    except ModuleError as exc:
        raise ModuleError(exc.message, path=name) from None


def build_from_state_dict(state_dict: Mapping[str, Tensor], *, name: str | None = None) -> ResNet50:
    """A ResNet50 of the right width and output size with ``state_dict`` loaded strictly."""
    width, num_outputs = architecture_of(state_dict)
    net = ResNet50(num_outputs=num_outputs, width=width)
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModuleError(
            "weights do not match a ResNet50: " + " ".join(first[:2])[:300], path=name
        ) from None
    return net
