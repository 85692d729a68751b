"""Bad command-line input gives one line naming the problem and the fix, exit code 2, no traceback (issue 14,
items 11 and 12). Every check runs before any heavy work (data generation, model build, export)."""

from __future__ import annotations

import pytest

# Ultralytics' logger binds the stderr of the moment it is imported: import it here, not inside a test's capsys
import yolo_dero.ultra  # noqa: F401


def _one_line_error(capsys, code: int, *words: str) -> str:
    """The captured stderr's error line; asserts exit code 2, no traceback and the key words."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "no error message"
    line = lines[-1]
    for w in words:
        assert w in line, f"{w!r} not in {line!r}"
    return line


# ---------------------------------------------------------------------------------------- 1. --epochs 0 / negative


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--epochs", "-3"], ["epochs=0"], ["--imgsz", "0"]])
def test_train_det_epochs_below_one(argv, tmp_path, capsys):
    from yolo_dero.ultra.cli import train_main

    code = train_main([*argv, "--project", str(tmp_path)])
    flag = argv[0].lstrip("-").split("=")[0]
    _one_line_error(capsys, code, f"--{flag}", "at least 1", "pass e.g.")
    assert not any(tmp_path.iterdir())  # nothing started


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_classification_epochs_below_one(flag, value, tmp_path, capsys):
    from classification.train import main

    code = main([flag, value, "--device", "cpu", "--data-path", str(tmp_path / "nowhere")])
    _one_line_error(capsys, code, f"{flag} {value}", "at least 1", "pass e.g.")


# ---------------------------------------------------------------------------------------- 2. --imgsz 0 / negative


@pytest.mark.parametrize("imgsz", [["0"], ["-32"], ["224", "0"]])
def test_memory_imgsz_below_one(imgsz, capsys):
    from yolo_dero.memory.__main__ import main

    code = main(["--model", "resnet34", "--imgsz", *imgsz])
    _one_line_error(capsys, code, "--imgsz", "at least 1", "pass e.g.")


@pytest.mark.parametrize("imgsz", ["0", "-96"])
def test_mcu_export_imgsz_below_one(imgsz, tmp_path, capsys):
    from yolo_dero.mcu.__main__ import main

    out = tmp_path / "m.tflite"
    code = main(["export", "--model", "mcunet_v4_dero", "--imgsz", imgsz, "--out", str(out)])
    _one_line_error(capsys, code, f"--imgsz {imgsz}", "at least 1", "pass e.g.")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------- 3. not a TFLite file: arena / plan


@pytest.mark.parametrize("cmd", ["arena", "plan"])
@pytest.mark.parametrize("content", [b"hello\n", bytes(range(256)) * 20, b""])
def test_mcu_non_tflite_file(cmd, content, tmp_path, capsys):
    from yolo_dero.mcu.__main__ import main

    f = tmp_path / "model.tflite"
    f.write_bytes(content)
    extra = ["--out", str(tmp_path / "planned.tflite")] if cmd == "plan" else []
    code = main([cmd, str(f), *extra])
    _one_line_error(capsys, code, str(f), "not a TFLite flatbuffer", "TFL3")
    assert not (tmp_path / "planned.tflite").exists()


@pytest.mark.parametrize("cmd", ["arena", "plan"])
def test_mcu_missing_tflite_file(cmd, tmp_path, capsys):
    from yolo_dero.mcu.__main__ import main

    f = tmp_path / "missing.tflite"
    code = main([cmd, str(f), *(["--out", str(tmp_path / "p.tflite")] if cmd == "plan" else [])])
    _one_line_error(capsys, code, str(f), "no such file")


# ------------------------------------------------------------------------------- 4. corrupt .pt: memory analyzer


@pytest.mark.parametrize("content", [b"\x00not a checkpoint" * 10, b"PK\x03\x04truncated zip"])
def test_memory_corrupt_checkpoint(content, tmp_path, capsys):
    from yolo_dero.memory.__main__ import main

    f = tmp_path / "broken.pt"
    f.write_bytes(content)
    code = main(["--model", str(f), "--imgsz", "32"])
    _one_line_error(capsys, code, str(f), "not a readable PyTorch checkpoint")


# ------------------------------------------------------------------------------- 5. unknown key=value: train_det.py


@pytest.mark.parametrize("token, words", [("foo=1", ["'foo'", "unknown Ultralytics option", "--help"]),
                                          ("hsv_hh=0.1", ["'hsv_hh'", "did you mean hsv_h"]),
                                          ("cos_lr", ["'cos_lr'", "key=value", "--help"])])
def test_train_det_unknown_option(token, words, tmp_path, capsys):
    from yolo_dero.ultra.cli import train_main

    code = train_main([token, "--project", str(tmp_path)])
    _one_line_error(capsys, code, *words)
    assert not any(tmp_path.iterdir())


def test_train_det_known_options_pass_validation():
    from yolo_dero.ultra.cli import _extra

    assert _extra(["hsv_h=0.0", "cos-lr=True", "degrees=5"]) == {"hsv_h": 0.0, "cos_lr": True,
                                                                            "degrees": 5}


# ---------------------------------------------------------------------- 6. nc != len(names); 8. --data is a folder


def _yaml(tmp_path, text, with_images: bool = True):
    for split in ("train", "val"):
        (tmp_path / "ds" / "images" / split).mkdir(parents=True)
        if with_images:  # the split check looks for image files by name only
            (tmp_path / "ds" / "images" / split / "0.jpg").write_bytes(b"")
    f = tmp_path / "my.yaml"
    f.write_text(f"path: {tmp_path / 'ds'}\ntrain: images/train\nval: images/val\n{text}")
    return f


@pytest.mark.parametrize("names", ["[a, b]", "{0: a, 1: b}"])
def test_det_nc_names_mismatch(names, tmp_path, capsys):
    from yolo_dero.ultra.cli import train_main, val_main

    data = _yaml(tmp_path, f"nc: 3\nnames: {names}\n")
    code = train_main(["--data", str(data), "--project", str(tmp_path / "runs")])
    _one_line_error(capsys, code, str(data), "nc: 3", "2 classes")
    assert not (tmp_path / "runs").exists()
    code = val_main(["--weights", str(tmp_path / "w.pt"), "--data", str(data)])
    assert code == 2  # the missing weights or the YAML: either way one line


def test_det_nc_names_agree_resolves(tmp_path, monkeypatch):
    monkeypatch.setenv("DERO_CACHE_DIR", str(tmp_path / "cache"))
    from yolo_dero.datasets import resolve_data

    rd = resolve_data(_yaml(tmp_path, "nc: 2\nnames: [a, b]\n"))
    assert rd.nc == 2


def test_det_data_is_a_folder(tmp_path, capsys):
    from yolo_dero.ultra.cli import train_main

    folder = tmp_path / "coco"
    folder.mkdir()
    code = train_main(["--data", str(folder), "--project", str(tmp_path / "runs")])
    _one_line_error(capsys, code, str(folder), "is a folder", "data YAML", "--data-path")


def test_malformed_data_and_model_yaml(tmp_path, capsys):
    from yolo_dero.ultra.cli import train_main

    bad = _yaml(tmp_path, "names: [a, b\n")  # unclosed flow sequence
    code = train_main(["--data", str(bad), "--project", str(tmp_path / "runs")])
    _one_line_error(capsys, code, str(bad), "not valid YAML", "line")
    model = tmp_path / "yolov5n-bad.yaml"
    model.write_text("nc: 3\nbackbone: [[-1, 1, Conv, [64, 6, 2, 2]]\n")
    code = train_main(["--model", str(model), "--project", str(tmp_path / "runs")])
    _one_line_error(capsys, code, str(model), "not valid YAML", "line")


# ---------------------------------------------------------------- 7. a detection .pt as classification --weights


def test_classification_weights_from_detection(tmp_path, capsys):
    import torch

    from classification.data import make_shapes_dataset
    from classification.train import main
    from yolo_dero.ultra import DeroDetectionModel

    data = make_shapes_dataset(tmp_path / "cls", train_per_class=1, val_per_class=1, size=16, num_classes=2)
    det = tmp_path / "best.pt"
    torch.save({"model": DeroDetectionModel("cfg/yolov5n-dero.yaml", nc=2, verbose=False).half(),
                "train_args": {"imgsz": 64, "task": "detect"}, "epoch": -1, "optimizer": None}, det)
    code = main(["--weights", str(det), "--test-only", "--device", "cpu", "--data-path", str(data), "-j", "0",
                 "--model", "mcunet_v4_dero", "--val-resize-size", "16", "--val-crop-size", "16",
                 "--output-dir", str(tmp_path / "out")])
    line = _one_line_error(capsys, code, str(det), "Ultralytics detection checkpoint", "val_det.py",
                           "not a classification")
    assert "weights_only=False" not in line


def test_classification_unreadable_weights_one_line(tmp_path):
    from classification.train import UserError, read_file

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage" * 20)
    with pytest.raises(UserError) as ei:
        read_file(str(bad), "--weights")
    assert "\n" not in str(ei.value) and str(bad) in str(ei.value) and "corrupt" in str(ei.value)


def test_det_split_without_images(tmp_path, capsys):
    from yolo_dero.ultra.cli import train_main

    data = _yaml(tmp_path, "names: [a, b]\n", with_images=False)  # images/train and images/val exist, empty
    code = train_main(["--data", str(data), "--project", str(tmp_path / "runs")])
    _one_line_error(capsys, code, "holds no images", "images")


def test_visualize_skips_a_nan_label_line_naming_the_file(tmp_path, capsys):
    from yolo_dero.visualize import read_ground_truth

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 nan 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n")
    boxes = read_ground_truth(tmp_path / "images" / "a.jpg", 100, 100)
    assert len(boxes.cls) == 1 and int(boxes.cls[0]) == 1
    out = capsys.readouterr().out
    assert "a.txt:1" in out and "line skipped" in out


def test_train_det_device_and_project_checked_before_work(tmp_path, capsys):
    import torch

    from yolo_dero.ultra.cli import train_main

    n = torch.cuda.device_count()
    code = train_main(["--device", str(n + 7), "--epochs", "1", "--project", str(tmp_path / "runs")])
    _one_line_error(capsys, code, f"--device {n + 7}", "--device cpu")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = train_main(["--epochs", "1", "--project", str(blocker / "runs")])
    _one_line_error(capsys, code, "--project", "cannot create or write")

