"""OSNet, the omni-scale network of Zhou et al., in torchreid's exact state-dict layout.

References:
    Zhou, Yang, Cavallaro, Xiang. "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019.
    Zhou, Yang, Cavallaro, Xiang. "Learning Generalisable Omni-Scale Representations for Person
    Re-Identification", TPAMI 2021 (the instance-normalised "IBN" variant).

The published checkpoints (torchreid's model zoo and everything trained with torchreid) are plain
state dicts, so every attribute name below (``conv1.bn``, ``conv2a.conv1``, ``gate.fc1``, ``IN`` ...)
is part of the file format: renaming one breaks loading. The layers are the paper's:

    conv1 (7x7/2) -> maxpool (3x3/2) -> conv2 (2 OSBlocks + transition) -> conv3 (2 OSBlocks +
    transition) -> conv4 (2 OSBlocks) -> conv5 (1x1) -> global average pool -> fc (512) [-> classifier]

In eval mode ``forward`` returns the 512-d re-identification feature after ``fc``
(Linear, BatchNorm1d, ReLU); the identity classifier only exists so that checkpoints load.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model.contract import ARCHITECTURE_NAMES, FEATURE_DIM

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCHITECTURE",
    "FEATURE_DIM",
    "OSNet",
    "build_osnet",
    "osnet_ibn_x1_0",
    "osnet_x0_25",
    "osnet_x0_5",
    "osnet_x0_75",
    "osnet_x1_0",
]



# --------------------------------------------------------------------------------------------
# Basic layers: convolution + normalisation (+ ReLU), named as in torchreid.
# --------------------------------------------------------------------------------------------
class ConvLayer(nn.Module):
    """Convolution, normalisation, ReLU: the network's stem (``conv1``).

    With ``instance_norm`` the normalisation is an affine InstanceNorm instead of BatchNorm. IBN
    uses it in the stem because instance statistics remove per-image style (colour cast,
    contrast), which is what differs most between cameras.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        instance_norm: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn: nn.Module = (
            nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else nn.BatchNorm2d(out_channels)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1(nn.Module):
    """Pointwise convolution, BatchNorm, ReLU: mixes channels without looking at neighbours."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1Linear(nn.Module):
    """Pointwise convolution and BatchNorm without ReLU.

    Used where the result is added to a residual: a ReLU before the sum would clip the block's
    ability to subtract from the identity path.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class LightConv3x3(nn.Module):
    """The paper's "Lite 3x3": a linear 1x1 convolution, then a depthwise 3x3, BatchNorm, ReLU.

    Factorising a 3x3 convolution this way costs roughly 1/9 of the parameters and FLOPs, which is
    what lets OSNet stack many of them to reach large receptive fields cheaply.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False, groups=out_channels)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


# --------------------------------------------------------------------------------------------
# Omni-scale building block
# --------------------------------------------------------------------------------------------
class ChannelGate(nn.Module):
    """The unified aggregation gate: per-channel weights in (0, 1) computed from the input itself.

    A squeeze-and-excitation style mini network (global pool, 1x1 bottleneck with ``reduction``,
    ReLU, 1x1, sigmoid). One gate is shared by all streams of an OSBlock, so the *same* function
    decides, per image, how much each scale contributes.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)
        self.gate_activation = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        weights = self.gate_activation(self.fc2(self.relu(self.fc1(self.global_avgpool(x)))))
        return x * weights


