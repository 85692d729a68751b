"""Side-by-side pictures: ground truth | model A | model B ... for each image, plus an index page.

    python -m yolo_dero.visualize --weights plain.pt dero.pt --labels plain dero \\
        --source data/shapes.yaml --max-images 8 --out runs/compare_pictures

``--source`` is a folder of images (ground truth drawn when YOLO label files sit beside them in the
usual ``images/`` -> ``labels/`` layout; images without a label file get no ground-truth column) or a data
YAML (its val split: ``data/shapes.yaml`` is generated on first use, ``data/coco.yaml`` needs a local COCO via
``--data-path`` or ``$DERO_COCO_DIR``). Any number of models >= 1; checkpoints are loaded with ``DeroYOLO``.
Colours are fixed per class, so the same class has the same colour in every column; boxes carry the class
name (and the confidence for predictions); each column header names the model and its mAP50-95 (``--maps``,
else the value its trainer stored in the checkpoint). ``index.html`` shows every picture in a grid.
"""

from __future__ import annotations

import argparse
import html
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

import yolo_dero.ultra  # noqa: F401  (offline Ultralytics set-up; must precede ultralytics)

import cv2
from ultralytics.data.utils import IMG_FORMATS, img2label_paths
from ultralytics.utils.plotting import colors

from yolo_dero.fileutil import output_problem

PANEL_HEIGHT = 320
HEADER_HEIGHT = 28
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class Boxes:
    """Boxes of one image in original pixels: ``xyxy`` (n, 4), ``cls`` (n,), ``conf`` (n,) or None for ground truth."""

    xyxy: np.ndarray
    cls: np.ndarray
    conf: Optional[np.ndarray] = None


@dataclass
class Column:
    """One model's column: its title and a predictor returning :class:`Boxes` for an image."""

    title: str
    predict: object  # callable(np.ndarray BGR) -> Boxes


def list_images(folder: Path, max_images: int) -> List[Path]:
    """Images of ``folder`` (sorted, not recursive into labels/), at most ``max_images``."""
    if not folder.exists():
        raise FileNotFoundError(f"image source {folder} does not exist; pass a folder of images or a data YAML")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in IMG_FORMATS)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMG_FORMATS))}) found under {folder}")
    return images[:max_images]


