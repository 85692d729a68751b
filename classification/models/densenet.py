"""DenseNet121: torchvision's original, its DERO form and the plain twin of the DERO form.

DERO form: the ResNet-DERO stem (7x7/2 conv and 3x3/2 max-pool, each a DERO unit),
then four stages of dense layers of constant width (6 x 76, 12 x 92, 24 x 116, 16 x 112 channels). The
concatenation of the original would keep every earlier feature map alive, so the DERO layers form a
chain: each layer is a 1x1 :class:`DeroUnit` (``in -> w``) followed by a 3x3 one (``w -> w``). After
each stage a transition: a 1x1 DERO unit to 128, 256, 512, 1024 channels, then 2x2 average pooling
(none after the last). Head: ReLU, global average pool, linear from 1024. The shortcut has its own
BatchNorm only where channels or stride change. The plain twin is the same network with no shortcuts.

Every model carries ``memory_stages``: stage name -> qualified module names, in forward order.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from torch import nn
from torchvision.models import densenet as tv_densenet

from yolo_dero.nn import DERO_STYLES, DeroPool, DeroStyle, DeroUnit, apply_stem_norm, get_style, init_shortcuts

from ._init import init_weights
from ._registry import register_model

__all__ = ["DeroDenseLayer", "DeroDenseNet"]


@register_model()
def densenet121(num_classes: int = 1000, **kwargs):
    """torchvision's DenseNet121."""
    model = tv_densenet.densenet121(weights=None, num_classes=num_classes, **kwargs)
    # torchvision's head applies ReLU and pooling functionally after norm5
    model.memory_stages = OrderedDict(
        [("stem", ["features.conv0", "features.norm0", "features.relu0", "features.pool0"])]
        + [(f"denseblock{i}", [f"features.denseblock{i}", f"features.transition{i}"]) for i in (1, 2, 3)]
        + [("denseblock4", ["features.denseblock4"]), ("head", ["features.norm5", "classifier"])])
    return model


def _unit(c_in: int, c_out: int, k: int, shortcut: bool, style: DeroStyle = DERO_STYLES["seed"]) -> DeroUnit:
    """A DenseNet DERO unit: ReLU, padding k // 2. The seed's DenseNet (``shortcut_norm="all"``) gives the shortcut
    a BatchNorm only where channels change; other styles follow :class:`~yolo_dero.nn.DeroStyle`."""
    bn = c_in != c_out if style.shortcut_norm == "all" else style.shortcut_norm
    return DeroUnit(c_in, c_out, k=k, act="relu", shortcut=shortcut, **{**style.unit_kwargs(), "shortcut_bn": bn})


class DeroDenseLayer(nn.Sequential):
    """One dense layer as two DERO units: 1x1 (``c_in -> width``) then 3x3 (``width -> width``)."""

    def __init__(self, c_in: int, width: int, shortcut: bool = True, style: DeroStyle = DERO_STYLES["seed"]):
        super().__init__(OrderedDict([
            ("conv1", _unit(c_in, width, 1, shortcut, style)),
            ("conv2", _unit(width, width, 3, shortcut, style)),
        ]))


class DeroDenseNet(nn.Module):
    """DenseNet121 in DERO form (``shortcut=True``) or its plain twin (``shortcut=False``).

    Args:
        num_classes: classifier outputs.
        shortcut: False builds the plain twin.
        block_config: dense layers per stage.
        widths: constant width of each stage's dense layers.
        transitions: output channels of each stage's transition unit.
        style: the units' :class:`~yolo_dero.nn.DeroStyle` or its name.

    Input: ``(N, 3, H, W)`` with ``H, W >= 32``; output ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int = 1000, shortcut: bool = True,
                 block_config: Sequence[int] = (6, 12, 24, 16), widths: Sequence[int] = (76, 92, 116, 112),
                 transitions: Sequence[int] = (128, 256, 512, 1024), style=None):
        super().__init__()
        style = get_style(style)
        features: "OrderedDict[str, nn.Module]" = OrderedDict()
        features["stem"] = nn.Sequential(OrderedDict([
            ("conv", DeroUnit(3, 64, k=7, s=2, act="relu", shortcut=shortcut, **style.unit_kwargs())),
            ("pool", DeroPool(64, k=3, s=2, mode="max", shortcut=shortcut and style.pool_shortcut,
                              shortcut_bn=style.shortcut_norm)),
        ]))
        self.memory_stages = OrderedDict([("stem", ["features.stem"])])
        c_in = 64
        n_stages = len(block_config)
        for i, (n_layers, width, c_trans) in enumerate(zip(block_config, widths, transitions), start=1):
            layers = []
            for _ in range(n_layers):
                layers.append(DeroDenseLayer(c_in, width, shortcut, style))
                c_in = width
            features[f"denseblock{i}"] = nn.Sequential(
                OrderedDict((f"denselayer{j}", layer) for j, layer in enumerate(layers, start=1)))
            transition: "OrderedDict[str, nn.Module]" = OrderedDict(conv=_unit(c_in, c_trans, 1, shortcut, style))
            if i < n_stages:
                transition["pool"] = nn.AvgPool2d(2, 2)
            features[f"transition{i}"] = nn.Sequential(transition)
            c_in = c_trans
            self.memory_stages[f"denseblock{i}"] = [f"features.denseblock{i}", f"features.transition{i}"]
        self.features = nn.Sequential(features)
        self.head_norm = nn.BatchNorm2d(c_in) if style.head_norm else nn.Identity()
        self.relu = nn.ReLU()  # not in place: in the plain twin its input is the last unit's ReLU output
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        self.memory_stages["head"] = ["head_norm", "relu", "avgpool", "classifier"]
        init_weights(self, conv_mode="fan_in")
        init_shortcuts(self, style)
        apply_stem_norm(self, style)

    def forward(self, x):
        x = self.relu(self.head_norm(self.features(x)))
        return self.classifier(self.avgpool(x).flatten(1))


@register_model()
def densenet121_dero(num_classes: int = 1000, style=None):
    """DenseNet121 in DERO form: a chain of DERO units of constant width per stage."""
    return DeroDenseNet(num_classes, shortcut=True, style=style)


@register_model()
def densenet121_plain(num_classes: int = 1000, style=None):
    """Plain twin of DenseNet121-DERO: the same units with no shortcuts."""
    return DeroDenseNet(num_classes, shortcut=False, style=style)
