"""TFLite-style SAME padding for strided operators: the model option (torch) and its export (no PAD operator)."""

import copy

import pytest
import torch
from test_reparam import _randomize_bn, _rel_err
from torch import nn

from classification.models import get_model
from yolo_dero.nn import DeroPool, DeroUnit, fuse_units, reparameterize
from yolo_dero.nn.padding import same_pads, to_same_padding, uses_same_padding


def test_same_pads_are_tensorflows():
    # TensorFlow: total = max((ceil(n / s) - 1) * s + k - n, 0), the extra pixel after
    assert same_pads(176, 7, 2) == (2, 3)
    assert same_pads(8, 3, 2) == (0, 1)
    assert same_pads(11, 3, 2) == (1, 1)   # odd sizes: symmetric, as PyTorch's
    assert same_pads(128, 6, 2) == (2, 2)  # YOLOv5's 6x6/2 stem
    assert same_pads(9, 1, 2) == (0, 0)
    assert same_pads(16, 3, 1) == (1, 1)


def test_unit_pads_like_same_and_its_shortcut_reads_the_same_window():
    unit = _randomize_bn(DeroUnit(4, 8, k=3, s=2, norm="post", act=None, shortcut=False))
    same = to_same_padding(copy.deepcopy(unit))
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        # SAME pads (0, 1): output 0 reads rows/columns 0..2, not PyTorch's -1..1
        ref = unit.bn(nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), unit.conv.weight, None, 2))
        assert torch.allclose(same(x), ref, atol=1e-5)
        assert not torch.allclose(unit(x), ref, atol=1e-3)
    dero = _randomize_bn(DeroUnit(4, 8, k=3, s=2, norm="post", act_after_add=True))
    to_same_padding(dero)
    with torch.no_grad():
        sc = dero.shortcut(nn.functional.pad(x, (0, 1, 0, 1)))
        branch = dero.bn(dero.conv(nn.functional.pad(x, (0, 1, 0, 1))))
        assert torch.allclose(dero(x), torch.relu(branch + sc), atol=1e-5)


@pytest.mark.parametrize("name,style", [("mcunet_v4_dero", "rep"), ("densenet121_dero", "rep"),
                                        ("resnet34_dero", "seed"), ("resnet34_dero", "rep"), ("mcunet_v4", None),
                                        ("resnet34", None)])
def test_same_padded_models_keep_shapes_and_fold_or_fuse_exactly(name, style):
    torch.manual_seed(0)
    model = get_model(name, num_classes=10, **({"style": style} if style else {})).eval()
    same = to_same_padding(copy.deepcopy(model))
    assert uses_same_padding(same) and not uses_same_padding(model)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        y = same(x)
        assert y.shape == model(x).shape
        assert _rel_err(model(x), y) > 1e-4  # the windows really moved
        same = _randomize_bn(same)
        y = same(x)
        assert _rel_err(y, fuse_units(copy.deepcopy(same))(x)) < 1e-5
        if style == "rep":
            assert _rel_err(y, reparameterize(copy.deepcopy(same))(x)) < 1e-5


def test_dero_pool_pads_max_with_minus_infinity_and_sum_with_zeros():
    pool = DeroPool(4, k=3, s=2, shortcut_bn=False)
    to_same_padding(pool)
    x = -torch.rand(1, 4, 8, 8) - 1  # all negative: a zero-padded max-pool would return 0 at the border
    y = pool(x)
    padded_inf = nn.functional.pad(x, (0, 1, 0, 1), value=float("-inf"))
    padded_zero = nn.functional.pad(x, (0, 1, 0, 1))
    expect = nn.functional.max_pool2d(padded_inf, 3, 2) + nn.functional.avg_pool2d(padded_zero, 3, 2) * 9
    assert torch.allclose(y, expect, atol=1e-5)


def test_yolo_conv_blocks_get_same_padding_through_fuse():
    from yolo_dero.ultra import DeroDetectionModel

    torch.manual_seed(0)
    model = DeroDetectionModel("cfg/yolov5n.yaml", nc=3, verbose=False).eval()
    same = to_same_padding(copy.deepcopy(model))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stem = model.model[0](x)  # 6x6/2 stem: PyTorch's (2, 2) is SAME already; layer 1 (3x3/2) moves
        assert torch.equal(stem, same.model[0](x))
        assert _rel_err(model.model[1](stem), same.model[1](stem)) > 1e-4
        same = _randomize_bn(same)
        y = same(x)[0]
        fused = copy.deepcopy(same).fuse(verbose=False)  # Ultralytics folds Conv + BatchNorm into a new conv
        assert _rel_err(y, fused(x)[0]) < 1e-5
