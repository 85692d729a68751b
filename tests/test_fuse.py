"""Eager inference fusion of the seed's DERO form: every BatchNorm folded away, the output unchanged."""

import copy

import pytest
import torch
from torch import nn

from classification.models import get_model
from yolo_dero.nn import DeroPool, DeroUnit, FoldedUnit, FusedPool, FusedUnit, exportable_shortcuts, fuse_units

from test_reparam import UNIT_CASES, _randomize_bn, _rel_err

FUSE_CASES = UNIT_CASES + [dict(c_in=16, c_out=8, k=3, s=2)]  # strided sum-pool, then a fold


@pytest.mark.parametrize("case", FUSE_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_fused_seed_unit_equals_the_unit(case, norm):
    for shortcut_bn, shrink in (("all", "fold"), ("changes", "fold"), ("changes", "slice"), ("changes", "signed"),
                                ("mean", "fold")):
        for act in ("relu", "silu"):
            unit = _randomize_bn(DeroUnit(**case, act=act, norm=norm, shortcut_bn=shortcut_bn,
                                          shortcut_shrink=shrink))
            fused = fuse_units(nn.Sequential(copy.deepcopy(unit)))[0]
            assert isinstance(fused, FusedUnit)
            assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
            # odd and even sizes, twice each: the border map is cached per size and must not leak across sizes
            for size in (15, 16, 15, 16):
                x = torch.randn(2, case["c_in"], size, size)
                with torch.no_grad():
                    y = unit(x)
                    assert _rel_err(y, fused(x)) < 1e-5, (norm, shortcut_bn, shrink, act, size)
                    with exportable_shortcuts():  # the out-of-place path used while a tracer captures the graph
                        assert _rel_err(y, fused(x)) < 1e-5, (norm, shortcut_bn, shrink, act, size, "export")


def test_fused_border_is_what_zero_padding_after_bn_in_needs():
    """Folding bn_in's shift into the bias alone is wrong at the border: the fused unit must correct it there."""
    unit = _randomize_bn(DeroUnit(4, 4, k=3, act="relu", shortcut=False))
    fused = fuse_units(nn.Sequential(copy.deepcopy(unit)))[0]
    assert fused.has_border
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        uncorrected = fused.act(fused.conv(x))
        y = unit(x)
        assert not torch.allclose(uncorrected[..., 0, :], y[..., 0, :], atol=1e-3)
        assert torch.allclose(uncorrected[..., 1:-1, 1:-1], y[..., 1:-1, 1:-1], atol=1e-5)
        assert _rel_err(y, fused(x)) < 1e-5


def test_fused_pool_and_foldable_units():
    pool = _randomize_bn(DeroPool(8))
    linear = _randomize_bn(DeroUnit(16, 8, k=1, act=None))  # a linear unit folds into one conv
    model = fuse_units(nn.Sequential(copy.deepcopy(pool), copy.deepcopy(linear)))
    assert isinstance(model[0], FusedPool) and isinstance(model[1], FoldedUnit)
    x = torch.randn(1, 8, 17, 17)
    x16 = torch.randn(1, 16, 9, 9)
    with torch.no_grad():
        assert _rel_err(pool(x), model[0](x)) < 1e-5
        assert _rel_err(linear(x16), model[1](x16)) < 1e-5


@pytest.mark.parametrize("name,style", [("resnet34_dero", "seed"), ("mcunet_v4_dero", "seed"),
                                        ("mcunet_v4_dero", "default"), ("mcunet_v4_dero", "slice"),
                                        ("densenet121_dero", "default")])
def test_fused_family_equals_unfused(name, style):
    torch.manual_seed(0)
    model = _randomize_bn(get_model(name, num_classes=10, style=style))
    fused = fuse_units(copy.deepcopy(model))
    assert not any(isinstance(m, (DeroUnit, DeroPool)) for m in fused.modules())
    x = torch.randn(2, 3, 40, 40)
    with torch.inference_mode():
        assert _rel_err(model(x), fused(x)) < 1e-5


def test_yolo_fuse_fuses_the_seed_form():
    from yolo_dero.ultra import DeroDetectionModel

    torch.manual_seed(0)
    model = _randomize_bn(DeroDetectionModel("cfg/yolov5n-dero.yaml", nc=3, verbose=False))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)[0]
        fused = copy.deepcopy(model).fuse(verbose=False)
        assert _rel_err(y, fused(x)[0]) < 1e-5
    assert not any(isinstance(m, (DeroUnit, nn.BatchNorm2d)) for m in fused.modules())
    assert any(isinstance(m, FusedUnit) for m in fused.modules())


