"""The re-parameterizable DERO unit: a trained unit (and a whole model) folds exactly into plain convolutions."""

import copy

import pytest
import torch
from torch import nn

from classification.models import get_model
from yolo_dero.nn import DeroPool, DeroUnit, FoldedUnit, NotFoldableError, fold_unit, reparameterize


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial inference statistics, so a fold that ignores a BatchNorm's mean, variance or affine part fails."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


UNIT_CASES = [
    dict(c_in=8, c_out=8, k=3),                      # identity shortcut
    dict(c_in=8, c_out=16, k=3, s=2),                # strided sum-pool + zero-padded channels
    dict(c_in=16, c_out=6, k=1),                     # fold (16 -> 6: groups of 6 with zero padding)
    dict(c_in=8, c_out=8, k=7, s=2, groups=8),       # depthwise 7x7 stride 2 (MCUNet)
    dict(c_in=8, c_out=12, k=1, s=2),                # strided 1x1: an s x s window in ceil mode
    dict(c_in=3, c_out=16, k=6, s=2, p=2),           # YOLOv5's 6x6/2 stem (even kernel)
]


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_folded_unit_equals_the_unit(norm, case):
    for shortcut_bn, shrink in (("all", "fold"), ("changes", "fold"), ("changes", "slice"), ("changes", "signed"),
                                ("mean", "fold"), ("mean", "slice"), ("mean", "signed")):
        for act in ("relu", "silu", None):
            unit = _randomize_bn(DeroUnit(**case, act=act, norm=norm, shortcut_bn=shortcut_bn, act_after_add=True,
                                          shortcut_shrink=shrink))
            folded = fold_unit(unit)
            assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
            for size in (15, 16):  # odd sizes exercise the borders and the ceil-mode window
                x = torch.randn(2, case["c_in"], size, size)
                y = unit(x)
                assert folded(x).shape == y.shape
                assert _rel_err(y, folded(x)) < 1e-5, (norm, shortcut_bn, shrink, act, size)


def test_pre_norm_unit_pads_before_bn_in():
    """The conv of a re-parameterizable pre-norm unit sees bn_in of a zero-padded x (what the fold needs), which
    differs at the border from zero-padding bn_in(x)."""
    unit = _randomize_bn(DeroUnit(4, 4, k=3, norm="pre", act_after_add=True, shortcut=False, act=None))
    assert unit.conv.padding == (0, 0) and unit.pad == 1
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        pad_first = unit.conv(unit.bn_in(nn.functional.pad(x, (1, 1, 1, 1))))
        pad_after = nn.functional.conv2d(unit.bn_in(x), unit.conv.weight, unit.conv.bias, padding=1)
        assert torch.allclose(unit(x), pad_first, atol=1e-6)
        assert not torch.allclose(pad_first[..., 0, :], pad_after[..., 0, :], atol=1e-3)  # borders differ
        assert torch.allclose(pad_first[..., 1:-1, 1:-1], pad_after[..., 1:-1, 1:-1], atol=1e-5)


def test_units_that_cannot_fold_say_why():
    seed_form = DeroUnit(8, 8, k=3, act="relu")  # activation before the add
    with pytest.raises(NotFoldableError, match="activation sits on the branch"):
        fold_unit(seed_form)
    padded_after_bn_in = DeroUnit(8, 8, k=3, act="relu", shortcut=False)  # plain, pre-norm, pads after bn_in
    with pytest.raises(NotFoldableError, match="zero-pads after bn_in"):
        fold_unit(padded_after_bn_in)
    model = nn.Sequential(DeroUnit(8, 8, k=1, act="relu", shortcut=False), seed_form)
    with pytest.raises(NotFoldableError, match="^1: "):
        reparameterize(copy.deepcopy(model))
    loose = reparameterize(copy.deepcopy(model), strict=False)  # folds what it can, leaves the rest
    assert isinstance(loose[0], FoldedUnit) and isinstance(loose[1], DeroUnit)
    with pytest.raises(NotFoldableError, match="pool with a shortcut"):
        reparameterize(nn.Sequential(DeroPool(8)))


