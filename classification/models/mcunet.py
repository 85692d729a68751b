"""MCUNet v4 (MCUNet's "320kB / 1MB flash" ImageNet model): original, DERO form and plain twin.

Original: a 3x3/2 stem to 16 channels, 18 inverted-residual blocks (1x1 expand, kxk depthwise, 1x1 linear
projection; the block input is added when stride is 1 and channels match), global pool, linear from 160.
Published: 0.74M parameters, 81.8M MACs at 176x176.

DERO form: the stem and each of the three layers of every block is a
:class:`DeroUnit` (expand and depthwise with ReLU6, projection linear) and the block-level add is
dropped, since it would keep the block input alive across three operators. The plain twin is the same
network with every shortcut removed.

Stages (``memory_stages``) follow the resolution: a new stage starts at every stride-2 block, so
``stage1`` runs at 1/2 of the input, ..., ``stage5`` at 1/32.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, List, Sequence, Tuple

from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from yolo_dero.nn import DeroUnit, apply_stem_norm, get_style, init_shortcuts

from ._init import init_weights
from ._registry import register_model

__all__ = ["MCUNET_V4_BLOCKS", "InvertedResidual", "DeroInvertedResidual", "MCUNet"]

# (expand ratio t, output channels c, repeats n, stride s, depthwise kernel k), one block per row
MCUNET_V4_BLOCKS: List[Tuple[int, int, int, int, int]] = [
    (1, 8, 1, 1, 3), (3, 16, 1, 2, 7), (5, 16, 1, 1, 3), (5, 16, 1, 1, 7), (4, 16, 1, 1, 5),
    (5, 24, 1, 2, 5), (5, 24, 1, 1, 5), (5, 24, 1, 1, 5), (5, 40, 1, 2, 3), (6, 40, 1, 1, 7),
    (4, 40, 1, 1, 5), (5, 48, 1, 1, 5), (5, 48, 1, 1, 7), (5, 48, 1, 1, 3), (6, 96, 1, 2, 3),
    (5, 96, 1, 1, 7), (4, 96, 1, 1, 3), (5, 160, 1, 1, 7),
]
STEM_CHANNELS = 16


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6, skipped when ``t == 1``), kxk depthwise stride ``s`` (ReLU6),
    1x1 linear projection; ``x`` is added when ``use_residual`` (stride 1 and ``c_in == c_out``).
    Convolutions have no bias, each is followed by BatchNorm.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int, kernel: int):
        super().__init__()
        mid = c_in * expand_ratio
        self.use_residual = stride == 1 and c_in == c_out
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        if expand_ratio != 1:
            layers["expand"] = Conv2dNormActivation(c_in, mid, 1, activation_layer=nn.ReLU6)
        layers["depthwise"] = Conv2dNormActivation(mid, mid, kernel, stride, groups=mid,
                                                   activation_layer=nn.ReLU6)
        layers["project"] = Conv2dNormActivation(mid, c_out, 1, activation_layer=None)
        self.layers = nn.Sequential(layers)

    def forward(self, x):
        y = self.layers(x)
        return x + y if self.use_residual else y


class DeroInvertedResidual(nn.Sequential):
    """An inverted-residual block as a chain of DERO units (or their plain twins); no block-level add.

    1x1 expand (ReLU6, skipped when ``t == 1``), kxk depthwise stride ``s`` (ReLU6), 1x1 projection (linear).
    ``**style``: the units' style keywords (:meth:`yolo_dero.nn.DeroStyle.unit_kwargs`); ``project_shrink``: the
    projection's ``shortcut_shrink`` (:attr:`yolo_dero.nn.DeroStyle.projection_shrink`; ``"slice"`` carries the block
    input through the block as the original's residual does, ``"signed"`` carries it as ``x`` and ``-x``, the expand
    appending the negative copy, so activations after the add do not clip its negative half).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int, kernel: int,
                 shortcut: bool = True, project_shrink: str = "fold", **style):
        mid = c_in * expand_ratio
        sc = dict(shortcut=shortcut, **style)
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        if expand_ratio != 1:
            # a signed projection subtracts the -x copy that its expand appends
            expand_sc = dict(sc, shortcut_shrink="signed") if project_shrink == "signed" else sc
            layers["expand"] = DeroUnit(c_in, mid, k=1, act="relu6", **expand_sc)
        layers["depthwise"] = DeroUnit(mid, mid, k=kernel, s=stride, groups=mid, act="relu6", **sc)
        layers["project"] = DeroUnit(mid, c_out, k=1, act=None, **dict(sc, shortcut_shrink=project_shrink))
        super().__init__(layers)


