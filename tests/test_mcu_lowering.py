"""Export lowering of layers the converter would leave float, and operators TFLite Micro refuses."""

from __future__ import annotations

import torch
from mcu_support import require_mcu_packages
from torch import nn

require_mcu_packages()

from yolo_dero.mcu import export_tflite  # noqa: E402
from yolo_dero.mcu.export import lower_for_export, standalone_batchnorms  # noqa: E402
from yolo_dero.mcu.reports import randomize_batchnorm  # noqa: E402


class PreActivation(nn.Module):
    """DenseNet's order: BatchNorm -> ReLU -> conv on a concatenation (the BatchNorm follows no conv)."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)          # after a conv: the converter folds it
        self.norm = nn.BatchNorm2d(16)        # after a concat: standalone
        self.conv1 = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = torch.relu(self.bn0(self.conv0(x)))
        return self.conv1(torch.relu(self.norm(torch.cat([x, y], 1))))


def test_standalone_batchnorms_become_int8_depthwise_convs(tmp_path):
    model = randomize_batchnorm(PreActivation()).eval()
    assert standalone_batchnorms(model, 8) == [model.norm]
    low, counts = lower_for_export(model, in_channels=8)
    assert counts["bn_depthwise"] == 1 and isinstance(low.bn0, nn.BatchNorm2d)
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        assert torch.allclose(low(x), model(x), atol=1e-5)
    r = export_tflite(model, 16, tmp_path / "m.tflite", in_channels=8, num_calib=2)  # the full-integer check passes
    assert r.op_counts.get("DEPTHWISE_CONV_2D") == 1


class WideConcat(nn.Module):
    """torchvision's DenseNet concatenates every earlier feature map in one operator."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, 1) for _ in range(11))

    def forward(self, x):
        return torch.cat([c(x) for c in self.convs], 1)


def test_a_concat_tflm_refuses_is_named(tmp_path):
    r = export_tflite(WideConcat(), 8, tmp_path / "c.tflite", in_channels=2, num_calib=2)
    assert any("CONCATENATION has 11 inputs" in n for n in r.notes), r.notes