FAMILIES = [("resnet34_dero", "resnet34_plain", 32), ("resnet50_dero", "resnet50_plain", 32),
            ("mcunet_v4_dero", "mcunet_v4_plain", 48), ("densenet121_dero", "densenet121_plain", 32)]


def _conv_shapes(model: nn.Module):
    return [(tuple(m.weight.shape), m.stride, m.padding, m.groups) for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("dero_name,plain_name,size,style",
                         [f + ("rep",) for f in FAMILIES] + [("mcunet_v4_dero", "mcunet_v4_plain", 48, "rep-slice"),
                                                             ("resnet50_dero", "resnet50_plain", 32, "rep-mean")],
                         ids=[f[0] for f in FAMILIES] + ["mcunet_v4_dero-slice", "resnet50_dero-mean"])
def test_reparameterized_family_equals_unfused_and_is_the_plain_network(dero_name, plain_name, size, style):
    torch.manual_seed(0)
    dero = _randomize_bn(get_model(dero_name, num_classes=10, style=style))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        y = dero(x)
        folded = reparameterize(copy.deepcopy(dero))
        assert _rel_err(y, folded(x)) < 1e-5
    assert not any(isinstance(m, (DeroUnit, DeroPool)) for m in folded.modules())
    # the deployed DERO network is its plain twin's network: the same convolutions, nothing else
    plain = reparameterize(_randomize_bn(get_model(plain_name, num_classes=10, style="rep")))
    assert _conv_shapes(folded) == _conv_shapes(plain)
    assert [type(m) for m in folded.modules()] == [type(m) for m in plain.modules()]


def test_rep_style_keeps_pools_plain_and_acts_after_the_add():
    model = get_model("resnet34_dero", num_classes=10, style="rep")
    assert model.stem.pool.shortcut is None
    assert all(u.act_after_add and u.shortcut is not None for u in model.modules() if isinstance(u, DeroUnit))


@pytest.mark.parametrize("dero_cfg, plain_cfg", [("yolov5n-dero-rep.yaml", "yolov5n-plain-rep.yaml"),
                                                 ("yolov5n-dero-rep-c3.yaml", "yolov5n-plain-rep-c3.yaml"),
                                                 ("yolov5n-dero-rep-c3-mean.yaml", "yolov5n-plain-rep-c3.yaml")])
def test_reparameterized_yolo_equals_unfused_and_fuse_folds_every_unit(dero_cfg, plain_cfg):
    from yolo_dero.ultra import DeroDetectionModel

    torch.manual_seed(0)
    model = _randomize_bn(DeroDetectionModel(f"cfg/{dero_cfg}", nc=3, verbose=False))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)[0]
        fused = copy.deepcopy(model).fuse(verbose=False)
        assert _rel_err(y, fused(x)[0]) < 1e-5
    assert not any(isinstance(m, (DeroUnit, nn.BatchNorm2d)) for m in fused.modules())
    plain = DeroDetectionModel(f"cfg/{plain_cfg}", nc=3, verbose=False).fuse(verbose=False)
    assert _conv_shapes(fused) == _conv_shapes(plain)


def test_mean_shortcuts_average_without_a_batchnorm():
    """The "mean" shortcut averages what S sums (a 3x3/2 window of 9 pixels and a fold of 2 channel groups: 18 terms),
    at the scale of x, with no BatchNorm: a constant input gives a constant shortcut of the same value."""
    from yolo_dero.nn import DERO_STYLES
    from yolo_dero.nn.dero import FixedGain, Shortcut

    sc = Shortcut(16, 8, k=3, s=2, bn="mean")
    assert isinstance(sc.bn, FixedGain) and sc.bn.gain == pytest.approx(1 / 18)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in sc.modules()) and not list(sc.parameters())
    x = torch.full((1, 16, 9, 9), 2.0)
    assert torch.allclose(sc(x)[..., 1:-1, 1:-1], torch.full((1, 8, 3, 3), 2.0))  # away from the zero padding
    for c_in, s in ((16, 1), (3, 2)):  # a fold alone on the avg-pool path, a few channels on avg_pool2d
        y = Shortcut(c_in, 8 if c_in == 16 else 16, k=1 if s == 1 else 6, s=s, p=None if s == 1 else 2, bn="mean")(
            torch.full((1, c_in, 12, 12), 2.0))
        assert torch.allclose(y[:, :min(c_in, 8), 2:-2, 2:-2], torch.tensor(2.0))
    assert isinstance(Shortcut(8, 8, k=3, bn="mean").bn, nn.Identity)  # an identity stays exact
    assert DERO_STYLES["rep-mean"].shortcut_norm == "mean"


