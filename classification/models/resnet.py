"""ResNet34/50: torchvision's originals, their DERO form and the plain twin of the DERO form.

DERO form: every convolution of every block is one :class:`DeroUnit` (BasicBlock:
3x3 stride s, 3x3; Bottleneck: 1x1, 3x3 stride s, 1x1 expand x4), each with ReLU, so no residual spans
more than one operator and no projection convolution is left. The stem is two DERO units of its own:
the 7x7/2 convolution and the 3x3/2 max-pool. The plain twin is the same network with every shortcut
removed (``shortcut=False``).

Every model carries ``memory_stages``: stage name -> qualified module names, in forward order.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Type, Union

from torch import nn
from torchvision.models import resnet as tv_resnet

from yolo_dero.nn import DeroPool, DeroStyle, DeroUnit, apply_stem_norm, get_style, init_shortcuts

from ._init import init_weights
from ._registry import register_model

__all__ = ["DeroBasicBlock", "DeroBottleneck", "DeroResNet"]

_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _torchvision_stages() -> "OrderedDict[str, List[str]]":
    """Stages of torchvision's ResNet: conv1/bn1/relu/maxpool, layer1..4, avgpool/fc."""
    return OrderedDict([("stem", ["conv1", "bn1", "relu", "maxpool"]), *((s, [s]) for s in _STAGES),
                        ("head", ["avgpool", "fc"])])


@register_model()
def resnet34(num_classes: int = 1000, **kwargs):
    """torchvision's ResNet34."""
    model = tv_resnet.resnet34(weights=None, num_classes=num_classes, **kwargs)
    model.memory_stages = _torchvision_stages()
    return model


@register_model()
def resnet50(num_classes: int = 1000, **kwargs):
    """torchvision's ResNet50."""
    model = tv_resnet.resnet50(weights=None, num_classes=num_classes, **kwargs)
    model.memory_stages = _torchvision_stages()
    return model


