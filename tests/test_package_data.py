"""The model and data YAMLs ship as package data: a wheel built from this checkout holds ``yolo_dero/cfg/*.yaml`` and
``yolo_dero/data/*.yaml``, and, installed elsewhere (no checkout around it), builds ``DeroYOLO("yolov5n-dero.yaml")``
and finds ``data/shapes.yaml`` from any working directory."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from yolo_dero.paths import PACKAGE_DIR, REPO_ROOT, shipped


def test_package_links_show_the_repository_yamls():
    for kind in ("cfg", "data"):
        assert shipped(kind) == REPO_ROOT / kind
        assert sorted(p.name for p in (PACKAGE_DIR / kind).glob("*.yaml")) == \
            sorted(p.name for p in (REPO_ROOT / kind).glob("*.yaml"))


def test_model_yaml_by_name_from_another_cwd(tmp_path, monkeypatch):
    from yolo_dero.ultra.parser import resolve_model_yaml

    monkeypatch.chdir(tmp_path)
    assert resolve_model_yaml("yolov5n-dero.yaml") == (REPO_ROOT / "cfg" / "yolov5n-dero.yaml").resolve()


SCRIPT = """
import sys
from pathlib import Path
import yolo_dero
site = Path(sys.argv[1]).resolve()
assert Path(yolo_dero.__file__).resolve().is_relative_to(site), yolo_dero.__file__  # the wheel's copy, no checkout
from yolo_dero.paths import shipped
assert shipped("cfg") == site / "yolo_dero" / "cfg", shipped("cfg")
from yolo_dero.ultra import DeroYOLO
from yolo_dero.datasets.resolve import find_data_yaml
print(type(DeroYOLO("yolov5n-dero.yaml").model).__name__, type(DeroYOLO().model).__name__)
print(find_data_yaml("data/shapes.yaml").relative_to(site), find_data_yaml("photo_digits").relative_to(site))
"""


@pytest.mark.slow
def test_wheel_works_outside_the_checkout(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "cfg", "data", "yolo_dero", "classification"):
        p = REPO_ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(p, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for kind in ("cfg", "data"):
        assert {f"yolo_dero/{kind}/{p.name}" for p in (REPO_ROOT / kind).glob("*.yaml")} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "DERO_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(site)], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "DeroDetectionModel DeroDetectionModel" in r.stdout
    assert "yolo_dero/data/shapes.yaml yolo_dero/data/photo_digits.yaml" in r.stdout, r.stdout
