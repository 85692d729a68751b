"""Deployment: full-integer TFLite export, TFLite Micro arena measurement, float check.

Needs requirements-mcu.txt (litert-torch, tflite-micro, ai-edge-litert). Without them every test here is
skipped with a message, unless ``DERO_REQUIRE_MCU=1`` or ``CI`` is set, which turns the skip into a failure.

Toy graphs use 16x32x32 tensors: T = 16 * 32 * 32 = 16,384 bytes at int8. Hand figures of TFLM's
activation arena (head), where nothing runs in place:

* plain chain of 3x3 convs: input and output of one conv -> 2T = 32,768;
* two residual units ``x + relu(conv(x))`` (one conv per residual): at the add, x, the conv output and the
  sum are live -> 3T = 49,152;
* DERO twin ``DeroUnit(16, 16, k=1)`` (bn_in folded into the 1x1 conv, identity shortcut): the same 3T;
  its plain twin 2T;
* two classic residual blocks ``x + conv2(relu(conv1(x)))``: 3T live, but TFLM's greedy planner places the
  equal-size buffers largest-first in reverse tensor order and leaves a gap -> 4T = 65,536 reserved
  (measured below with the tflite-micro package; the analyzer's ``tflm`` engine reproduces the gap).
"""

from __future__ import annotations


import pytest
import torch
from torch import nn

T = 16 * 32 * 32

from mcu_support import require_mcu_packages  # noqa: E402  (tests/mcu_support.py)

require_mcu_packages()

from yolo_dero.memory import analyze  # noqa: E402
from yolo_dero.mcu import (FloatTensorError, check_full_int8, export_tflite, float_problems,  # noqa: E402
                           inspect_tflite, lower_for_export, measure_arena)
from yolo_dero.mcu.reports import ClassicResidual, OneConvResidual, randomize_batchnorm  # noqa: E402
from yolo_dero.nn import DeroUnit  # noqa: E402


TOYS = {
    "plain_chain": (lambda: nn.Sequential(*[m for _ in range(3) for m in (nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU())]),
                    2 * T),
    "one_conv_residual": (lambda: nn.Sequential(OneConvResidual(), OneConvResidual()), 3 * T),
    "classic_residual": (lambda: nn.Sequential(ClassicResidual(), ClassicResidual()), 4 * T),
    "dero_twin": (lambda: nn.Sequential(*[DeroUnit(16, 16, k=1, shortcut_bn=False) for _ in range(3)]), 3 * T),
    "plain_twin": (lambda: nn.Sequential(*[DeroUnit(16, 16, k=1, shortcut=False) for _ in range(3)]), 2 * T),
    # the re-parameterizable form: the export folds each unit into one conv, so DERO costs what plain costs
    "rep_dero": (lambda: nn.Sequential(*[DeroUnit(16, 16, k=3, norm="post", act_after_add=True) for _ in range(3)]),
                 2 * T),
    "rep_plain": (lambda: nn.Sequential(*[DeroUnit(16, 16, k=3, norm="post", act_after_add=True, shortcut=False)
                                          for _ in range(3)]), 2 * T),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export every toy once (about 2-4 s each) and measure it in TFLM."""
    d = tmp_path_factory.mktemp("mcu")
    out = {}
    for name, (make, _) in TOYS.items():
        torch.manual_seed(0)
        model = randomize_batchnorm(make())
        r = export_tflite(model, 32, d / f"{name}.tflite", in_channels=16, num_calib=2)
        out[name] = (model, r, measure_arena(r.path))
    return out


@pytest.mark.parametrize("name", list(TOYS))
def test_toy_arena_matches_hand_figures(exported, name):
    _, r, a = exported[name]
    assert a.head_bytes == TOYS[name][1], (name, a.head_bytes)
    assert a.tail_bytes > 0
    assert a.total_bytes == a.head_bytes + a.tail_bytes
    # the minimal arena allocates and is at least head + tail (alignment may add a little)
    assert a.total_bytes <= a.minimal_arena_bytes <= a.total_bytes + 4096


@pytest.mark.parametrize("name", list(TOYS))
def test_toy_export_is_full_integer_nhwc(exported, name):
    _, r, a = exported[name]
    info = check_full_int8(r.path)
    assert float_problems(info) == []
    assert r.input_shape == [1, 32, 32, 16]          # NHWC
    assert r.output_shapes == [[1, 32, 32, 16]]
    assert "QUANTIZE" not in r.op_counts and "DEQUANTIZE" not in r.op_counts
    assert a.input_dtype == "int8"
    assert a.outputs_match and a.max_abs_diff_lsb <= 2  # TFLM vs LiteRT


def test_dero_twin_costs_one_tensor_more_than_plain_under_tflm(exported):
    # TFLM adds are not in place: x, conv output and sum live together (an offline plan removes it: test_mcu_plan.py)
    assert exported["dero_twin"][2].head_bytes - exported["plain_twin"][2].head_bytes == T
    assert exported["dero_twin"][1].op_counts.get("ADD") == 3
    assert exported["plain_twin"][1].op_counts.get("ADD") is None


def test_reparameterized_dero_exports_as_its_plain_twin(exported):
    _, dero, dero_arena = exported["rep_dero"]
    _, plain, plain_arena = exported["rep_plain"]
    assert dero.lowering["reparameterized"] == 3
    assert dero.op_counts == plain.op_counts == {"CONV_2D": 3}
    assert dero_arena.head_bytes == plain_arena.head_bytes


def test_predict_litert_follows_the_float_model(exported):
    from yolo_dero.mcu.runtime import predict_litert

    model, r, _ = exported["rep_dero"]
    x = torch.rand(4, 32, 32, 16)  # NHWC, the calibration range
    got = predict_litert(r.path, x.numpy())
    with torch.no_grad():
        want = model(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert got.shape == want.shape
    assert abs(got - want).mean() < 0.05 * abs(want).mean()  # int8 noise, not a wrong layout or scale


def test_analyzer_tflm_engine_agrees_on_toys(exported):
    for name, (model, _, a) in exported.items():
        assert analyze(model, 32, engine="tflm", in_channels=16).arena_bytes == a.head_bytes, name


@pytest.mark.parametrize("shrink", ["fold", "slice", "signed"])
def test_lowering_is_exact(shrink):
    torch.manual_seed(0)
    model = randomize_batchnorm(nn.Sequential(
        DeroUnit(16, 32, k=3, s=2, shortcut_shrink=shrink), DeroUnit(32, 16, k=1, shortcut_shrink=shrink),
        DeroUnit(16, 24, k=1, s=2),
        DeroUnit(24, 24, k=5, groups=24, act="relu6"), DeroUnit(24, 8, k=3, act=None, shortcut_shrink=shrink)))
    low, counts = lower_for_export(model)
    assert counts == {"shortcuts": 5, "bn_in_folded": 2, "bn_in_depthwise": 3, "reparameterized": 0}
    for size in (32, 30):  # 30: the strided 1x1 unit sees 15x15 (odd): its shortcut's ceil mode
        x = torch.randn(2, 16, size, size)
        with torch.no_grad():
            torch.testing.assert_close(low(x), model(x), rtol=1e-4, atol=1e-4)


def test_lowering_freezes_dead_input_channels_instead_of_scaling_them():
    """A channel that never varied (running variance ~0: a dead ReLU6) would get a ~300x BatchNorm scale folded into
    the conv's weights and take their whole int8 range; the lowering uses its constant value instead."""
    torch.manual_seed(0)
    unit = randomize_batchnorm(DeroUnit(8, 4, k=1, act=None)).eval()
    with torch.no_grad():
        unit.bn_in.running_var[3] = 1e-40
        unit.bn_in.running_mean[3] = 0.25
    low, counts = lower_for_export(nn.Sequential(unit))
    assert counts["bn_in_folded"] == 1 and counts["bn_in_constant_channels"] == 1
    w = low[0].conv.weight.detach()[:, :, 0, 0]
    assert torch.all(w[:, 3] == 0) and w[:, :3].abs().min() > 0  # the live channels keep their weights
    x = torch.randn(2, 8, 5, 5)
    x[:, 3] = 0.25  # the channel is what training saw: its running mean
    with torch.no_grad():
        torch.testing.assert_close(low(x), unit(x), rtol=1e-4, atol=1e-4)


def test_float_export_fails_the_check(tmp_path):
    model = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU()).eval()
    with pytest.raises(FloatTensorError, match="FLOAT32"):
        export_tflite(model, 32, tmp_path / "float.tflite", in_channels=16, quantize=False)
    # written without the check, the file is there and the check names its float tensors
    export_tflite(model, 32, tmp_path / "float2.tflite", in_channels=16, quantize=False, check=False)
    info = inspect_tflite(tmp_path / "float2.tflite")
    problems = float_problems(info)
    assert any("graph input" in p for p in problems) and any("FLOAT32" in p for p in problems)
    with pytest.raises(FloatTensorError):
        check_full_int8(tmp_path / "float2.tflite")


