"""The three YOLOv5n YAMLs, the project parser and the DERO YOLO blocks (no training here)."""

import copy
import io
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from yolo_dero.nn.dero import DeroUnit, Shortcut
from yolo_dero.nn.yolo_blocks import DeroC3, DeroC3Seed, DeroConv, DeroSPPF
from yolo_dero.paths import REPO_ROOT

ultra = pytest.importorskip("yolo_dero.ultra")
from ultralytics.nn.modules import C3, SPPF, Bottleneck, Concat, Conv, Detect  # noqa: E402

from yolo_dero.ultra import DeroDetectionModel, ModelConfigError  # noqa: E402
from yolo_dero.nn import exportable_shortcuts  # noqa: E402
from yolo_dero.ultra.model import gflops  # noqa: E402

CFG = REPO_ROOT / "cfg"
YAMLS = ["yolov5n.yaml", "yolov5n-dero.yaml", "yolov5n-plain.yaml"]
# pinned parameter counts at nc=80 (stock Ultralytics yolov5n: 2,654,816)
# (yolov5n-dero.yaml in the seed's unit style: 2,465,862)
PARAMS = {"yolov5n.yaml": 2_654_816, "yolov5n-dero.yaml": 2_460_998, "yolov5n-plain.yaml": 2_458_182}


@pytest.fixture(scope="module")
def models():
    return {y: DeroDetectionModel(CFG / y, verbose=False) for y in YAMLS}


@pytest.mark.parametrize("yaml_name", YAMLS)
def test_builds_and_runs_at_320_with_strides_8_16_32(models, yaml_name):
    m = models[yaml_name]
    assert m.stride.tolist() == [8.0, 16.0, 32.0]
    m.eval()
    with torch.no_grad():
        out = m(torch.rand(1, 3, 320, 320))
    y = out[0] if isinstance(out, (tuple, list)) else out
    assert y.shape == (1, 4 + 80, (40 * 40 + 20 * 20 + 10 * 10))
    m.train()
    with torch.no_grad():
        out = m(torch.rand(2, 3, 320, 320))
    feats = out["feats"] if isinstance(out, dict) else out
    assert [tuple(f.shape[-2:]) for f in feats] == [(40, 40), (20, 20), (10, 10)]


@pytest.mark.parametrize("yaml_name", YAMLS)
def test_param_counts(models, yaml_name):
    assert sum(p.numel() for p in models[yaml_name].parameters()) == PARAMS[yaml_name]


