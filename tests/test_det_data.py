"""Built-in shapes data, data-YAML resolution (COCO path logic), label pre-scan, pycocotools id mapping."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import yolo_dero.ultra  # noqa: F401  (offline Ultralytics environment before any ultralytics import)
from yolo_dero.datasets import DatasetError, generate_shapes, resolve_data, scan_labels
from yolo_dero.datasets.resolve import image_files
from yolo_dero.datasets.shapes import CLASSES, render_image
from yolo_dero.paths import REPO_ROOT


def _digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "data.yaml":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_shapes_generator_is_deterministic_and_consistent(tmp_path):
    a = generate_shapes(tmp_path / "a", n_train=6, n_val=4, imgsz=96, seed=3)
    b = generate_shapes(tmp_path / "b", n_train=6, n_val=4, imgsz=96, seed=3)
    assert _digest(a.parent) == _digest(b.parent)
    d = yaml.safe_load(a.read_text())
    assert Path(d["path"]).is_absolute() and d["names"] == dict(enumerate(CLASSES))
    coco = json.loads((a.parent / "annotations" / "instances_val.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == sorted(p.name for p in (a.parent / "images/val").iterdir())
    assert all(im["id"] == int(Path(im["file_name"]).stem) for im in coco["images"])  # Ultralytics' int(stem)
    n_labels = sum(len(p.read_text().splitlines()) for p in (a.parent / "labels/val").iterdir())
    assert n_labels == len(coco["annotations"]) > 0
    assert {c["id"] for c in coco["categories"]} == set(range(1, len(CLASSES) + 1))
    # second call with the same parameters reuses the data; other parameters regenerate it
    mtime = (a.parent / "DONE").stat().st_mtime_ns
    generate_shapes(tmp_path / "a", n_train=6, n_val=4, imgsz=96, seed=3)
    assert (a.parent / "DONE").stat().st_mtime_ns == mtime
    generate_shapes(tmp_path / "a", n_train=5, n_val=4, imgsz=96, seed=3)
    assert len(list((a.parent / "images/train").iterdir())) == 5


def test_shapes_have_several_classes_scales_and_overlaps():
    rng = np.random.default_rng(0)
    classes, sizes, overlaps = set(), [], 0
    for _ in range(60):
        _, boxes = render_image(rng, 160)
        classes |= {b[0] for b in boxes}
        sizes += [max(b[3] - b[1], b[4] - b[2]) for b in boxes]
        for i, p in enumerate(boxes):
            for q in boxes[i + 1:]:
                overlaps += (min(p[3], q[3]) > max(p[1], q[1])) and (min(p[4], q[4]) > max(p[2], q[2]))
    assert classes == set(range(len(CLASSES)))
    assert min(sizes) < 0.12 * 160 and max(sizes) > 0.4 * 160
    assert overlaps > 5


def test_resolve_shapes_yaml_writes_absolute_resolved_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("DERO_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "tiny.yaml"
    src.write_text("builtin: shapes\ncache_name: tiny\nn_train: 3\nn_val: 2\nimgsz: 64\nseed: 1\n"
                   "download: https://example.com/should-be-dropped.zip\n")
    rd = resolve_data(src)
    d = yaml.safe_load(rd.yaml_path.read_text())
    assert rd.yaml_path.parent == tmp_path / "cache" / "data"
    assert d["path"] == str(tmp_path / "cache" / "tiny") and "download" not in d
    assert rd.coco_json == tmp_path / "cache" / "tiny" / "annotations" / "instances_val.json"
    assert rd.category_ids == list(range(1, 7)) and rd.nc == 6


def test_data_yaml_found_relative_to_repo(monkeypatch, tmp_path):
    from yolo_dero.datasets.resolve import find_data_yaml

    monkeypatch.chdir(tmp_path)
    assert find_data_yaml("data/coco.yaml") == REPO_ROOT / "data" / "coco.yaml"
    with pytest.raises(DatasetError, match="nope.yaml"):
        find_data_yaml("data/nope.yaml")
    assert find_data_yaml("shapes") == find_data_yaml("shapes.yaml") == REPO_ROOT / "data" / "shapes.yaml"
    # a mistyped path never falls back to the project's own file of the same name
    for wrong in ("/nonexistent/shapes.yaml", "elsewhere/shapes.yaml"):
        with pytest.raises(DatasetError, match="not found"):
            find_data_yaml(wrong)


def test_builtin_photo_digits_yaml_resolves_to_the_real_image_set(monkeypatch, tmp_path):
    from yolo_dero.datasets import resolve_data

    monkeypatch.setenv("DERO_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "pd.yaml"
    src.write_text("builtin: photo_digits\ncache_name: pd\nn_train: 4\nn_val: 2\nimgsz: 64\nseed: 0\n")
    rd = resolve_data(src)
    assert rd.nc == 10 and rd.root == tmp_path / "cache" / "pd" and rd.coco_json.is_file()
    assert len(list((rd.root / "images" / "train").glob("*.jpg"))) == 4


def test_builtin_datasets_have_cache_folders_of_their_own():
    """The detection photo-digits set once shared its cache folder with the classification benchmark: generating one
    replaced the other under a running training. Every built-in set must own its folder."""
    import yaml

    from classification.data import PHOTO_DIGITS_DIRNAME

    folders = [PHOTO_DIGITS_DIRNAME]
    for f in sorted((REPO_ROOT / "data").glob("*.yaml")):
        d = yaml.safe_load(f.read_text())
        if "builtin" in d:
            folders.append(str(d.get("cache_name", d["builtin"])))
    assert len(folders) == len(set(folders)), folders


def test_coco_yaml_has_no_download_and_the_80_to_91_map():
    from ultralytics.data.converter import coco80_to_coco91_class

    from yolo_dero.ultra.cocoeval import COCO80_TO_91

    d = yaml.safe_load((REPO_ROOT / "data" / "coco.yaml").read_text())
    assert "download" not in d and d["path_env"] == "DERO_COCO_DIR"
    assert d["coco_category_ids"] == coco80_to_coco91_class() == COCO80_TO_91
    assert len(d["names"]) == 80


def test_missing_coco_names_the_expected_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("DERO_COCO_DIR", str(tmp_path / "nowhere" / "coco"))
    with pytest.raises(DatasetError) as e:
        resolve_data("data/coco.yaml")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "coco") in msg and "$DERO_COCO_DIR" in msg
    assert "val2017.txt" in msg and "images/val2017/" in msg and "annotations/instances_val2017.json" in msg
    (tmp_path / "c" / "coco").mkdir(parents=True)  # root there, lists missing
    with pytest.raises(DatasetError, match=r"missing '.*c/coco/val2017.txt'"):
        resolve_data("data/coco.yaml", data_path=tmp_path / "c" / "coco", splits=("val",))


def _coco_like(root: Path, n: int = 4) -> Path:
    """A tiny dataset laid out like COCO 2017 (Ultralytics layout + COCO's own annotations JSON)."""
    import cv2

    from ultralytics.data.converter import coco80_to_coco91_class

    m91 = coco80_to_coco91_class()
    cls_of_shape = [0, 11, 24, 56, 73, 79]  # person(1), stop sign(13), backpack(27), chair(62), book(84), toothbrush(90)
    for split in ("train2017", "val2017"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    images, anns, lines = [], [], []
    rng = np.random.default_rng(7)
    for i in range(n):
        img, boxes = render_image(rng, 128)
        image_id = 139 + 1000 * i
        stem = f"{image_id:012d}"
        for split in ("train2017", "val2017"):
            cv2.imwrite(str(root / "images" / split / f"{stem}.jpg"), img)
        rows = []
        for c, x1, y1, x2, y2 in boxes:
            k = cls_of_shape[c]
            rows.append(f"{k} {(x1 + x2) / 256:.6f} {(y1 + y2) / 256:.6f} {(x2 - x1) / 128:.6f} {(y2 - y1) / 128:.6f}")
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": m91[k], "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        for split in ("train2017", "val2017"):
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(rows) + "\n")
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": 128, "height": 128})
        lines.append(f"./images/val2017/{stem}.jpg")
    (root / "val2017.txt").write_text("\n".join(lines) + "\n")
    (root / "train2017.txt").write_text("\n".join(x.replace("val2017", "train2017") for x in lines) + "\n")
    (root / "annotations").mkdir(exist_ok=True)
    names = yaml.safe_load((REPO_ROOT / "data" / "coco.yaml").read_text())["names"]
    cats = [{"id": m91[k], "name": names[k]} for k in range(80)]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return _coco_like(tmp_path_factory.mktemp("c") / "coco")


def test_coco_layout_resolves_from_env_and_data_path(coco_root, monkeypatch):
    from yolo_dero.ultra.cocoeval import COCO80_TO_91, ultralytics_class_map

    monkeypatch.setenv("DERO_COCO_DIR", str(coco_root))
    rd = resolve_data("data/coco.yaml", need_coco_json=True)
    assert rd.root == coco_root and rd.coco_json == coco_root / "annotations" / "instances_val2017.json"
    d = yaml.safe_load(rd.yaml_path.read_text())
    assert d["path"] == str(coco_root) and "path_env" not in d
    assert ultralytics_class_map(d, 80) == COCO80_TO_91  # Ultralytics treats it as COCO: 80->91 ids in its json
    monkeypatch.delenv("DERO_COCO_DIR")
    rd2 = resolve_data("data/coco.yaml", data_path=coco_root, splits=("val",))
    assert rd2.root == coco_root
    assert len(image_files(rd2.root, rd2.data["val"])) == 4


def _perfect_predictions(gt: dict, class_map, to_class) -> list:
    """predictions.json as Ultralytics writes it: image_id int(stem), category_id class_map[class]."""
    by_id = {im["id"]: im for im in gt["images"]}
    out = []
    for a in gt["annotations"]:
        stem = Path(by_id[a["image_id"]]["file_name"]).stem
        out.append({"image_id": int(stem), "file_name": by_id[a["image_id"]]["file_name"],
                    "category_id": class_map[to_class[a["category_id"]]], "bbox": a["bbox"], "score": 0.9})
    return out


def test_pycocotools_with_coco_category_map(coco_root):
    """Ultralytics writes 80->91 ids for COCO; a prediction of class k must meet GT category coco91[k]."""
    from yolo_dero.ultra.cocoeval import COCO80_TO_91, evaluate

    gt = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    to_class = {c: k for k, c in enumerate(COCO80_TO_91)}
    names = dict(enumerate(c["name"] for c in gt["categories"]))
    preds = _perfect_predictions(gt, COCO80_TO_91, to_class)
    files = [str(coco_root / "images/val2017" / im["file_name"]) for im in gt["images"]]
    r = evaluate(preds, coco_root / "annotations/instances_val2017.json", COCO80_TO_91, COCO80_TO_91, names, files)
    assert r["map50_95"] == pytest.approx(1.0) and r["map50"] == pytest.approx(1.0)
    assert r["unmatched_predictions"] == 0 and r["n_images"] == 4
    # mapping by name gives the same result
    r2 = evaluate(preds, coco_root / "annotations/instances_val2017.json", COCO80_TO_91, None, names, files)
    assert r2["map50_95"] == pytest.approx(1.0)
    # the wrong (index + 1) map names categories COCO does not have: a clear error, not a silent low mAP
    with pytest.raises(ValueError, match=r"category ids \[12, 26, 29, 30, 45\] are not in"):
        evaluate(preds, coco_root / "annotations/instances_val2017.json", COCO80_TO_91, list(range(1, 81)), names,
                 files)


def test_pycocotools_on_shapes_ground_truth(tmp_path):
    from yolo_dero.ultra.cocoeval import evaluate

    y = generate_shapes(tmp_path / "s", n_train=1, n_val=5, imgsz=96, seed=0)
    gt_path = y.parent / "annotations" / "instances_val.json"
    gt = json.loads(gt_path.read_text())
    preds = _perfect_predictions(gt, list(range(1, 7)), {c: c - 1 for c in range(1, 7)})
    preds.append({**preds[0], "bbox": [0, 0, 5, 5], "score": 0.01})  # a low-score false positive
    r = evaluate(preds, gt_path, list(range(1, 7)), list(range(1, 7)), dict(enumerate(CLASSES)),
                 image_files(y.parent, "images/val"))
    assert r["map50"] == pytest.approx(1.0) and r["map50_95"] == pytest.approx(1.0)


def test_label_prescan_names_file_and_line(tmp_path):
    y = generate_shapes(tmp_path / "s", n_train=3, n_val=1, imgsz=64, seed=0)
    lab = sorted((y.parent / "labels/train").iterdir())
    lab[0].write_text("0 0.5 0.5 0.2 0.2\n9 0.5 0.5 0.2 0.2\n")
    lab[1].write_text("1 0.5 0.5 0.2 0.2\n\n2 1.3 0.5 0.2 0.2\n3 1.005 0.5 0.2 0.2\nx y\n")
    issues, n = scan_labels(y.parent, "images/train", 6)
    got = {(Path(i.file).name, i.line, i.action) for i in issues}
    assert n == 3
    assert got == {(lab[0].name, 2, "image skipped"), (lab[1].name, 3, "image skipped"),
                   (lab[1].name, 4, "box clipped"), (lab[1].name, 5, "image skipped")}
    assert any("class 9 out of range 0-5" in str(i) for i in issues)


def test_label_prescan_catches_nan_and_refuses_when_every_image_is_bad(tmp_path):
    from yolo_dero.ultra.evaluate import report_label_issues

    y = generate_shapes(tmp_path / "s", n_train=2, n_val=1, imgsz=64, seed=0)
    lab = sorted((y.parent / "labels/train").iterdir())
    lab[0].write_text("0 nan 0.5 0.2 0.2\n")
    issues, _ = scan_labels(y.parent, "images/train", 6)
    assert [(Path(i.file).name, i.line, i.action) for i in issues] == [(lab[0].name, 1, "image skipped")]
    assert "non-finite" in issues[0].message
    rd = resolve_data(str(y))
    assert report_label_issues(rd, splits=("train",)) == 1  # one of two images bad: reported, training goes on
    lab[1].write_text("7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError, match="every one of the 2 images"):
        report_label_issues(rd, splits=("train",))


def test_label_prescan_names_empty_and_unreadable_images(tmp_path):
    y = generate_shapes(tmp_path / "s", n_train=3, n_val=1, imgsz=64, seed=0)
    imgs = sorted((y.parent / "images/train").iterdir())
    imgs[0].write_bytes(b"")
    imgs[1].write_bytes(b"not a jpeg at all")
    issues, _ = scan_labels(y.parent, "images/train", 6)
    got = {Path(i.file).name: (str(i), i.action) for i in issues}
    assert set(got) == {imgs[0].name, imgs[1].name}
    assert "empty image file" in got[imgs[0].name][0] and "not a readable image" in got[imgs[1].name][0]
    assert issues[0].label_file.endswith(".txt") and ":0:" not in str(issues[0])



def test_label_prescan_names_images_truncated_after_a_valid_header(tmp_path):
    """A JPEG or PNG cut short after its header: PIL opens it, decoding fails. Ultralytics skips such an image (its
    own check re-saves a JPEG without an end marker, which fails); the pre-scan names the file and the cause."""
    from PIL import Image

    from yolo_dero.ultra.evaluate import report_label_issues

    y = generate_shapes(tmp_path / "s", n_train=3, n_val=1, imgsz=64, seed=0)
    imgs = sorted((y.parent / "images/train").iterdir())
    data = imgs[0].read_bytes()
    imgs[0].write_bytes(data[:len(data) // 2])
    with Image.open(imgs[0]) as im:
        assert im.size == (64, 64)  # the header is intact
    png = imgs[1].with_suffix(".png")
    Image.open(imgs[1]).save(png)
    imgs[1].unlink()
    (y.parent / "labels/train" / imgs[1].with_suffix(".txt").name).rename(y.parent / "labels/train" / f"{png.stem}.txt")
    png.write_bytes(png.read_bytes()[:len(png.read_bytes()) // 2])
    issues, _ = scan_labels(y.parent, "images/train", 6)
    got = {Path(i.file).name: (str(i), i.action) for i in issues}
    assert set(got) == {imgs[0].name, png.name}, got
    for name in got:
        assert "truncated or corrupt image data, cannot be decoded" in got[name][0] and got[name][1] == "image skipped"
    # the untouched image still passes, with no decode of intact files needed
    rd = resolve_data(str(y))
    assert report_label_issues(rd, splits=("train",)) == 2
    imgs[2].write_bytes(imgs[2].read_bytes()[:200])
    with pytest.raises(DatasetError, match="every one of the 3 images is an unreadable image file .* replace the "
                                           "image files listed above$"):
        report_label_issues(rd, splits=("train",))