def test_arena_bisection_finds_the_boundary(exported):
    from yolo_dero.mcu.runtime import allocates, allocations

    _, r, a = exported["plain_chain"]
    data = open(r.path, "rb").read()
    assert allocates(data, a.minimal_arena_bytes)
    assert not allocates(data, a.minimal_arena_bytes - 16)
    with pytest.raises(RuntimeError):
        allocations(data, a.head_bytes // 2)


def test_cli_export_and_arena(tmp_path, capsys):
    from yolo_dero.mcu.__main__ import main

    out = tmp_path / "m.tflite"
    js = tmp_path / "a.json"
    assert main(["export", "--model", "mcunet_plain_v4", "--imgsz", "32", "--out", str(out), "--num-calib", "1"]) == 0  # a deprecated registry name: still accepted
    assert main(["arena", str(out), "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "full-integer check passed" in text and "minimal arena" in text and "ok" in text
    import json

    d = json.loads(js.read_text())
    assert d["head_bytes"] > 0 and d["outputs_match"]


def test_lowering_folds_an_input_norm_without_affine_parameters():
    """``stem_norm="stats"``: the stem's bn_in has no gamma/beta (affine=False); it folds like any other."""
    torch.manual_seed(0)
    unit = DeroUnit(3, 8, k=1, s=2, act="relu")
    unit.bn_in = nn.BatchNorm2d(3, affine=False)
    unit.train()
    unit(torch.randn(4, 3, 16, 16) * 3 + 1)  # running statistics away from (0, 1)
    unit.bn_in.running_var[1] = 0.0  # and one constant channel, which the lowering freezes
    unit.eval()
    low, counts = lower_for_export(nn.Sequential(unit))
    assert counts["bn_in_folded"] == 1 and not any(isinstance(m, nn.BatchNorm2d) and m.num_features == 3
                                                   for m in low.modules())
    x = torch.randn(2, 3, 16, 16)
    x[:, 1] = unit.bn_in.running_mean[1]  # the constant channel holds its running mean
    with torch.no_grad():
        torch.testing.assert_close(low(x), unit(x), rtol=1e-4, atol=1e-4)
