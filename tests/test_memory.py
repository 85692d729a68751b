"""The activation-memory analyzer, pinned against peaks computed by hand (docs/memory_model.md).

Toy graphs use 16x32x32 tensors: 16,384 bytes each at int8 ("T" below).
"""

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from yolo_dero.memory import analyze, analyze_engines, greedy_arena, trace_model, tflm_plan
from yolo_dero.nn import DeroUnit

T = 16 * 32 * 32  # 16,384 bytes at int8


def conv(c_in=16, c_out=16, k=3, s=1):
    return nn.Conv2d(c_in, c_out, k, s, k // 2)


class Residual(nn.Module):
    """Classic two-conv residual block: y = x + conv2(conv1(x))."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = conv(), conv()

    def forward(self, x):
        return x + self.conv2(self.conv1(x))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = conv(), conv(), conv(32, 16, 1)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], 1))


class ConvFlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = conv(), nn.Linear(T, 10)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))  # flatten is a view: free


def both(model, imgsz=32, c=16, **kw):
    r = analyze_engines(model, imgsz, in_channels=c, **kw)
    return r["fused"], r["tflm"]


def test_plain_chain():
    # each conv: its input and its output live -> 2T; tflm the same, and the planner needs no more
    f, t = both(nn.Sequential(conv(), conv(), conv()))
    assert f.profile == [2 * T] * 3
    assert f.peak_bytes == t.peak_bytes == t.arena_bytes == 32_768


def test_plain_chain_float32():
    f = analyze(nn.Sequential(conv(), conv()), 32, bytes_per_element=4, in_channels=16)
    assert f.peak_bytes == 4 * 32_768


def test_conv_bn_act_is_one_operator():
    f, t = both(nn.Sequential(conv(), nn.BatchNorm2d(16), nn.ReLU(), conv(), nn.BatchNorm2d(16), nn.SiLU()))
    assert f.num_operators == t.num_operators == 2
    assert f.peak_bytes == t.peak_bytes == 2 * T


def test_two_conv_residual_block():
    # conv1: x, mid (2T); conv2: x, mid, out (3T); add: x and out die, sum written in place into out (2T)
    # tflm: add writes a new buffer: x, out, sum (3T)
    f, t = both(Residual())
    assert f.profile == [2 * T, 3 * T, 2 * T]
    assert f.peak_bytes == 49_152
    assert t.profile == [2 * T, 3 * T, 3 * T]
    assert t.peak_bytes == t.arena_bytes == 49_152


def test_tflm_greedy_gap_two_residual_blocks():
    """Two classic residual blocks: 3 tensors live at most, but TFLM's planner reserves 4.

    Operators 0..5: conv, conv, add, conv, conv, add. Lifetimes (first, last):
    x0 (0,2) a (0,1) b (1,2) y1 (2,5) c (3,4) d (4,5) y2 (5,5); at most 3 overlap.
    Greedy, equal sizes in reverse tensor order: y2@0, d@1, c@0, y1@2 (above y2, c, d),
    b@0, a@1, and x0 overlaps b@0, a@1, y1@2 -> x0@3: the arena is 4T = 65,536 (measured on TFLM).
    """
    f, t = both(nn.Sequential(Residual(), Residual()))
    assert f.peak_bytes == 3 * T
    assert t.peak_bytes == 3 * T == 49_152
    assert t.arena_bytes == 4 * T == 65_536
    assert t.arena_bytes > t.peak_bytes
    # the same buffers by hand
    bufs = [(T, 0, 2), (T, 0, 1), (T, 1, 2), (T, 2, 5), (T, 3, 4), (T, 4, 5), (T, 5, 5)]
    arena, offsets = greedy_arena(bufs)
    assert arena == 4 * T and offsets == [3 * T, T, 0, 2 * T, 0, T, 0]
    # ties broken in forward tensor order would have packed them into 3T
    assert greedy_arena(bufs, tie="forward")[0] == 3 * T


def test_greedy_arena_sizes_by_hand():
    # sizes first: X(4)@0; Z(3) does not overlap X in time -> @0; Y(2) overlaps X and Z -> @4; W(2) overlaps X -> @4
    bufs = [(4, 0, 1), (2, 1, 2), (3, 2, 3), (2, 0, 0)]
    assert greedy_arena(bufs) == (6, [0, 4, 0, 4])
    # a gap with distinct sizes: A(3,[0,1]) B(2,[0,2]) C(4,[3,3]) D(1,[2,3]); at most 5 live (t0, t1, t3).
    # C@0; A@0 (not alive with C); B overlaps A -> @3; D overlaps C@0..4 and B@3..5 -> @5: arena 6 > 5
    assert greedy_arena([(3, 0, 1), (2, 0, 2), (4, 3, 3), (1, 2, 3)]) == (6, [0, 3, 0, 5])


def test_chain_of_dero_units():
    # fused: a unit is one operator |x| + |y| -> 2T. tflm: conv(x) -> c, then add(c, x) -> y: x, c, y live (3T)
    f, t = both(nn.Sequential(DeroUnit(16, 16, 3), DeroUnit(16, 16, 3)))
    assert f.num_operators == 2
    assert f.profile == [2 * T, 2 * T] and f.peak_bytes == 32_768
    assert t.peak_bytes == 49_152 and t.arena_bytes == 49_152
    assert t.num_operators == 4  # conv, add per unit (BatchNorms folded)


def test_plain_twin_of_dero_chain():
    f, t = both(nn.Sequential(DeroUnit(16, 16, 3, shortcut=False), DeroUnit(16, 16, 3, shortcut=False)))
    assert f.peak_bytes == t.peak_bytes == t.arena_bytes == 32_768


def test_strided_dero_unit_fused_equals_plain():
    x_bytes, y_bytes = T, 32 * 16 * 16
    for sc in (True, False):
        f = analyze(DeroUnit(16, 32, 3, 2, shortcut=sc), 32, in_channels=16)
        assert f.peak_bytes == x_bytes + y_bytes


def test_concat():
    # conv a: x, a (2T); conv b: x, a, b (3T); cat: a, b, cat(2T) (4T); 1x1 conv: cat, out (3T)
    f, t = both(Concat())
    assert f.profile == [2 * T, 3 * T, 4 * T, 3 * T]
    assert t.profile == f.profile
    assert f.peak_bytes == t.peak_bytes == t.arena_bytes == 65_536
    assert "cat" in f.peak_operator


def test_view_is_free():
    # conv: x, y (2T); flatten: no operator; linear: y, 10 logits
    f, t = both(ConvFlattenLinear())
    assert f.num_operators == 2
    assert f.profile == [2 * T, T + 10]
    assert t.profile == [2 * T, T + 10]


def test_elementwise_in_place_only_into_dying_input():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = conv(), conv()

        def forward(self, x):
            a = self.c1(x)
            b = torch.sigmoid(a) * a     # a still needed by the mul: sigmoid writes a new buffer
            return self.c2(b)
    # c1: x, a (2T); sigmoid: a, s (2T); mul: a, s die, product in place (2T); c2: b, out (2T)
    f, t = both(M())
    assert f.profile == [2 * T, 2 * T, 2 * T, 2 * T]
    # tflm: mul writes a new buffer: a, s, product (3T)
    assert t.profile == [2 * T, 2 * T, 3 * T, 2 * T]


def test_tflm_explicit_pad_before_strided_conv():
    # 3x3/2 with padding 1 on a 32x32 input is not TFLite SAME padding: PAD writes 16x34x34 first
    m = nn.Sequential(conv(16, 16, 3, 2))
    padded, out = 16 * 34 * 34, 16 * 16 * 16
    f, t = both(m)
    assert f.peak_bytes == T + out
    assert t.profile == [T + padded, padded + out]
    tr = trace_model(m, 32, in_channels=16)
    assert tflm_plan(tr, pad_ops=False).peak_bytes == T + out
    # 3x3/1 padding 1 is SAME: no PAD
    assert both(nn.Sequential(conv()))[1].num_operators == 1


def test_memory_stages_body_and_stage_peaks():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, 2, 1)     # 3x64x64 -> 16x32x32
            self.layer1 = Residual()
            self.head = nn.Conv2d(16, 4, 1)
            self.memory_stages = OrderedDict([("stem", ["stem"]), ("layer1", ["layer1"]), ("head", ["head"])])

        def forward(self, x):
            return self.head(self.layer1(self.stem(x)))

    f = analyze(Net(), 64, engine="fused", stages=None)
    assert f.stages_source == "memory_stages"
    assert f.stages == {"stem": 3 * 64 * 64 + T, "layer1": 3 * T, "head": T + 4 * 32 * 32}
    assert f.peak_bytes == 3 * T and f.body_peak_bytes == 3 * T
    assert f.stem_peak_bytes == 3 * 64 * 64 + T
    # without memory_stages: the fallback stem ends after the first run of downsampling operators
    net = Net()
    del net.memory_stages
    g = analyze(net, 64)
    assert g.stages_source == "fallback" and g.stages["stem"] == 3 * 64 * 64 + T


def test_to_dict_keys():
    d = analyze(nn.Sequential(conv()), 32, engine="tflm", in_channels=16).to_dict()
    for key in ("model", "imgsz", "engine", "bytes_per_element", "peak_bytes", "peak_operator", "body_peak_bytes",
                "stages", "profile", "arena_bytes"):
        assert key in d


# -- registry and YAML models -------------------------------------------------------------------

def _registry():
    try:
        from classification.models import get_model, list_models
    except ImportError:
        pytest.skip("classification registry not importable")
    return get_model, set(list_models())


FAMILIES = [("resnet34", "resnet34_plain", "resnet34_dero"), ("resnet50", "resnet50_plain", "resnet50_dero"),
            ("mcunet_v4", "mcunet_v4_plain", "mcunet_v4_dero"),
            ("densenet121", "densenet121_plain", "densenet121_dero")]


@pytest.mark.parametrize("orig,plain,dero", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_registry_dero_equals_plain_and_original_body_is_larger(orig, plain, dero):
    get_model, names = _registry()
    if not {orig, plain, dero} <= names:
        pytest.skip(f"registry lacks one of {orig}, {plain}, {dero}")
    res = {n: analyze(get_model(n), 64, name=n) for n in (orig, plain, dero)}
    assert res[dero].peak_bytes == res[plain].peak_bytes
    assert res[dero].body_peak_bytes == res[plain].body_peak_bytes
    assert res[dero].stages == res[plain].stages
    assert res[orig].body_peak_bytes > res[plain].body_peak_bytes


def _yaml_model(name):
    from yolo_dero.catalog import REPO_ROOT, load_model

    if not (REPO_ROOT / "cfg" / name).is_file():
        pytest.skip(f"cfg/{name} not present")
    return load_model(f"cfg/{name}")[0]


def test_yolo_yaml_analyses_and_dero_equals_plain():
    dero = analyze_engines(_yaml_model("yolov5n-dero.yaml"), 128)
    plain = analyze(_yaml_model("yolov5n-plain.yaml"), 128)
    orig = analyze(_yaml_model("yolov5n.yaml"), 128)
    f = dero["fused"]
    assert f.stages_source == "memory_stages" and "head" in f.stages
    assert f.peak_bytes == plain.peak_bytes and f.body_peak_bytes == plain.body_peak_bytes
    assert dero["tflm"].arena_bytes >= dero["tflm"].peak_bytes >= f.peak_bytes
    # the first C3 (model.2) keeps its input alive across the bottleneck: larger than the plain chain
    assert orig.modules["model.2"] > plain.modules["model.2"]


def test_cli_json_and_errors(tmp_path, capsys):
    from yolo_dero.memory.__main__ import main

    _, names = _registry()
    if "resnet34" not in names:
        pytest.skip("registry lacks resnet34")
    out = tmp_path / "m.json"
    assert main(["--model", "resnet34", "--imgsz", "64", "--engine", "tflm", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["model"] == "resnet34" and d["engine"] == "tflm" and d["arena_bytes"] >= d["peak_bytes"]
    assert len(d["profile"]) == d["num_operators"] and "stem" in d["stages"]
    assert "whole peak" in capsys.readouterr().out
    assert main(["--model", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and "resnet34" in err
    assert main(["--model", "cfg/missing.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------- engines, outputs declaration


def test_engines_by_name_or_instance():
    from yolo_dero.memory import ENGINES, FUSED, TFLM, Engine, engine_names, get_engine, plan

    assert get_engine("fused") is FUSED and get_engine("tflm") is TFLM and get_engine(TFLM) is TFLM
    assert set(ENGINES) <= set(engine_names()) and isinstance(FUSED, Engine)
    with pytest.raises(ValueError, match="unknown engine 'onnx'; use one of fused, tflm"):
        get_engine("onnx")
    m = nn.Sequential(Residual(), Residual())
    by_name = analyze(m, 32, "tflm", in_channels=16)
    by_instance = analyze(m, 32, TFLM, in_channels=16)
    assert by_instance.to_dict(operators=True) == by_name.to_dict(operators=True) and by_name.engine == "tflm"
    tr = trace_model(m, 32, in_channels=16)
    lowered = TFLM.lower(tr)  # lower then place == plan
    assert TFLM.place(lowered).arena_bytes == plan(tr, "tflm").arena_bytes == by_name.arena_bytes == 4 * T
    with pytest.raises(TypeError, match="no option 'tie'"):
        FUSED.plan(tr, tie="forward")
    with pytest.raises(TypeError, match="unknown engine option"):
        analyze(m, 32, "tflm", in_channels=16, no_such_option=1)
    # an option of another registered engine is ignored where the engine does not take it (as before)
    assert analyze(m, 32, "fused", in_channels=16, pad_ops=False).peak_bytes == 3 * T


def test_a_registered_engine_is_analysed_by_name():
    from yolo_dero.memory import FUSED, FusedEngine, register_engine
    from yolo_dero.memory.engines import _REGISTRY

    class Float32(FusedEngine):  # the fused engine at 4 bytes per element whatever the caller asks
        name = "fused_fp32"

        def place(self, graph, bytes_per_element=1, **options):
            return super().place(graph, 4, **options)

    register_engine(Float32())
    try:
        m = nn.Sequential(conv(), conv())
        r = analyze_engines(m, 32, ("fused", "fused_fp32"), in_channels=16)
        assert r["fused_fp32"].peak_bytes == 4 * r["fused"].peak_bytes == 4 * 2 * T
        assert r["fused_fp32"].engine == "fused_fp32" and FUSED.name == "fused"
    finally:
        _REGISTRY.pop("fused_fp32", None)


class TwoHeads(nn.Module):
    """Returns (small decoded output, large raw output) like a detector in eval mode."""

    def __init__(self):
        super().__init__()
        self.body, self.small, self.tail = conv(), nn.Conv2d(16, 1, 1), nn.Conv2d(1, 1, 1)

    def forward(self, x):
        y = self.body(x)
        return self.tail(self.small(y)), y


def test_outputs_are_what_the_model_declares():
    undeclared = TwoHeads()
    everything = analyze(undeclared, 32, in_channels=16)  # no declaration: every returned tensor is an output
    declared = TwoHeads()
    declared.memory_outputs = "first"
    first = analyze(declared, 32, in_channels=16)
    assert first.peak_bytes == analyze(undeclared, 32, in_channels=16, outputs="first").peak_bytes
    # the raw output y stays live to the end only where it counts as an output
    assert everything.profile == [2 * T, T + T // 16, T + T // 8] and first.profile == [2 * T, T + T // 16, T // 8]
    declared.memory_outputs = lambda out: out[1]  # y only: the small outputs die at once
    assert analyze(declared, 32, in_channels=16).profile == [2 * T, T + T // 16, T + T // 8]
    assert analyze(declared, 32, in_channels=16, outputs="all").profile == everything.profile


def test_detection_model_declares_its_memory_outputs():
    from yolo_dero.ultra import DeroDetectionModel  # the offline set-up first, then Ultralytics

    assert DeroDetectionModel.memory_outputs == "first"