class DeroBasicBlock(nn.Sequential):
    """BasicBlock as two DERO units: 3x3 (stride ``s``, ``c_in -> width``) then 3x3 (``width -> width``).

    ``**style``: the units' style keywords (:meth:`yolo_dero.nn.DeroStyle.unit_kwargs`)."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1, shortcut: bool = True,
                 drop_path: float = 0.0, **style):
        unit = dict(act="relu", shortcut=shortcut, drop_path=drop_path, **style)
        super().__init__(OrderedDict([
            ("conv1", DeroUnit(c_in, width, k=3, s=stride, **unit)),
            ("conv2", DeroUnit(width, width, k=3, **unit)),
        ]))


class DeroBottleneck(nn.Sequential):
    """Bottleneck as three DERO units: 1x1 (``c_in -> width``), 3x3 stride ``s``, 1x1 (``width -> 4 width``).

    The stride sits on the 3x3 as in torchvision (ResNet v1.5). ``**style``: the units' style keywords.
    """

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1, shortcut: bool = True,
                 drop_path: float = 0.0, **style):
        unit = dict(act="relu", shortcut=shortcut, drop_path=drop_path, **style)
        super().__init__(OrderedDict([
            ("conv1", DeroUnit(c_in, width, k=1, **unit)),
            ("conv2", DeroUnit(width, width, k=3, s=stride, **unit)),
            ("conv3", DeroUnit(width, width * self.expansion, k=1, **unit)),
        ]))


class DeroResNet(nn.Module):
    """ResNet with every operator a DERO unit (``shortcut=True``) or its plain twin (``shortcut=False``).

    Args:
        block: :class:`DeroBasicBlock` or :class:`DeroBottleneck`.
        layers: blocks per stage, e.g. ``[3, 4, 6, 3]``.
        num_classes: classifier outputs.
        shortcut: False builds the plain twin.
        drop_path_rate: stochastic depth of the last block; it grows linearly from 0 over the blocks
            (every unit of a block shares the block's rate). Needs shortcuts: a dropped unit with no
            shortcut would zero the whole activation.
        style: the units' :class:`~yolo_dero.nn.DeroStyle` or its name (``"default"``, ``"seed"``).

    Input: ``(N, 3, H, W)`` with ``H, W >= 32``; output ``(N, num_classes)``.
    """

    def __init__(self, block: Type[Union[DeroBasicBlock, DeroBottleneck]], layers: List[int],
                 num_classes: int = 1000, shortcut: bool = True, drop_path_rate: float = 0.0,
                 style: Union[str, DeroStyle, None] = None):
        super().__init__()
        style = get_style(style)
        sc = dict(shortcut=shortcut, **style.unit_kwargs())
        if drop_path_rate > 0 and not shortcut:
            raise ValueError("drop_path_rate needs shortcuts; the plain twin has none")
        # each stem operator is its own DERO unit (the seed's one shortcut around both would make the
        # image outlive the 7x7 conv and raise the stem's peak memory)
        self.stem = nn.Sequential(OrderedDict([
            ("conv", DeroUnit(3, 64, k=7, s=2, act="relu", **sc)),
            ("pool", DeroPool(64, k=3, s=2, mode="max", shortcut=shortcut and style.pool_shortcut,
                              shortcut_bn=style.shortcut_norm)),
        ]))

        n_blocks = sum(layers)
        block_index = 0
        c_in = 64
        for stage, (width, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for i in range(n):
                rate = drop_path_rate * block_index / max(n_blocks - 1, 1)
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(c_in, width, stride, drop_path=rate, **sc))
                c_in = width * block.expansion
                block_index += 1
            self.add_module(_STAGES[stage], nn.Sequential(*blocks))

        self.head_norm = nn.BatchNorm2d(c_in) if style.head_norm else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        self.memory_stages = OrderedDict([("stem", ["stem"]), *((s, [s]) for s in _STAGES),
                                          ("head", ["head_norm", "avgpool", "fc"])])
        init_weights(self, conv_mode="fan_out", linear=False)
        init_shortcuts(self, style)
        apply_stem_norm(self, style)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(self.head_norm(x)).flatten(1))


@register_model()
def resnet34_dero(num_classes: int = 1000, drop_path_rate: float = 0.0, style=None):
    """ResNet34 with every operator a DERO unit."""
    return DeroResNet(DeroBasicBlock, [3, 4, 6, 3], num_classes, shortcut=True,
                      drop_path_rate=drop_path_rate, style=style)


@register_model()
def resnet34_plain(num_classes: int = 1000, drop_path_rate: float = 0.0, style=None):
    """Plain twin of ResNet34-DERO: the same units with no shortcuts (``drop_path_rate`` must stay 0)."""
    return DeroResNet(DeroBasicBlock, [3, 4, 6, 3], num_classes, shortcut=False,
                      drop_path_rate=drop_path_rate, style=style)


@register_model()
def resnet50_dero(num_classes: int = 1000, drop_path_rate: float = 0.0, style=None):
    """ResNet50 with every operator a DERO unit."""
    return DeroResNet(DeroBottleneck, [3, 4, 6, 3], num_classes, shortcut=True,
                      drop_path_rate=drop_path_rate, style=style)


@register_model()
def resnet50_plain(num_classes: int = 1000, drop_path_rate: float = 0.0, style=None):
    """Plain twin of ResNet50-DERO: the same units with no shortcuts (``drop_path_rate`` must stay 0)."""
    return DeroResNet(DeroBottleneck, [3, 4, 6, 3], num_classes, shortcut=False,
                      drop_path_rate=drop_path_rate, style=style)


# the functions' former names (the registry's deprecated names resolve in classification.models._registry)
resnet34dero = resnet34_dero
resnet34plain = resnet34_plain
resnet50dero = resnet50_dero
resnet50plain = resnet50_plain