@pytest.fixture
def no_tf32():
    """Full float32 convolutions and matmuls on the GPU for the tolerance checks, restored afterwards (monkeypatch
    cannot: ``torch.backends.cuda.matmul`` computes the attribute, and its undo would delete it)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cfg", ["cfg/yolov5n-dero.yaml", "cfg/yolov5n-dero-seed.yaml", "cfg/yolov5n-dero-rep.yaml",
                                 "cfg/yolov5n-dero-rep-c3.yaml"])
def test_yolo_fuse_on_cuda(cfg, no_tf32):
    """Ultralytics fuses the model on the training device before its final validation. Fusing on a GPU failed
    there (an H100 study run: the folds built helper tensors on the CPU); the fused model stays on the GPU and
    equals the unfused one."""
    from yolo_dero.ultra import DeroDetectionModel

    torch.manual_seed(0)
    model = _randomize_bn(DeroDetectionModel(cfg, nc=3, verbose=False)).cuda().eval()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        y = model(x)[0]
        fused = copy.deepcopy(model).fuse(verbose=False)
        assert {t.device.type for t in [*fused.parameters(), *fused.buffers()]} == {"cuda"}
        assert _rel_err(y, fused(x)[0]) < 1e-4  # cuDNN's algorithms round differently: 3.2e-5 for -rep on an H100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name,style", [("mcunet_v4_dero", "default"), ("resnet34_dero", "rep")])
def test_fuse_and_reparameterize_on_cuda(name, style, no_tf32):
    from yolo_dero.nn import reparameterize

    torch.manual_seed(0)
    model = _randomize_bn(get_model(name, num_classes=10, style=style)).cuda().eval()
    x = torch.randn(2, 3, 40, 40, device="cuda")
    with torch.inference_mode():
        y = model(x)
        for out in (fuse_units(copy.deepcopy(model)), reparameterize(copy.deepcopy(model), strict=False)):
            assert {t.device.type for t in [*out.parameters(), *out.buffers()]} == {"cuda"}
            assert _rel_err(y, out(x)) < 1e-4


@pytest.mark.parametrize("k, s", [(3, 1), (7, 2)])
def test_fused_and_lowered_depthwise_unit_without_bias_equal_the_unit(k, s):
    """``depthwise_bias=False`` (the bias-free depthwise conv of style ``project-slice-nodwbias``): the fused and
    the exported forms get their bias from bn_in's shift alone, border included."""
    from yolo_dero.mcu.export import lower_for_export

    unit = _randomize_bn(DeroUnit(8, 8, k=k, s=s, groups=8, act="relu6", shortcut_bn="changes",
                                  depthwise_bias=False))
    assert unit.conv.bias is None
    fused = fuse_units(nn.Sequential(copy.deepcopy(unit)))[0]
    lowered, _ = lower_for_export(nn.Sequential(copy.deepcopy(unit)))
    for size in (15, 16):
        x = torch.randn(2, 8, size, size)
        with torch.no_grad():
            y = unit(x)
            assert _rel_err(y, fused(x)) < 1e-5, size
            assert _rel_err(y, lowered(x)) < 1e-5, size
