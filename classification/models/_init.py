"""Weight initialisation shared by the DERO/plain families (torchvision's schemes, plus zero conv biases)."""

from __future__ import annotations

from typing import Optional

from torch import nn


def init_weights(model: nn.Module, conv_mode: str = "fan_out", linear_std: Optional[float] = None,
                 linear: bool = True) -> None:
    """Kaiming-normal convs (ReLU gain, ``conv_mode`` fan), zero conv biases, BatchNorm at (1, 0).

    Linear layers: ``linear_std`` draws the weights from N(0, std) (MobileNet); ``linear`` zeroes their
    biases (DenseNet, MobileNet); ``linear=False`` leaves PyTorch's default (ResNet).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear:
            if linear_std is not None:
                nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)