def read_ground_truth(image_path: Path, width: int, height: int) -> Optional[Boxes]:
    """YOLO-format labels for ``image_path`` in pixels, or None when the image has no label file."""
    label_path = Path(img2label_paths([str(image_path)])[0])
    if not label_path.is_file():
        return None
    rows = []
    for line_no, line in enumerate(label_path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5:
            print(f"WARNING {label_path}:{line_no}: expected 'class cx cy w h', got {line!r}; line skipped")
            continue
        try:
            row = [float(v) for v in parts[:5]]
        except ValueError:
            row = []
        if len(row) < 5 or not np.isfinite(row).all():
            print(f"WARNING {label_path}:{line_no}: expected 5 finite numbers 'class cx cy w h', got {line!r}; "
                  "line skipped")
            continue
        rows.append(row)
    if not rows:
        return Boxes(np.zeros((0, 4)), np.zeros(0, dtype=int))
    arr = np.array(rows)
    cx, cy, w, h = arr[:, 1] * width, arr[:, 2] * height, arr[:, 3] * width, arr[:, 4] * height
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return Boxes(xyxy, arr[:, 0].astype(int))


def draw_panel(image: np.ndarray, boxes: Boxes, names: Dict[int, str], title: str) -> np.ndarray:
    """The image scaled to :data:`PANEL_HEIGHT` with its boxes and a title band on top."""
    scale = PANEL_HEIGHT / image.shape[0]
    panel = cv2.resize(image, (max(1, round(image.shape[1] * scale)), PANEL_HEIGHT))
    for i, (box, cls) in enumerate(zip(boxes.xyxy * scale, boxes.cls)):
        color = colors(int(cls), True)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(panel, (x1, y1), (x2, y2), color, 2)
        text = names.get(int(cls), str(int(cls)))
        if boxes.conf is not None:
            text += f" {boxes.conf[i]:.2f}"
        (tw, th), _ = cv2.getTextSize(text, FONT, 0.4, 1)
        ty = max(y1, th + 4)
        cv2.rectangle(panel, (x1, ty - th - 4), (x1 + tw + 2, ty), color, -1)
        cv2.putText(panel, text, (x1 + 1, ty - 3), FONT, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    header = np.full((HEADER_HEIGHT, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(header, title, (4, HEADER_HEIGHT - 9), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([header, panel])


def side_by_side(image: np.ndarray, ground_truth: Optional[Boxes], columns: Sequence[Column],
                 names: Dict[int, str]) -> np.ndarray:
    """One row: ground truth (when known) then one panel per model, separated by a thin gap."""
    panels = []
    if ground_truth is not None:
        panels.append(draw_panel(image, ground_truth, names, "Ground truth"))
    panels += [draw_panel(image, column.predict(image), names, column.title) for column in columns]
    gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    return np.hstack(row)


def write_index(out_dir: Path, pictures: Sequence[Path], titles: Sequence[str]) -> Path:
    """An ``index.html`` showing every picture in a responsive grid, the column titles as its heading."""
    cells = "\n".join(
        f'<figure><a href="{html.escape(p.name)}"><img src="{html.escape(p.name)}"></a>'
        f"<figcaption>{html.escape(p.stem)}</figcaption></figure>" for p in pictures)
    style = ("body{font-family:sans-serif} .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(640px,1fr));"
             "gap:12px} figure{margin:0} img{width:100%;height:auto;border:1px solid #ccc}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>DERO side by side</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(' | '.join(titles))}</h1>\n"
            f"<div class='grid'>\n{cells}\n</div>\n</body></html>\n")
    index = out_dir / "index.html"
    index.write_text(page)
    return index


def checkpoint_map(ckpt) -> Optional[float]:
    """mAP50-95 recorded in an Ultralytics checkpoint (dict) by its trainer, if any."""
    metrics = (ckpt.get("train_metrics") or {}) if isinstance(ckpt, dict) else {}
    value = metrics.get("metrics/mAP50-95(B)")
    return None if value is None else float(value)


def yolo_column(weights: Path, label: str, conf: float, imgsz: Optional[int], known_map: Optional[float]) -> Column:
    """A column predicting with an Ultralytics checkpoint (stock or DERO); ``imgsz`` None = its training size."""
    from yolo_dero.ultra import DeroYOLO

    model = DeroYOLO(str(weights))
    ckpt = model.ckpt or {}
    map_value = checkpoint_map(ckpt) if known_map is None else known_map
    title = label if map_value is None else f"{label}  mAP50-95 {map_value:.3f}"
    if imgsz is None:
        imgsz = int((ckpt.get("train_args") or {}).get("imgsz") or 640)

    def predict(image: np.ndarray) -> Boxes:
        result = model.predict(image, conf=conf, imgsz=imgsz, verbose=False)[0].boxes
        return Boxes(result.xyxy.cpu().numpy(), result.cls.cpu().numpy().astype(int), result.conf.cpu().numpy())

    column = Column(title, predict)
    column.names = model.names  # type: ignore[attr-defined]
    return column


def resolve_source(source: str, max_images: int,
                   data_path: Optional[str] = None) -> tuple[List[Path], Optional[Dict[int, str]]]:
    """The images to draw and, for a data YAML, its class names.

    A data YAML (``data/shapes.yaml``, ``data/coco.yaml`` ...) is resolved like for training (built-in data generated,
    local dataset root found, nothing downloaded) and its val split listed the way Ultralytics lists it.
    """
    if str(source).endswith((".yaml", ".yml")):
        from yolo_dero.datasets import resolve_data
        from yolo_dero.datasets.resolve import image_files

        rd = resolve_data(source, data_path, splits=("val",))
        images = [Path(p) for p in image_files(rd.root, rd.data["val"])]
        if not images:
            raise FileNotFoundError(f"no images in the val split of {source} ({rd.data['val']} under {rd.root})")
        return images[:max_images], dict(rd.names)
    return list_images(Path(source), max_images), None


def visualize(weights: Sequence[Path], source: str, out_dir: Path, labels: Optional[Sequence[str]] = None,
              max_images: int = 8, conf: float = 0.25, imgsz: Optional[int] = None,
              maps: Optional[Sequence[Optional[float]]] = None, data_path: Optional[str] = None) -> List[Path]:
    """Write one side-by-side PNG per image and an index page; returns the PNG paths."""
    if not weights:
        raise ValueError("give at least one --weights file")
    labels = list(labels) if labels else [Path(w).stem if Path(w).stem not in ("best", "last")
                                          else Path(w).parent.parent.name for w in weights]
    if len(labels) != len(weights):
        raise ValueError(f"--labels has {len(labels)} names for {len(weights)} --weights files")
    maps = list(maps) if maps else [None] * len(weights)
    columns = [yolo_column(Path(w), lab, conf, imgsz, m) for w, lab, m in zip(weights, labels, maps)]
    images, names = resolve_source(str(source), max_images, data_path)
    names = names or dict(columns[0].names)  # type: ignore[attr-defined]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures, any_truth = [], False
    for image_path in images:
        image = cv2.imread(str(image_path))
        if image is None:
            print(f"WARNING cannot read image {image_path}; skipped")
            continue
        truth = read_ground_truth(image_path, image.shape[1], image.shape[0])
        any_truth = any_truth or truth is not None
        out = out_dir / f"{image_path.stem}.png"
        cv2.imwrite(str(out), side_by_side(image, truth, columns, names))
        pictures.append(out)
    index = write_index(out_dir, pictures, (["Ground truth"] if any_truth else []) + [c.title for c in columns])
    print(f"wrote {len(pictures)} pictures and {index}")
    return pictures


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", required=True, help="one or more .pt files (e.g. plain.pt dero.pt)")
    parser.add_argument("--labels", nargs="+", help="column titles, one per weights file")
    parser.add_argument("--maps", nargs="+", type=float, help="mAP50-95 per model for the headers "
                        "(default: the value stored in each checkpoint, when there is one)")
    parser.add_argument("--source", required=True, help="folder of images or a data YAML (val split)")
    parser.add_argument("--data-path", default=None, help="dataset root for a data YAML source (overrides its path:, "
                        "e.g. a local COCO for data/coco.yaml; $DERO_COCO_DIR works too)")
    parser.add_argument("--max-images", type=int, default=8)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--imgsz", type=int, default=None, help="inference size (default: each checkpoint's training size)")
    parser.add_argument("--out", type=Path, default=Path("runs/side_by_side"))
    args = parser.parse_args(argv)
    problem = output_problem(args.out, "--out", folder=True)  # before any model is loaded
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    try:
        visualize(args.weights, args.source, args.out, args.labels, args.max_images, args.conf, args.imgsz,
                  args.maps, args.data_path)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