def test_original_matches_ultralytics_stock_yolov5n(models):
    from ultralytics.nn.tasks import DetectionModel

    stock = DetectionModel("yolov5n.yaml", verbose=False)
    ours = models["yolov5n.yaml"]
    assert [type(a).__name__ for a in stock.model] == [type(b).__name__ for b in ours.model]
    assert {k: v.shape for k, v in stock.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    assert round(gflops(ours, 640), 1) == 7.8
    ours.load_state_dict(stock.state_dict())
    stock.eval(), ours.eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(stock(x)[0], ours(x)[0], atol=1e-4)


@pytest.mark.parametrize("yaml_name", ["yolov5n-dero.yaml", "yolov5n-plain.yaml"])
def test_no_residual_spans_more_than_one_operator(models, yaml_name):
    m = models[yaml_name]
    kinds = set()
    for layer in m.model:
        kinds.add(type(layer))
        if isinstance(layer, (DeroConv, DeroC3)):
            units = [layer] if isinstance(layer, DeroUnit) else list(layer)
            assert all(type(u) is DeroConv for u in units)  # a chain of one-operator units, no multi-op block
    assert kinds <= {DeroConv, DeroC3, SPPF, nn.Upsample, Concat, Detect}
    assert not any(isinstance(x, (Bottleneck, C3)) for x in m.modules())
    # every Ultralytics Conv left is inside the stock SPPF or Detect head
    stock_parents = [x for x in m.model if isinstance(x, (SPPF, Detect))]
    convs_in_stock = sum(1 for p in stock_parents for x in p.modules() if isinstance(x, Conv))
    assert convs_in_stock == sum(1 for x in m.modules() if isinstance(x, Conv))
    # DERO C3 chain: 1x1 entry, n x (1x1, 3x3), 1x1 exit
    c3 = m.model[4]  # 6 -> round(6 * 0.33) = 2 bottlenecks
    assert [u.k for u in c3] == [1, 1, 3, 1, 3, 1]
    assert c3[0].c_in == 64 and c3[0].c_out == 32 and c3[-1].c_out == 64


def test_dero_has_shortcuts_and_plain_has_none(models):
    dero, plain = models["yolov5n-dero.yaml"], models["yolov5n-plain.yaml"]
    dero_units = [u for u in dero.modules() if isinstance(u, DeroUnit)]
    plain_units = [u for u in plain.modules() if isinstance(u, DeroUnit)]
    assert len(dero_units) == len(plain_units) == 9 + 38  # 9 single convs, 8 C3 chains
    assert all(u.shortcut is not None for u in dero_units)
    assert all(u.shortcut is None for u in plain_units)
    assert not any(isinstance(x, Shortcut) for x in plain.modules())
    assert not any("shortcut" in n for n, _ in plain.named_parameters())
    assert all(isinstance(u.act, nn.SiLU) for u in dero_units)
    # same topology and operator shapes
    assert [(u.c_in, u.c_out, u.k, u.s) for u in dero_units] == [(u.c_in, u.c_out, u.k, u.s) for u in plain_units]


@pytest.mark.parametrize("yaml_name", YAMLS)
def test_memory_stages(models, yaml_name):
    m = models[yaml_name]
    st = m.memory_stages
    assert list(st) == ["stem", "stage1", "stage2", "stage3", "stage4", "neck", "head"]
    assert st["stem"] == ["model.0"] and st["head"] == ["model.24"]
    names = dict(m.named_modules())
    flat = [n for v in st.values() for n in v]
    assert all(n in names for n in flat)
    assert sorted(flat, key=lambda s: int(s.split(".")[1])) == [f"model.{i}" for i in range(len(m.model))]
    m2 = copy.deepcopy(m)  # survives copying/pickling (checkpoints pickle the model)
    assert m2.memory_stages == st


def test_width_and_depth_scaling_from_file_name(tmp_path):
    shutil.copy(CFG / "yolov5n-dero.yaml", tmp_path / "yolov5m-dero.yaml")  # m: depth 0.67, width 0.75
    m = DeroDetectionModel(tmp_path / "yolov5m-dero.yaml", verbose=False)
    assert m.yaml["scale"] == "m"
    assert m.model[0].c_out == 48 and m.model[1].c_out == 96
    assert len(m.model[2]) == 2 + 2 * 2  # C3 n=3 -> round(3 * 0.67) = 2 bottlenecks


def test_parser_rejects_unknown_module_by_name(tmp_path):
    text = (CFG / "yolov5n-dero.yaml").read_text().replace("[-1, 3, DeroC3, [128]]", "[-1, 3, DeroC2x, [128]]")
    (tmp_path / "yolov5n-bad.yaml").write_text(text)
    with pytest.raises(ModelConfigError, match=r"layer 2: module 'DeroC2x' is neither a DERO module.*DeroC3"):
        DeroDetectionModel(tmp_path / "yolov5n-bad.yaml", verbose=False)


def test_parser_rejects_bad_stages(tmp_path):
    text = (CFG / "yolov5n.yaml").read_text().replace('neck: ["10-23"]', 'neck: ["10-22"]')
    (tmp_path / "yolov5n-stages.yaml").write_text(text)
    with pytest.raises(ModelConfigError, match=r"layers \[23\] belong to no stage"):
        DeroDetectionModel(tmp_path / "yolov5n-stages.yaml", verbose=False)


def test_nc_override_and_resolve_relative_to_repo(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # cfg/... is not under cwd: resolved against the repository
    m = DeroDetectionModel("cfg/yolov5n-dero.yaml", nc=6, verbose=False)
    assert m.model[-1].nc == 6 and m.yaml["nc"] == 6


def test_exported_shortcut_matches_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    onnxslim = pytest.importorskip("onnxslim")
    m = nn.Sequential(DeroConv(3, 16, 6, 2, 2), DeroC3(16, 32, 1), DeroConv(32, 24, 3, 2)).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = m(x).numpy()
    f = io.BytesIO()
    with exportable_shortcuts(), torch.no_grad():
        torch.onnx.export(m, (x,), f, opset_version=18, dynamo=False)
    slim = onnxslim.slim(onnx.load_from_string(f.getvalue())).SerializeToString()  # Ultralytics' simplify=True
    for blob in (f.getvalue(), slim):
        sess = ort.InferenceSession(blob)
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert np.allclose(out, ref, atol=1e-4)


def test_dero_yaml_uses_the_identity_style_and_the_seed_yaml_the_seed_unit(models):
    for u in models["yolov5n-dero.yaml"].modules():
        if isinstance(u, DeroUnit):
            assert isinstance(u.shortcut.bn, nn.BatchNorm2d) == (u.s > 1 or u.c_in > u.c_out)
    seed = DeroDetectionModel(CFG / "yolov5n-dero-seed.yaml", verbose=False)
    assert all(isinstance(u.shortcut.bn, nn.BatchNorm2d) for u in seed.modules() if isinstance(u, DeroUnit))


def test_seed_layout_has_no_concat_keeps_c3_branch_and_dero_sppf():
    m = DeroDetectionModel(CFG / "yolov5n-dero-seed.yaml", verbose=False)
    kinds = {type(x) for x in m.model}
    assert Concat not in kinds and SPPF not in kinds and DeroSPPF in kinds and DeroC3Seed in kinds
    assert m.stride.tolist() == [8.0, 16.0, 32.0] and m.model[-1].f == [15, 17, 19]
    c3 = m.model[4]  # parallel 1x1 branch kept, 2 bottlenecks as (1x1, 3x3) units, 1x1 exit over the concat
    assert c3.cv2.k == 1 and [u.k for u in c3.m] == [1, 3, 1, 3] and c3.cv3.c_in == 2 * c3.cv1.c_out
    # the seed's table: 1,822,211 with its anchor-based head; ours swaps in the anchor-free Detect head
    detect = sum(p.numel() for p in m.model[-1].parameters())
    assert sum(p.numel() for p in m.parameters()) == 2_609_622 and detect == 897_664
    with torch.no_grad():
        out = m.eval()(torch.rand(1, 3, 128, 128))
    y = out[0] if isinstance(out, (tuple, list)) else out
    assert y.shape == (1, 84, 16 * 16 + 8 * 8 + 4 * 4)


def test_converters_take_the_stock_geometry_and_bookkeeping():
    from ultralytics.nn.modules import C2f

    from yolo_dero.nn.yolo_blocks import DeroC2f

    def tagged(m, i=3, f=-1):
        m.i, m.f, m.type, m.np = i, f, "stock", sum(p.numel() for p in m.parameters())
        return m

    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    cases = [
        (DeroConv.from_conv(tagged(Conv(3, 16, 6, 2, 2))), DeroConv(3, 16, 6, 2, 2)),
        (DeroConv.from_conv(tagged(Conv(16, 32, 3, 2)), shortcut=False), DeroConv(16, 32, 3, 2, shortcut=False)),
        (DeroC3.from_c3(tagged(C3(32, 64, 2))), DeroC3(32, 64, 2)),
        (DeroC3.from_c3(tagged(C3(32, 64, 1, False))), DeroC3(32, 64, 1, shortcut=False)),  # C3's flag honoured
        (DeroC3Seed.from_c3(tagged(C3(32, 48, 2, e=0.25))), DeroC3Seed(32, 48, 2, e=0.25)),
        (DeroSPPF.from_sppf(tagged(SPPF(64, 64, 5))), DeroSPPF(64, 64, 5)),
        (DeroC2f.from_c2f(tagged(C2f(32, 64, 2))), DeroC2f(32, 64, 2)),
    ]
    for new, ref in cases:
        assert type(new) is type(ref) and n_params(new) == n_params(ref) > 0
        assert (new.i, new.f, new.np) == (3, -1, n_params(ref))
        assert new.type == f"yolo_dero.nn.yolo_blocks.{type(ref).__name__}"
        x = torch.rand(1, ref.cv1.c_in if hasattr(ref, "cv1") else (ref.c_in if isinstance(ref, DeroUnit) else ref.c1),
                       16, 16)
        assert new(x).shape == ref(x).shape
    with pytest.raises(ValueError, match="ungrouped"):
        DeroConv.from_conv(Conv(16, 16, 3, g=4))


def test_yaml_rows_stay_stock_unless_named_dero(models):
    # the original and the DERO layout share Ultralytics' build; only rows named Dero* are converted
    dero, orig = models["yolov5n-dero.yaml"], models["yolov5n.yaml"]
    assert [m.i for m in dero.model] == [m.i for m in orig.model] and [m.f for m in dero.model] == \
        [m.f for m in orig.model]
    assert type(dero.model[9]) is SPPF and isinstance(dero.model[9].cv1.act, nn.SiLU)  # stock v5 SPPF (activated cv1)
    assert dero.yaml["backbone"][0][2] == "DeroConv"  # model.yaml keeps the project's names (checkpoints rebuild)
    assert all(m.np == sum(p.numel() for p in m.parameters()) for m in dero.model)


def test_yolov8n_dero_is_a_yaml_away():
    """C2f of DERO units in Ultralytics' YOLOv8 layout: builds, runs, and its memory is analysed."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_dero.memory import analyze
    from yolo_dero.nn.yolo_blocks import DeroC2f

    m = DeroDetectionModel(CFG / "yolov8n-dero.yaml", verbose=False)
    assert m.stride.tolist() == [8.0, 16.0, 32.0]
    assert {type(x) for x in m.model} == {DeroConv, DeroC2f, SPPF, nn.Upsample, Concat, Detect}
    assert sum(p.numel() for p in m.parameters()) == 3_167_782  # stock yolov8n: 3,157,200
    stock = DetectionModel("yolov8n.yaml", verbose=False)
    assert sum(p.numel() for p in stock.parameters()) == 3_157_200
    with torch.no_grad():
        y = m.eval()(torch.rand(1, 3, 320, 320))[0]
    assert y.shape == (1, 84, 40 * 40 + 20 * 20 + 10 * 10)
    assert list(m.memory_stages)[0] == "stem" and m.memory_stages["head"] == ["model.22"]
    fused, tflm = analyze(m, imgsz=320), analyze(m, imgsz=320, engine="tflm")
    stock.memory_stages, stock.memory_outputs = m.memory_stages, "first"
    ref = analyze(stock, imgsz=320, engine="tflm")
    # the identity style's stem adds in TFLM as in yolov5n-dero (1,228,800 B); the stock YOLOv8n: 829,504 B
    assert (fused.peak_bytes, tflm.peak_bytes, tflm.arena_bytes, ref.peak_bytes) == (716_800, 1_228_800, 1_239_104,
                                                                                    829_504)


@pytest.mark.parametrize("style", ["identity-poststem", "identity-nostembn", "identity-statstem"])
def test_a_yaml_stem_norm_changes_only_the_stem(tmp_path, style):
    """``stem_norm``: the first unit reads the image without a bn_in (training then needs no gradient with respect
    to the image), with its BatchNorm after the conv ("post") or none; every other unit keeps its bn_in, and the
    model still fuses exactly for inference."""
    text = (CFG / "yolov5n-dero.yaml").read_text().replace("dero_style: identity", f"dero_style: {style}")
    (tmp_path / "yolov5n-x.yaml").write_text(text)
    m = DeroDetectionModel(tmp_path / "yolov5n-x.yaml", nc=3, verbose=False)
    units = [u for u in m.modules() if isinstance(u, DeroUnit)]
    post = style.endswith("poststem")
    if style.endswith("statstem"):  # batch statistics without gamma/beta: no gradient with respect to the image
        assert isinstance(units[0].bn_in, nn.BatchNorm2d) and not list(units[0].bn_in.parameters())
    else:
        assert isinstance(units[0].bn_in, nn.Identity)
    assert (units[0].conv.bias is None) == post
    assert isinstance(units[0].bn, nn.BatchNorm2d) == post
    assert all(isinstance(u.bn_in, nn.BatchNorm2d) for u in units[1:])
    if post:  # built before Ultralytics' weight init, so the new BatchNorm has YOLOv5's eps
        assert units[0].bn.eps == units[1].bn_in.eps
    m.train()
    m(torch.randn(2, 3, 64, 64))  # one training pass: the stem BatchNorm gets statistics
    if style.endswith("statstem"):  # the stem conv needs no input gradient: nothing before it learns
        x = torch.randn(2, 3, 64, 64)
        assert not units[0].bn_in(x).requires_grad
    m.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = m(x)[0]
        err = (copy.deepcopy(m).fuse(verbose=False)(x)[0] - y).abs().max() / y.abs().max()
    # relative to the largest output (box coordinates in pixels): the DFL softmax amplifies float32 rounding in
    # single elements (0.0039 px of 8.8 in one of 588 with the RNG state of a test run); a broken fold is off by ~1
    assert err < 1e-4


def test_the_default_style_builds_a_yolo_model(tmp_path):
    """Every style's unit keywords reach DeroConv (the default's ``depthwise_bias`` included)."""
    text = (CFG / "yolov5n-dero.yaml").read_text().replace("dero_style: identity", "dero_style: default")
    (tmp_path / "yolov5n-y.yaml").write_text(text)
    m = DeroDetectionModel(tmp_path / "yolov5n-y.yaml", nc=3, verbose=False).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64))[0].shape[1] == 4 + 3