def _lite_stack(channels: int, depth: int) -> nn.Sequential:
    """``depth`` Lite 3x3 layers in a row: a stream whose receptive field grows with ``depth``."""
    return nn.Sequential(*(LightConv3x3(channels, channels) for _ in range(depth)))


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck block.

    A 1x1 reduction to ``out_channels // 4``, four parallel streams of 1, 2, 3 and 4 Lite 3x3
    layers (receptive fields 3, 5, 7, 9), fused by the shared :class:`ChannelGate`, a linear 1x1
    expansion and a residual sum. ``instance_norm`` adds IBN's InstanceNorm after the sum.
    """

    def __init__(self, in_channels: int, out_channels: int, instance_norm: bool = False) -> None:
        super().__init__()
        mid_channels = out_channels // 4
        self.conv1 = Conv1x1(in_channels, mid_channels)
        # Stream 1 is a single layer, not a Sequential: the checkpoint keys are conv2a.conv1.*.
        self.conv2a = LightConv3x3(mid_channels, mid_channels)
        self.conv2b = _lite_stack(mid_channels, 2)
        self.conv2c = _lite_stack(mid_channels, 3)
        self.conv2d = _lite_stack(mid_channels, 4)
        self.gate = ChannelGate(mid_channels)
        self.conv3 = Conv1x1Linear(mid_channels, out_channels)
        self.downsample = Conv1x1Linear(in_channels, out_channels) if in_channels != out_channels else None
        self.IN = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else None

    def forward(self, x: Tensor) -> Tensor:
        squeezed = self.conv1(x)
        fused = (
            self.gate(self.conv2a(squeezed))
            + self.gate(self.conv2b(squeezed))
            + self.gate(self.conv2c(squeezed))
            + self.gate(self.conv2d(squeezed))
        )
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(fused) + identity
        if self.IN is not None:
            out = self.IN(out)
        return F.relu(out)


def _transition(channels: int) -> nn.Sequential:
    """1x1 convolution then 2x2 average pooling: halves the resolution between stages."""
    return nn.Sequential(Conv1x1(channels, channels), nn.AvgPool2d(2, stride=2))


def _stage(
    in_channels: int, out_channels: int, num_blocks: int, downsample: bool, instance_norm: bool = False
) -> nn.Sequential:
    """``num_blocks`` OSBlocks, the first one changing the width, plus an optional transition."""
    blocks: list[nn.Module] = [OSBlock(in_channels, out_channels, instance_norm=instance_norm)]
    blocks += [OSBlock(out_channels, out_channels, instance_norm=instance_norm) for _ in range(num_blocks - 1)]
    if downsample:
        blocks.append(_transition(out_channels))
    return nn.Sequential(*blocks)


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------
class OSNet(nn.Module):
    """Omni-Scale Network.

    Args:
        num_classes: size of the identity classifier. Only training uses it; it is kept so that
            checkpoints (which contain ``classifier.*``) have somewhere to go.
        channels: widths of (stem, stage 2, stage 3, stage 4); the x1.0 network is (64, 256, 384, 512).
        blocks_per_stage: OSBlocks in stages 2, 3, 4 (2, 2, 2 for every published variant).
        feature_dim: width of the ``fc`` embedding layer.
        instance_norm: the IBN variant: InstanceNorm in the stem and after every block of stage 2,
            where style (not identity) dominates the activations.
    """

    def __init__(
        self,
        num_classes: int,
        channels: tuple[int, int, int, int],
        blocks_per_stage: tuple[int, int, int] = (2, 2, 2),
        feature_dim: int = FEATURE_DIM,
        instance_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) != 4 or len(blocks_per_stage) != 3:
            raise ValueError("OSNet needs 4 channel widths and 3 stage depths")
        stem, c2, c3, c4 = channels
        self.channels = tuple(channels)
        self.instance_norm = instance_norm
        self.feature_dim = feature_dim
        self.arch: str | None = None  # the variant's name, set by build_osnet

        self.conv1 = ConvLayer(3, stem, 7, stride=2, padding=3, instance_norm=instance_norm)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(stem, c2, blocks_per_stage[0], downsample=True, instance_norm=instance_norm)
        self.conv3 = _stage(c2, c3, blocks_per_stage[1], downsample=True)
        self.conv4 = _stage(c3, c4, blocks_per_stage[2], downsample=False)
        self.conv5 = Conv1x1(c4, c4)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c4, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(feature_dim, num_classes)
        self._init_params()

    def _init_params(self) -> None:
        """torchreid's initialisation, so that an untrained model behaves like torchreid's."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def featuremaps(self, x: Tensor) -> Tensor:
        """The convolutional trunk: (N, 3, H, W) -> (N, C4, H/16, W/16)."""
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))

    def embed(self, x: Tensor) -> Tensor:
        """The 512-d re-identification feature (pooled trunk through ``fc``), in any mode."""
        return self.fc(torch.flatten(self.global_avgpool(self.featuremaps(x)), 1))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Eval mode: the (N, 512) feature. Train mode: (identity logits, feature), for losses."""
        features = self.embed(x)
        if not self.training:
            return features
        return self.classifier(features), features


# --------------------------------------------------------------------------------------------
# Published variants
# --------------------------------------------------------------------------------------------
_WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "x1_0": (64, 256, 384, 512),
    "x0_75": (48, 192, 288, 384),
    "x0_5": (32, 128, 192, 256),
    "x0_25": (16, 64, 96, 128),
}


def osnet_x1_0(num_classes: int = 1000) -> OSNet:
    """Standard width (x1.0), about 2.2 M parameters without the classifier."""
    return OSNet(num_classes, _WIDTHS["x1_0"])


def osnet_x0_75(num_classes: int = 1000) -> OSNet:
    """Width x0.75."""
    return OSNet(num_classes, _WIDTHS["x0_75"])


def osnet_x0_5(num_classes: int = 1000) -> OSNet:
    """Width x0.5."""
    return OSNet(num_classes, _WIDTHS["x0_5"])


def osnet_x0_25(num_classes: int = 1000) -> OSNet:
    """Width x0.25, about 0.2 M parameters: the smallest published model."""
    return OSNet(num_classes, _WIDTHS["x0_25"])


def osnet_ibn_x1_0(num_classes: int = 1000) -> OSNet:
    """Width x1.0 with instance normalisation (IBN): better across cameras and datasets."""
    return OSNet(num_classes, _WIDTHS["x1_0"], instance_norm=True)


ARCHITECTURES: dict[str, Callable[..., OSNet]] = {name: globals()[name] for name in ARCHITECTURE_NAMES}
"""Architecture name (torchreid's; :data:`model.contract.ARCHITECTURE_NAMES`) -> builder taking
``num_classes``."""

DEFAULT_ARCHITECTURE = "osnet_ibn_x1_0"
"""The target architecture (the original tool's model) and :func:`build_osnet`'s default. Not the
default weights: the bundled ones (``weights.BUNDLED_WEIGHTS``) are an ``osnet_x0_25``."""


def build_osnet(arch: str = DEFAULT_ARCHITECTURE, num_classes: int = 1000) -> OSNet:
    """Build an untrained OSNet variant by torchreid name (see :data:`ARCHITECTURES`)."""
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown OSNet architecture {arch!r}; known: {', '.join(ARCHITECTURES)}") from None
    model = builder(num_classes)
    model.arch = arch
    return model
