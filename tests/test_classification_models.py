"""The classification zoo: sizes, forward/backward on small inputs, DERO/plain structure, memory stages."""

import pytest
import torch
from torch import nn

from classification.models import get_model, list_models
from classification.models._profile import count_macs, count_params
from classification.models.mcunet import InvertedResidual
from yolo_dero.nn import DeroPool, DeroUnit

ALL_MODELS = list_models(include_deprecated=False)
TWINS = [("resnet34_dero", "resnet34_plain"), ("resnet50_dero", "resnet50_plain"),
         ("mcunet_v4_dero", "mcunet_v4_plain"), ("densenet121_dero", "densenet121_plain")]
DERO_MODELS = [dero for dero, _ in TWINS]


def _shortcut_params(model: nn.Module) -> int:
    return sum(p.numel() for name, m in model.named_modules() if name.endswith("shortcut")
               for p in m.parameters())


def test_registry_has_all_twelve_models():
    assert ALL_MODELS == sorted([
        "resnet34", "resnet50", "densenet121", "mcunet_v4",
        "resnet34_dero", "resnet50_dero", "densenet121_dero", "mcunet_v4_dero",
        "resnet34_plain", "resnet50_plain", "densenet121_plain", "mcunet_v4_plain"])


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*valid names: .*resnet34_dero"):
        get_model("resnet18")


@pytest.mark.parametrize("name, expected", [
    ("resnet34", 21_797_672), ("resnet50", 25_557_032), ("densenet121", 7_978_856)])
def test_torchvision_originals_exact_parameter_count(name, expected):
    assert count_params(get_model(name)) == expected


def test_mcunet_v4_matches_published_size_and_macs():
    model = get_model("mcunet_v4")
    assert count_params(model) == pytest.approx(0.74e6, rel=0.03)
    assert count_macs(model, 176) == pytest.approx(81.8e6, rel=0.05)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_64px_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=10)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name, size", [("resnet50_dero", (32, 32)), ("densenet121_dero", (48, 80)),
                                        ("mcunet_v4_dero", (72, 40))])
def test_smallest_and_non_square_inputs(name, size):
    model = get_model(name, num_classes=7)
    assert model(torch.randn(2, 3, *size)).shape == (2, 7)


@pytest.mark.parametrize("dero_name, plain_name", TWINS)
def test_plain_twin_is_dero_without_shortcut_parameters(dero_name, plain_name):
    dero, plain = get_model(dero_name), get_model(plain_name)
    assert _shortcut_params(plain) == 0
    assert not [n for n, _ in plain.named_modules() if "shortcut" in n]
    assert _shortcut_params(dero) > 0
    assert count_params(plain) == count_params(dero) - _shortcut_params(dero)


@pytest.mark.parametrize("name", DERO_MODELS + [plain for _, plain in TWINS])
def test_dero_models_have_no_projection_conv(name):
    model = get_model(name)
    modules = dict(model.named_modules())
    for conv_name, m in modules.items():
        if isinstance(m, nn.Conv2d):
            parent = modules[conv_name.rpartition(".")[0]]
            assert isinstance(parent, DeroUnit), f"{conv_name} is not inside a DERO unit"


def test_mcunet_original_adds_only_where_stride_1_and_channels_match():
    blocks = [m for m in get_model("mcunet_v4").modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 18
    assert sum(b.use_residual for b in blocks) == 11
    assert not any(isinstance(m, InvertedResidual) for m in get_model("mcunet_v4_dero").modules())


def test_densenet_dero_seed_style_shortcut_bn_only_where_channels_or_stride_change():
    for m in get_model("densenet121_dero", style="seed").modules():
        if isinstance(m, DeroUnit):
            changes = m.c_in != m.c_out or m.s != 1
            assert isinstance(m.shortcut.bn, nn.BatchNorm2d) == changes


def test_resnet_dero_drop_path_grows_linearly_and_needs_shortcuts():
    model = get_model("resnet34_dero", drop_path_rate=0.2)
    first, last = model.layer1[0].conv1, model.layer4[-1].conv2
    assert isinstance(first.drop_path, nn.Identity)
    assert last.drop_path.p == pytest.approx(0.2)
    assert model.layer2[0].conv1.drop_path.p == pytest.approx(0.2 * 3 / 15)
    with pytest.raises(ValueError):
        get_model("resnet34_plain", drop_path_rate=0.2)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_memory_stages_cover_the_forward_pass_in_order(name):
    model = get_model(name, num_classes=10).eval()
    stages = model.memory_stages
    assert list(stages)[0] == "stem" and list(stages)[-1] == "head"
    modules = dict(model.named_modules())
    prefixes = [(i, p) for i, names in enumerate(stages.values()) for p in names]
    for _, p in prefixes:
        assert p in modules, f"{p} listed in memory_stages but not a module"

    def stage_of(module_name):
        owners = {i for i, p in prefixes if module_name == p or module_name.startswith(p + ".")}
        assert len(owners) == 1, f"{module_name} belongs to stages {owners}"
        return owners.pop()

    # every leaf module that runs belongs to exactly one stage, and stages run in the listed order
    order = []
    leaves = {n: m for n, m in modules.items() if n and not list(m.children())}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(stage_of(n)))
               for n, m in leaves.items()]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for h in handles:
        h.remove()
    assert order == sorted(order)
    assert set(order) == set(range(len(stages)))