@pytest.mark.parametrize("case", [dict(c_in=8, c_out=8, k=3), dict(c_in=8, c_out=16, k=3, s=2),
                                  dict(c_in=8, c_out=8, k=5, s=2, groups=8), dict(c_in=8, c_out=8, k=1)],
                         ids=["identity", "strided-growth", "depthwise-strided", "1x1"])
def test_repvgg_unit_folds_exactly(case):
    from yolo_dero.nn import DERO_STYLES

    unit = _randomize_bn(DeroUnit(**case, act="relu", **DERO_STYLES["repvgg"].unit_kwargs()))
    assert unit.branch_1x1 is not None
    assert (unit.shortcut is not None) == (case["c_in"] == case["c_out"] and case.get("s", 1) == 1)
    x = torch.randn(2, case["c_in"], 15, 15)
    with torch.no_grad():
        assert _rel_err(unit(x), fold_unit(unit)(x)) < 1e-5


@pytest.mark.parametrize("name", ["resnet34_dero", "mcunet_v4_dero"])
def test_repvgg_twin_folds_into_the_plain_network(name):
    torch.manual_seed(0)
    model = _randomize_bn(get_model(name, num_classes=10, style="repvgg"))
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        folded = reparameterize(copy.deepcopy(model))
        assert _rel_err(model(x), folded(x)) < 1e-5
    plain = reparameterize(_randomize_bn(get_model(name.replace("dero", "plain"), num_classes=10, style="rep")))
    assert _conv_shapes(folded) == _conv_shapes(plain)


def test_branch_gain_zero_starts_units_as_their_shortcut():
    from yolo_dero.nn import get_style

    model = get_model("resnet34_dero", num_classes=10, style=get_style("rep", branch_gain=0.0))
    units = [m for m in model.modules() if isinstance(m, DeroUnit) and m.shortcut is not None]
    assert units and all(float(u.bn.weight.detach().abs().max()) == 0.0 for u in units)
    unit = units[1].eval()  # an identity unit: y = relu(0 + x) = x for x >= 0
    x = torch.rand(1, unit.c_in, 8, 8)
    with torch.no_grad():
        assert torch.allclose(unit(x), x)


def test_activation_anneal_blends_the_identity_and_blocks_folding_until_it_ends():
    """``(1 - t) * act(z) + t * z``: t = 1 is the unit without its activation, t = 0 the unit as built (the only
    value that folds or fuses); an in-place activation does not corrupt the blend."""
    from yolo_dero.nn import fuse_units, set_activation_linearity

    torch.manual_seed(0)
    for act in ("relu6", True):  # True: an in-place ReLU
        model = _randomize_bn(nn.Sequential(
            DeroUnit(8, 16, k=3, s=2, act=act, norm="post", act_after_add=True, shortcut_bn="changes"),
            DeroUnit(16, 16, k=1, act=None, norm="post", act_after_add=True)))
        unit = model[0]
        linear = copy.deepcopy(unit)
        linear.act = nn.Identity()
        x = torch.randn(2, 8, 9, 9) * 3
        built, pre = unit(x), linear(x)
        assert (built != pre).any()  # the activation clips something at this scale
        assert set_activation_linearity(model, 1.0) == 1  # the linear unit has nothing to blend
        assert torch.allclose(unit(x), pre, atol=1e-6)
        set_activation_linearity(model, 0.25)
        assert torch.allclose(unit(x), 0.75 * built + 0.25 * pre, atol=1e-5)
        with pytest.raises(NotFoldableError, match="anneal"):
            reparameterize(copy.deepcopy(model))
        with pytest.raises(ValueError, match="anneal"):
            fuse_units(copy.deepcopy(model))
        set_activation_linearity(model, 0.0)
        assert torch.equal(unit(x), built)
        assert _rel_err(model(x), reparameterize(copy.deepcopy(model))(x)) < 1e-5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_activation_linearity(model, 1.5)
