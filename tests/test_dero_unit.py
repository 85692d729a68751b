"""The DERO unit's math, pinned against hand computations."""

import copy
import itertools

import pytest
import torch
from torch import nn

from yolo_dero.nn import DeroPool, DeroUnit, Shortcut, exportable_shortcuts, fold_channels

from test_reparam import _rel_err


def _neutral_bn(module: nn.Module) -> None:
    """Make every BatchNorm an identity in eval mode (mean 0, var 1, weight 1, bias 0, eps 0)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    module.eval()


def test_shortcut_stride2_channel_growth_by_hand():
    x = torch.arange(1 * 2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    sc = Shortcut(2, 3, k=3, s=2, bn=False)
    y = sc(x)
    assert y.shape == (1, 3, 2, 2)
    # 3x3 sum pool, stride 2, padding 1, zeros outside: output (0,0) covers rows/cols {0,1} (and padding)
    c0 = x[0, 0]
    assert y[0, 0, 0, 0] == c0[0:2, 0:2].sum()
    assert y[0, 0, 0, 1] == c0[0:2, 1:4].sum()
    assert y[0, 0, 1, 1] == c0[1:4, 1:4].sum()
    assert y[0, 1, 1, 0] == x[0, 1, 1:4, 0:2].sum()
    # the grown channel is zero
    assert torch.count_nonzero(y[0, 2]) == 0


def test_shortcut_strided_1x1_uses_stride_window_and_matches_conv_size():
    x = torch.ones(1, 4, 7, 7)
    sc = Shortcut(4, 4, k=1, s=2, bn=False)
    conv = nn.Conv2d(4, 4, 1, 2)
    y = sc(x)
    assert y.shape == conv(x).shape == (1, 4, 4, 4)
    assert y[0, 0, 0, 0] == 4.0  # a full 2x2 window of ones
    assert y[0, 0, 3, 3] == 1.0  # the ceil-mode corner sees one pixel


def test_fold_shrink_sums_groups_with_zero_padding():
    x = torch.arange(5, dtype=torch.float32).view(1, 5, 1, 1)  # channels 0..4
    y = fold_channels(x, 2)  # pad to 6 -> groups [0,1], [2,3], [4,0]
    assert y.flatten().tolist() == [0 + 2 + 4, 1 + 3 + 0]
    assert fold_channels(x, 5) is x


def test_dero_unit_identity_shortcut_by_hand():
    torch.manual_seed(0)
    unit = DeroUnit(4, 4, k=3, s=1, act="relu")
    _neutral_bn(unit)
    x = torch.randn(2, 4, 6, 6)
    expected = torch.relu(unit.conv(x)) + x
    torch.testing.assert_close(unit(x), expected)


def test_dero_unit_stride2_growth_by_hand():
    torch.manual_seed(0)
    unit = DeroUnit(2, 4, k=3, s=2, act="relu6")
    _neutral_bn(unit)
    x = torch.randn(1, 2, 5, 5)
    y = unit(x)
    assert y.shape == (1, 4, 3, 3)
    conv_branch = torch.clamp(unit.conv(x), 0, 6)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(3):
        for j in range(3):
            window = xp[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum(dim=(1, 2))
            expected = conv_branch[0, :, i, j] + torch.cat([window, torch.zeros(2)])
            torch.testing.assert_close(y[0, :, i, j], expected)


def test_dero_unit_shrink_fold_linear_by_hand():
    torch.manual_seed(0)
    unit = DeroUnit(6, 2, k=1, act=None)
    _neutral_bn(unit)
    x = torch.randn(1, 6, 3, 3)
    fold = x[:, 0:2] + x[:, 2:4] + x[:, 4:6]
    torch.testing.assert_close(unit(x), unit.conv(x) + fold)


def test_dero_unit_shrink_slice_keeps_the_first_channels_unnormalized():
    torch.manual_seed(0)
    unit = DeroUnit(6, 2, k=1, act=None, shortcut_bn="changes", shortcut_shrink="slice")
    assert isinstance(unit.shortcut.bn, nn.Identity)  # a slice keeps the statistics of the channels it keeps
    _neutral_bn(unit)
    x = torch.randn(1, 6, 3, 3)
    torch.testing.assert_close(unit(x), unit.conv(x) + x[:, :2])
    assert unit.shortcut.target_channels().tolist() == [0, 1, -1, -1, -1, -1]
    strided = DeroUnit(6, 2, k=3, s=2, act=None, shortcut_bn="changes", shortcut_shrink="slice")
    assert isinstance(strided.shortcut.bn, nn.BatchNorm2d)  # the sum-pool still changes them
    # growth and identity have nothing to slice: the option leaves them as they are
    assert DeroUnit(2, 6, k=1, shortcut_shrink="slice").shortcut.target_channels().tolist() == [0, 1]
    with pytest.raises(ValueError, match="'fold', 'slice' or 'signed'"):
        DeroUnit(6, 2, k=1, shortcut_shrink="drop")


def test_signed_shortcuts_carry_x_as_x_and_minus_x_through_relu6():
    """Growth appends -x after x, a shrink subtracts the second copy: past ReLU6s the pair still gives back
    clip(x, -6, 6), where a slice of relu6(x) alone loses the negative half."""
    torch.manual_seed(0)
    expand = DeroUnit(3, 8, k=1, act="relu6", shortcut_bn="changes", shortcut_shrink="signed")
    assert isinstance(expand.shortcut.bn, nn.Identity)
    x = 4 * torch.randn(2, 3, 5, 5)
    s = expand.shortcut(x)
    torch.testing.assert_close(s, torch.cat([x, -x, torch.zeros(2, 2, 5, 5)], 1))
    project = DeroUnit(8, 3, k=1, act=None, shortcut_bn="changes", shortcut_shrink="signed")
    assert isinstance(project.shortcut.bn, nn.Identity)
    torch.testing.assert_close(project.shortcut(torch.relu(s).clamp(max=6)), x.clamp(-6, 6))
    assert sorted(project.shortcut.channel_map()) == [(0, 0, 1.0), (1, 1, 1.0), (2, 2, 1.0),
                                                      (3, 0, -1.0), (4, 1, -1.0), (5, 2, -1.0)]
    # not room for a whole copy: -x for as many channels as fit, and the shrink subtracts only those
    torch.testing.assert_close(Shortcut(3, 5, shrink="signed", bn=False)(x), torch.cat([x, -x[:, :2]], 1))
    y = torch.randn(2, 5, 5, 5)
    torch.testing.assert_close(Shortcut(5, 3, shrink="signed", bn=False)(y),
                               y[:, :3] - torch.cat([y[:, 3:], torch.zeros(2, 1, 5, 5)], 1))


def test_shortcut_bn_is_applied():
    unit = DeroUnit(3, 3, k=1, act=None)
    unit.eval()
    with torch.no_grad():
        unit.conv.weight.zero_()
        unit.conv.bias.zero_()
        unit.shortcut.bn.weight.fill_(2.0)
        unit.shortcut.bn.bias.fill_(1.0)
    x = torch.randn(1, 3, 2, 2)
    torch.testing.assert_close(unit(x), 2 * x / torch.sqrt(torch.tensor(1 + 1e-5)) + 1)


def test_plain_twin_has_no_shortcut_parameters():
    dero = DeroUnit(8, 16, k=3, s=2)
    plain = DeroUnit(8, 16, k=3, s=2, shortcut=False)
    names = {n for n, _ in plain.named_parameters()}
    assert not any(n.startswith("shortcut") for n in names)
    assert sum(p.numel() for p in dero.parameters()) - sum(p.numel() for p in plain.parameters()) == 2 * 16
    plain.eval()
    x = torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(plain(x), torch.relu(plain.conv(plain.bn_in(x))))


def test_drop_path_drops_only_the_conv_branch_in_training():
    torch.manual_seed(0)
    unit = DeroUnit(4, 4, k=3, drop_path=0.999, shortcut_bn=False)
    unit.train()
    x = torch.randn(64, 4, 4, 4)
    y = unit(x)
    # nearly every sample keeps only the shortcut, which is x itself here
    same = [(y[i] == x[i]).all().item() for i in range(64)]
    assert sum(same) >= 60
    unit.eval()
    assert not torch.equal(unit(x), x)


def test_dero_maxpool_unit_by_hand():
    x = torch.randn(1, 3, 8, 8)
    pool = DeroPool(3, k=3, s=2, shortcut_bn=False)
    expected = nn.functional.max_pool2d(x, 3, 2, 1) + nn.functional.avg_pool2d(
        x, 3, 2, 1, divisor_override=1)
    torch.testing.assert_close(pool(x), expected)
    assert sum(p.numel() for p in DeroPool(3, shortcut=False).parameters()) == 0


def test_depthwise_unit_and_backward():
    unit = DeroUnit(8, 8, k=7, s=2, groups=8, act="relu6")
    x = torch.randn(2, 8, 11, 11, requires_grad=True)
    y = unit(x)
    assert y.shape == (2, 8, 6, 6)
    y.sum().backward()
    assert all(p.grad is not None for p in unit.parameters())


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown activation"):
        DeroUnit(2, 2, act="swishy")


def test_exportable_shortcut_is_the_same_math():
    torch.manual_seed(0)
    cases = [(3, 16, 6, 2, 2), (16, 32, 3, 2, 1), (32, 16, 1, 1, 0), (24, 16, 1, 1, 0), (8, 12, 1, 2, 0),
             (40, 16, 3, 2, 1)]
    for (ci, co, k, s, p), shrink in itertools.product(cases, ("fold", "slice", "signed")):
        m = Shortcut(ci, co, k, s, p, shrink=shrink).eval()
        m.bn.running_mean.uniform_(-1, 1)
        for h in (15, 16):
            x = torch.randn(2, ci, h, h)
            with torch.no_grad():
                ref = m(x)
                with exportable_shortcuts():
                    alt = m(x)
            assert torch.allclose(ref, alt, atol=1e-5), (ci, co, k, s, p, shrink, h)
    assert Shortcut.exportable is False  # restored


def test_style_changes_keeps_identity_and_zero_pad_shortcuts_exact():
    """'changes': a BatchNorm only where S sum-pools or folds; identity and growth pass x through unscaled."""
    assert isinstance(DeroUnit(8, 8, k=3, shortcut_bn="changes").shortcut.bn, nn.Identity)
    assert isinstance(DeroUnit(8, 16, k=1, shortcut_bn="changes").shortcut.bn, nn.Identity)
    assert isinstance(DeroUnit(8, 8, k=3, s=2, shortcut_bn="changes").shortcut.bn, nn.BatchNorm2d)
    assert isinstance(DeroUnit(16, 8, k=1, shortcut_bn="changes").shortcut.bn, nn.BatchNorm2d)
    assert isinstance(DeroPool(8, shortcut_bn="changes").shortcut.bn, nn.BatchNorm2d)
    assert isinstance(DeroUnit(8, 8, k=3, shortcut_bn="all").shortcut.bn, nn.BatchNorm2d)
    # an exact identity: the gradient of the shortcut path is 1 whatever the statistics of x
    unit = DeroUnit(4, 4, k=3, act="relu", shortcut_bn="changes")
    nn.init.zeros_(unit.conv.weight)
    nn.init.zeros_(unit.conv.bias)
    x = (torch.randn(2, 4, 5, 5) * 7 + 3).requires_grad_()
    y = unit(x)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    with pytest.raises(ValueError, match="changes"):
        DeroUnit(4, 4, shortcut_bn="sometimes")


def test_shrink_styles_reach_the_units():
    from yolo_dero.nn import DeroStyle, get_style

    default = get_style()
    assert default.shortcut_shrink == "slice" and default.unit_kwargs()["shortcut_shrink"] == "slice"
    # 'projection': the unit keyword stays the fold; builders slice their inverted-bottleneck projections
    projection = get_style("project-slice")
    assert projection.shortcut_shrink == "projection" and projection.projection_shrink == "slice"
    assert "shortcut_shrink" not in projection.unit_kwargs()
    assert get_style("slice").unit_kwargs()["shortcut_shrink"] == "slice"
    assert get_style("identity-headnorm").projection_shrink == "fold"
    assert get_style("rep-signed").projection_shrink == "signed"
    # bias-free depthwise convs: only grouped pre-norm convs lose their bias
    lean = get_style("project-slice-nodwbias").unit_kwargs()
    assert DeroUnit(8, 8, k=3, groups=8, **lean).conv.bias is None
    assert DeroUnit(8, 16, k=1, **lean).conv.bias is not None
    assert DeroUnit(8, 8, k=3, groups=8, **get_style("project-slice").unit_kwargs()).conv.bias is not None
    assert get_style() == get_style("rep-slice")  # the default since the thirteenth session
    assert "shortcut_shrink" not in get_style("rep-signed").unit_kwargs()
    with pytest.raises(ValueError, match="shortcut_shrink"):
        DeroStyle(shortcut_shrink="sum")


def test_styles_and_shortcut_gain():
    from yolo_dero.nn import DERO_STYLES, get_style, init_shortcuts

    assert get_style() == DERO_STYLES["default"] and get_style("seed").shortcut_norm == "all"
    assert get_style("seed", shortcut_gain=0.0).shortcut_gain == 0.0
    with pytest.raises(ValueError, match="unknown DERO style"):
        get_style("nope")
    model = nn.Sequential(DeroUnit(4, 8, k=3, s=2), DeroUnit(8, 8, k=3))
    init_shortcuts(model, get_style("seed", shortcut_gain=0.0))
    bns = [m.shortcut.bn for m in model]
    assert all(float(bn.weight.detach().abs().sum()) == 0.0 for bn in bns)
    model.eval()  # gain 0: the shortcuts contribute nothing, the network is its plain twin
    x = torch.randn(1, 4, 8, 8)
    assert torch.allclose(model(x), torch.relu(model[1].conv(model[1].bn_in(torch.relu(
        model[0].conv(model[0].bn_in(x)))))), atol=1e-6)


@pytest.mark.parametrize("kw", [
    dict(c_in=3, c_out=16, k=6, s=2, p=2, act="silu"),                             # YOLOv5n's stem
    dict(c_in=8, c_out=8, k=3, groups=8, act="relu6", depthwise_bias=False),        # depthwise, no bias
    dict(c_in=3, c_out=8, k=3, s=2, act_after_add=True),                           # pads x before bn_in
    dict(c_in=4, c_out=8, k=1),
])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_unit_on_an_input_without_gradient_trains_as_with_bn_in(kw, momentum):
    """The stem reads the image, which needs no gradient: its bn_in is folded into the conv while training, so no
    data gradient is computed. Same output, parameter gradients and running statistics as the unit computing
    bn_in itself (odd sizes, so the border taps that read padding count)."""
    torch.manual_seed(0)
    unit = DeroUnit(**kw).train()
    unit.bn_in.momentum = momentum
    with torch.no_grad():
        unit.bn_in.weight.uniform_(0.5, 1.5)
        unit.bn_in.bias.uniform_(-1, 1)
    reference = copy.deepcopy(unit)
    for step in range(2):  # the second step reads the running statistics the first one left
        x = torch.rand(4, kw["c_in"], 17, 15) * 3 + 1
        y = unit(x)
        y_ref = reference(x.clone().requires_grad_(True))  # an input with gradient: bn_in runs as itself
        grad = torch.randn_like(y)
        y.backward(grad)
        y_ref.backward(grad)
        assert _rel_err(y_ref, y) < 1e-5
        for (name, p), p_ref in zip(unit.named_parameters(), reference.parameters()):
            assert _rel_err(p_ref.grad, p.grad) < 1e-5, name  # sums of thousands of terms: relative to the largest
        for (name, b), b_ref in zip(unit.named_buffers(), reference.buffers()):
            assert _rel_err(b_ref.double(), b.double()) < 1e-6, name


@pytest.mark.parametrize("kw, grad", [
    (dict(c_in=3, c_out=16, k=6, s=2, p=2), False),   # YOLOv5n's stem shortcut: the image has no gradient
    (dict(c_in=8, c_out=16, k=3, s=2), True),         # a strided unit that doubles its channels
    (dict(c_in=8, c_out=12, k=1, s=2), True),         # strided 1x1: ceil-mode window
])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_growing_shortcut_normalizes_only_its_own_channels_as_the_padded_batchnorm(kw, grad, momentum):
    """In training a growing shortcut runs its BatchNorm on x's channels alone and appends the shift for the zero
    channels: the same output, gradients and running statistics as ``bn(zero-pad(sum-pool(x)))`` written out."""
    torch.manual_seed(0)
    sc = Shortcut(**kw, bn=True).train()
    sc.bn.momentum = momentum
    with torch.no_grad():
        sc.bn.weight.uniform_(0.5, 1.5)
        sc.bn.bias.uniform_(-1, 1)
        sc.bn.running_mean[:3].fill_(0.5)  # stale statistics of the real channels; the zero channels' stay 0
    ref_bn = copy.deepcopy(sc.bn)
    for step in range(2):  # the second step reads what the first one left in the running statistics
        x = torch.rand(4, kw["c_in"], 17, 15) * 3 + 1
        x_ref = x.clone().requires_grad_(grad)
        y = sc(x.requires_grad_(grad))
        pooled = torch.nn.functional.avg_pool2d(x_ref, sc.k, sc.s, sc.p, ceil_mode=sc.ceil_mode,
                                                count_include_pad=True, divisor_override=1)
        y_ref = ref_bn(fold_channels(pooled, kw["c_out"]))
        assert y.shape == y_ref.shape
        grad_y = torch.randn_like(y)
        y.backward(grad_y)
        y_ref.backward(grad_y)
        assert _rel_err(y_ref, y) < 1e-5
        for name in ("weight", "bias"):
            assert _rel_err(getattr(ref_bn, name).grad, getattr(sc.bn, name).grad) < 1e-5, name
        if grad:
            assert _rel_err(x_ref.grad, x.grad) < 1e-5
        for (name, b), b_ref in zip(sc.bn.named_buffers(), ref_bn.buffers()):
            assert _rel_err(b_ref.double(), b.double()) < 1e-6, name
    sc.eval()  # eval runs the module itself on the statistics the fast path kept
    ref_bn.eval()
    x = torch.rand(2, kw["c_in"], 9, 9)
    pooled = torch.nn.functional.avg_pool2d(x, sc.k, sc.s, sc.p, ceil_mode=sc.ceil_mode, count_include_pad=True,
                                            divisor_override=1)
    assert _rel_err(ref_bn(fold_channels(pooled, kw["c_out"])), sc(x)) < 1e-5