# parameter counts at 1000 classes. The seed's unit ('seed' style: a BatchNorm on every shortcut) matches the seed's
# table, which counts in units of 2^20 (ResNet34-DERO 21,645,806 / 2^20 = 20.64). The default style ('rep-slice')
# keeps a shortcut BatchNorm only after a sum-pool (every shrinking shortcut slices), puts the operator's BatchNorm
# after a bias-free conv, gives the pools no shortcut and adds a BatchNorm before the classifier's pooling.
@pytest.mark.parametrize("name, seed_style, default_style", [
    ("resnet34_dero", 21_645_806, 21_626_792), ("resnet50_dero", 22_844_654, 22_786_472),
    ("mcunet_v4_dero", 760_158, 738_784), ("densenet121_dero", 7_949_542, 7_934_616)])
def test_dero_parameter_counts_per_style(name, seed_style, default_style):
    assert count_params(get_model(name, style="seed")) == seed_style
    assert int(seed_style / 2**20 * 100) / 100 == {"resnet34_dero": 20.64, "resnet50_dero": 21.78,
                                                  "mcunet_v4_dero": 0.72, "densenet121_dero": 7.58}[name]
    assert count_params(get_model(name)) == default_style


def test_default_style_identity_and_sliced_shortcuts_carry_no_batchnorm():
    """The default ('rep-slice'): every unit re-parameterizable (activation after the add), every shrinking shortcut
    sliced, a shortcut BatchNorm only after a sum-pool, no shortcut around a pool (it would not fold)."""
    for name in ("resnet34_dero", "resnet50_dero", "mcunet_v4_dero", "densenet121_dero"):
        model = get_model(name)
        for unit_name, m in model.named_modules():
            if isinstance(m, DeroUnit):
                assert m.act_after_add, (name, unit_name)
                if m.c_in > m.c_out:
                    assert m.shortcut.shrink == "slice", (name, unit_name)
                assert isinstance(m.shortcut.bn, nn.BatchNorm2d) == (m.s != 1), (name, unit_name)
            elif isinstance(m, DeroPool):
                assert m.shortcut is None, (name, unit_name)
    rep = get_model("resnet50_dero", style="rep")
    folds = [m for m in rep.modules() if isinstance(m, DeroUnit) and m.c_in > m.c_out]
    assert folds and all(m.shortcut.shrink == "fold" and isinstance(m.shortcut.bn, nn.BatchNorm2d) for m in folds)


def test_default_style_has_a_head_batchnorm_that_the_seed_style_lacks():
    for name, width in (("resnet34_dero", 512), ("mcunet_v4_dero", 160), ("densenet121_dero", 1024),
                        ("resnet34_plain", 512)):
        head = get_model(name).head_norm
        assert isinstance(head, nn.BatchNorm2d) and head.num_features == width, name
        assert isinstance(get_model(name, style="seed").head_norm, nn.Identity), name
    assert isinstance(get_model("mcunet_v4").head_norm, nn.Identity)  # the originals are untouched


@pytest.mark.parametrize("name", ["resnet34_dero", "mcunet_v4_dero", "densenet121_dero", "mcunet_v4_plain"])
def test_stem_norm_styles_change_the_stem_unit_only(name):
    for style, post in (("identity-nostembn", False), ("identity-poststem", True), ("identity-statstem", False)):
        model = get_model(name, num_classes=10, style=style)
        units = [m for m in model.modules() if isinstance(m, DeroUnit)]
        assert units[0].c_in == 3  # the unit that reads the image
        if style == "identity-statstem":  # normalized by batch statistics, nothing learned
            assert isinstance(units[0].bn_in, nn.BatchNorm2d) and not units[0].bn_in.affine
        else:
            assert isinstance(units[0].bn_in, nn.Identity)
        assert isinstance(units[0].bn, nn.BatchNorm2d) == post
        assert all(isinstance(u.bn_in, nn.BatchNorm2d) for u in units[1:])
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