class MCUNet(nn.Module):
    """MCUNet v4 on a block table; ``stem`` and ``block`` choose the original or the DERO/plain form.

    Args:
        stem: ``stem(c_in, c_out)`` -> the 3x3/2 stem module.
        block: ``block(c_in, c_out, stride, expand_ratio, kernel)`` -> one block.
        num_classes: classifier outputs.
        blocks: rows ``(t, c, n, s, k)``; a stride-2 row starts a new stage.
        head_norm: a BatchNorm before the global pooling (DERO styles with ``head_norm``).

    Input: ``(N, 3, H, W)`` with ``H, W >= 32``; output ``(N, num_classes)``.
    """

    def __init__(self, stem: Callable[[int, int], nn.Module], block: Callable[..., nn.Module],
                 num_classes: int = 1000,
                 blocks: Sequence[Tuple[int, int, int, int, int]] = MCUNET_V4_BLOCKS, head_norm: bool = False):
        super().__init__()
        stages: List[List[nn.Module]] = []
        c_in = STEM_CHANNELS
        for t, c, n, s, k in blocks:
            for i in range(n):
                stride = s if i == 0 else 1
                if stride > 1 or not stages:
                    stages.append([])
                stages[-1].append(block(c_in, c, stride, t, k))
                c_in = c
        self.features = nn.Sequential(OrderedDict(
            [("stem", stem(3, STEM_CHANNELS))]
            + [(f"stage{i + 1}", nn.Sequential(*stage)) for i, stage in enumerate(stages)]))
        self.head_norm = nn.BatchNorm2d(c_in) if head_norm else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        self.memory_stages = OrderedDict(
            [(name, [f"features.{name}"]) for name, _ in self.features.named_children()]
            + [("head", ["head_norm", "avgpool", "classifier"])])
        init_weights(self, conv_mode="fan_out", linear_std=0.01)

    def forward(self, x):
        return self.classifier(self.avgpool(self.head_norm(self.features(x))).flatten(1))


def _original_stem(c_in: int, c_out: int) -> nn.Module:
    return Conv2dNormActivation(c_in, c_out, 3, 2, activation_layer=nn.ReLU6)


def _dero_mcunet(num_classes: int, shortcut: bool, style=None) -> MCUNet:
    """The DERO form (``shortcut=True``) or its plain twin (``shortcut=False``) in a :class:`DeroStyle`."""
    style = get_style(style)
    sc = dict(shortcut=shortcut, **style.unit_kwargs())

    def stem(c_in: int, c_out: int) -> nn.Module:
        return DeroUnit(c_in, c_out, k=3, s=2, act="relu6", **sc)

    def block(c_in: int, c_out: int, stride: int, expand_ratio: int, kernel: int) -> nn.Module:
        return DeroInvertedResidual(c_in, c_out, stride, expand_ratio, kernel,
                                    project_shrink=style.projection_shrink, **sc)

    model = MCUNet(stem, block, num_classes, head_norm=style.head_norm)
    init_shortcuts(model, style)
    apply_stem_norm(model, style)
    return model


@register_model()
def mcunet_v4(num_classes: int = 1000):
    """MCUNet's "320kB" ImageNet model with its inverted residuals (input 176x176 in the paper)."""
    return MCUNet(_original_stem, InvertedResidual, num_classes)


@register_model()
def mcunet_v4_dero(num_classes: int = 1000, style=None):
    """MCUNet v4 with every operator a DERO unit and no block-level adds (``style``: see :class:`DeroStyle`)."""
    return _dero_mcunet(num_classes, shortcut=True, style=style)


@register_model()
def mcunet_v4_plain(num_classes: int = 1000, style=None):
    """Plain twin of MCUNet-DERO v4: the same units with no shortcuts (``style`` sets their norm and the head norm)."""
    return _dero_mcunet(num_classes, shortcut=False, style=style)


# the functions' former names (the registry's deprecated names resolve in classification.models._registry)
mcunet_dero_v4 = mcunet_v4_dero
mcunet_plain_v4 = mcunet_v4_plain
