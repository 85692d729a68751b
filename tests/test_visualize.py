"""yolo_dero.visualize: one PNG per image, Ground truth | model columns, images without labels, index page."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import yolo_dero.ultra  # noqa: F401  (offline Ultralytics first)
from yolo_dero import visualize as vis
from yolo_dero.ultra.model import DeroDetectionModel

NAMES = {0: "circle", 1: "square"}


def save_checkpoint(yaml: str, path: Path, imgsz: int = 64, map_value=None) -> Path:
    """An untrained detection checkpoint in Ultralytics' format (what a trainer's best.pt holds)."""
    torch.manual_seed(0)
    model = DeroDetectionModel(yaml, nc=len(NAMES), verbose=False)
    model.names = dict(NAMES)
    metrics = {} if map_value is None else {"metrics/mAP50-95(B)": map_value}
    torch.save({"model": model.half(), "ema": None, "train_args": {"imgsz": imgsz}, "train_metrics": metrics,
                "epoch": -1, "optimizer": None}, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    return [save_checkpoint("cfg/yolov5n-plain.yaml", d / "plain.pt", map_value=0.25),
            save_checkpoint("cfg/yolov5n-dero.yaml", d / "dero.pt")]


def make_images(root: Path):
    """images/val/{a,b,c}.jpg of different sizes; a: labels, b: empty label file, c: no label file."""
    img_dir, lab_dir = root / "images" / "val", root / "labels" / "val"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"a": (96, 128), "b": (64, 64), "c": (80, 40)}  # (h, w)
    for stem, (h, w) in sizes.items():
        cv2.imwrite(str(img_dir / f"{stem}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (lab_dir / "a.txt").write_text("0 0.5 0.5 0.4 0.4\n1 0.2 0.3 0.1 0.2\n")
    (lab_dir / "b.txt").write_text("")
    return img_dir, sizes


def expected_width(h: int, w: int, columns: int) -> int:
    panel = max(1, round(w * vis.PANEL_HEIGHT / h))
    return columns * panel + (columns - 1) * 4


def test_one_png_per_image_with_columns(tmp_path, weights):
    img_dir, sizes = make_images(tmp_path / "data")
    out = tmp_path / "out"
    pics = vis.visualize(weights, str(img_dir), out, labels=["plain", "dero"], conf=0.0)
    assert sorted(p.name for p in pics) == ["a.png", "b.png", "c.png"]
    for p in pics:
        h, w = sizes[p.stem]
        img = cv2.imread(str(p))
        n_cols = 2 if p.stem == "c" else 3  # c has no label file: no ground-truth column
        assert img.shape[0] == vis.PANEL_HEIGHT + vis.HEADER_HEIGHT
        assert img.shape[1] == expected_width(h, w, n_cols), (p.name, img.shape)
    index = (out / "index.html").read_text()
    assert all(f'src="{p.name}"' in index for p in pics)
    assert "Ground truth" in index and "plain  mAP50-95 0.250" in index and "dero" in index


def test_single_model_folder_without_labels(tmp_path, weights):
    img_dir = tmp_path / "plain_images"
    img_dir.mkdir()
    cv2.imwrite(str(img_dir / "x.png"), np.full((50, 100, 3), 127, np.uint8))
    pics = vis.visualize(weights[1:], str(img_dir), tmp_path / "out", max_images=5)
    img = cv2.imread(str(pics[0]))
    assert len(pics) == 1 and img.shape[1] == expected_width(50, 100, 1)


def test_data_yaml_source_and_cli_errors(tmp_path, weights, monkeypatch, capsys):
    monkeypatch.setenv("DERO_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "tiny.yaml"
    data.write_text("builtin: shapes\ncache_name: tiny_vis\nn_train: 2\nn_val: 2\nimgsz: 64\nseed: 0\n")
    # the built-in data has six classes; names come from the data YAML
    out = tmp_path / "out"
    vis.main(["--weights", *map(str, weights), "--labels", "plain", "dero", "--source", str(data),
              "--max-images", "1", "--out", str(out)])
    pngs = list(out.glob("*.png"))
    assert len(pngs) == 1
    assert cv2.imread(str(pngs[0])).shape[1] == expected_width(64, 64, 3)
    with pytest.raises(SystemExit):
        vis.main(["--weights", str(weights[0]), "--labels", "a", "b", "--source", str(tmp_path), "--out", str(out)])
    with pytest.raises(SystemExit):
        vis.main(["--weights", str(weights[0]), "--source", str(tmp_path / "nothing"), "--out", str(out)])


def test_coco_layout_via_data_yaml(tmp_path, weights):
    """data/coco.yaml on a local COCO-layout root (image list val2017.txt, images/ and labels/): COCO class names."""
    root = tmp_path / "coco"
    (root / "images" / "val2017").mkdir(parents=True)
    (root / "labels" / "val2017").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "val2017" / "000000000139.jpg"), np.full((60, 80, 3), 90, np.uint8))
    (root / "labels" / "val2017" / "000000000139.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "val2017.txt").write_text("./images/val2017/000000000139.jpg\n")
    out = tmp_path / "out"
    pics = vis.visualize(weights, "data/coco.yaml", out, max_images=4, data_path=str(root))
    assert len(pics) == 1 and cv2.imread(str(pics[0])).shape[1] == expected_width(60, 80, 3)
