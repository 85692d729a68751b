"""The deployed detector's accuracy path (yolo_dero.mcu.detect_eval): the raw head maps of the exported graph,
decoded by the model's own Detect layer, scored by Ultralytics' validator and pycocotools like a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from mcu_support import require_mcu_packages  # tests/mcu_support.py

require_mcu_packages()

from yolo_dero import study  # noqa: E402
from yolo_dero.datasets import generate_shapes  # noqa: E402
from yolo_dero.mcu import export_tflite  # noqa: E402
from yolo_dero.mcu.detect_eval import (  # noqa: E402
    DeployedDetector,
    LiteRTRaw,
    torch_raw,
    train_images,
)
from yolo_dero.ultra import DeroDetectionModel  # noqa: E402
from yolo_dero.ultra.evaluate import evaluate_module  # noqa: E402


def _detector(nc: int = 3, bias: float = 0.0, images=None):
    """The default DERO detector, untrained; a class bias of 3 makes every anchor a confident box (so the validator
    has predictions to score) without training."""
    torch.manual_seed(0)
    model = DeroDetectionModel("cfg/yolov5n-dero-rep-c3.yaml", nc=nc, verbose=False)
    with torch.no_grad():
        for seq in model.model[-1].cv3:
            seq[-1].bias.fill_(bias)
        # BatchNorm statistics of images, as training leaves them: untrained statistics let the residual sums
        # grow without bound over depth (maps of 1e6), which no int8 scale represents
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # a cumulative average
        model.train()
        for _ in range(4):
            model(torch.rand(4, 3, 64, 64) if images is None else images)
    return model.eval()


def test_decode_of_raw_maps_equals_the_detect_layer():
    model = _detector()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        want = model(x)[0]
        got = DeployedDetector(model, torch_raw(model))(x)
    assert got.shape == want.shape == (2, 4 + 3, 8 * 12 + 4 * 6 + 2 * 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_deployed_float_scores_like_the_model_itself(tmp_path):
    """Through Ultralytics' own validator, the decoded raw maps give the model's own predictions and mAP."""
    data = generate_shapes(tmp_path / "shapes", n_train=2, n_val=3, imgsz=64, seed=0)
    model = _detector(nc=6, bias=3.0)  # the shapes set's classes
    names = {i: str(i) for i in range(6)}
    native = evaluate_module(model, str(data), 64, names, project=str(tmp_path / "val"), name="native")
    deployed = evaluate_module(DeployedDetector(model, torch_raw(model)), str(data), 64, names,
                               project=str(tmp_path / "val"), name="deployed")
    a, b = (json.loads(open(r["predictions_json"]).read()) for r in (native, deployed))
    assert len(a) == len(b) > 0 and deployed["pycocotools"]["n_images"] == 3
    for p, q in zip(a, b):
        assert p["category_id"] == q["category_id"]
        assert p["bbox"] == pytest.approx(q["bbox"], abs=0.05) and p["score"] == pytest.approx(q["score"], abs=1e-3)
    assert deployed["map50_95"] == pytest.approx(native["map50_95"], abs=1e-4)


def test_int8_tflite_maps_match_the_float_maps_level_by_level(tmp_path):
    """LiteRT's outputs come back dequantized, NCHW and in Detect's level order: close to the float maps (int8
    noise, not a wrong level, layout or scale)."""
    data = generate_shapes(tmp_path / "shapes", n_train=8, n_val=2, imgsz=64, seed=0)
    calib = train_images(str(data), 64, 8)
    assert len(calib) == 8 and calib[0].shape == (1, 64, 64, 3) and 0.0 <= calib[0].min() <= calib[0].max() <= 1.0
    model = _detector(nc=6, images=torch.cat(calib).permute(0, 3, 1, 2))
    path = tmp_path / "d.tflite"
    r = export_tflite(model, 64, path, calib=calib, num_calib=8)
    assert "ADD" not in r.op_counts  # the re-parameterizable units folded: the plain graph's operators
    x = torch.cat([c.permute(0, 3, 1, 2) for c in calib[:2]])
    want = torch_raw(model)(x)
    got = LiteRTRaw(path)(x)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        err = (g - w).abs().mean() / w.abs().mean()
        assert err < 0.1, err
    with pytest.raises(ValueError, match="takes 64x64 images, got 96x96"):
        LiteRTRaw(path)(torch.rand(1, 3, 96, 96))


def test_an_unreadable_calibration_image_is_reported_and_skipped(tmp_path, capsys):
    data = generate_shapes(tmp_path / "shapes", n_train=3, n_val=1, imgsz=64, seed=0)
    bad = sorted((data.parent / "images" / "train").iterdir())[0]
    bad.write_bytes(b"not an image")
    assert len(train_images(str(data), 64, 3)) == 2
    assert f"unreadable image {bad} skipped" in capsys.readouterr().out
    for f in (data.parent / "images" / "train").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(FileNotFoundError, match="none of the 3 training images"):
        train_images(str(data), 64, 3)


def test_study_int8_refuses_arms_of_the_other_kind_and_lists_untrained_runs(tmp_path, capsys):
    base = ["int8", "--budget", "det-x", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]
    assert study.main(base + ["--arch", "yolov5n"]) == 2
    assert "no such budget" in capsys.readouterr().err
    (tmp_path / "out" / "det-x").mkdir(parents=True)
    assert study.main(base + ["--arch", "yolov5n", "--arms", "dero-headnorm"]) == 2
    assert "not a detection arm" in capsys.readouterr().err
    assert study.main(base + ["--arch", "yolov5n", "--arms", "dero-rep-c3par", "--seeds", "0"]) == 1
    err = capsys.readouterr().err
    assert "no trained detector" in err and "python -m yolo_dero.study det --arms dero-rep-c3par --seeds 0" in err


def test_int8_table_has_the_detector_rows(tmp_path):
    for s, (f, q) in enumerate([(50.0, 49.5), (52.0, 51.0)]):
        study._write_json(tmp_path / "det-x" / "yolov5n" / "dero-rep-c3par" / f"int8_seed{s}.json",
                          {"arch": "yolov5n", "arm": "dero-rep-c3par", "seed": s, "trained_map50_95": f + 0.2,
                           "float_map50_95": f, "int8_map50_95": q, "int8_map50": 70.0, "int8_coco_map50_95": q})
    md = study.write_int8_table(tmp_path, "det-x").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| dero-rep-c3par"))
    assert "| 0, 1 | 51.20 ± 1.41 | 51.00 ± 1.41 | 50.25 ± 1.06 | -0.75 ± 0.35 |" in row
