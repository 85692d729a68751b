"""`python -m yolo_dero.mcu export` calibrates on real images by default (the built-in photo_digits val images,
generated locally), `--calib synthetic` on noise; the library default `export_tflite(calib=None)` stays noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from yolo_dero.mcu import export as ex


@pytest.fixture()
def cache(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.getbasetemp() / "calib_cache"
    monkeypatch.setenv("DERO_CACHE_DIR", str(d))
    return d


def test_cli_default_is_real_images(cache):
    src = ex.cli_calibration_source(None)
    assert Path(src).is_file() and Path(src).name == "photo_digits.yaml"
    files = ex._image_files(src)
    assert len(files) == 128 and all(f.is_file() and f.suffix == ".jpg" for f in files)
    assert all(Path(cache) in f.parents and "val" in f.parts for f in files)
    imgs = ex.calibration_images(src, 32, num=3)
    assert [tuple(t.shape) for t in imgs] == [(1, 32, 32, 3)] * 3  # resized to the model input
    # real photographs, not uniform noise: neighbouring pixels are strongly correlated
    a = imgs[0][0].numpy()
    assert np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1] > 0.5
    noise = ex.calibration_images(None, 32, num=1)[0][0].numpy()
    assert abs(np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]) < 0.2


def test_cli_calib_choices_pass_through(monkeypatch, tmp_path):
    assert ex.cli_calibration_source("synthetic") == "synthetic"
    assert ex.cli_calibration_source("path/to/images") == "path/to/images"
    seen = {}

    def fake_export(model, imgsz, out, calib=None, **kw):
        seen["calib"] = calib
        raise RuntimeError("stop here")

    from yolo_dero.mcu import __main__ as cli

    monkeypatch.setattr(cli, "export_tflite", fake_export)
    monkeypatch.setattr(cli, "require", lambda *a: None)
    with pytest.raises(RuntimeError, match="stop here"):
        cli.main(["export", "--model", "mcunet_v4_plain", "--imgsz", "32", "--out", str(tmp_path / "m.tflite"),
                  "--no-plan"])
    assert seen["calib"] == ex.cli_calibration_source(None)
