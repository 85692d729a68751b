"""The built-in detection dataset: coloured geometric shapes on textured backgrounds.

Generated deterministically (numpy ``default_rng`` seeded per image, OpenCV drawing, fixed JPEG quality) on
first use, in Ultralytics' YOLO layout plus a COCO-format ground truth for the val split::

    <root>/images/{train,val}/<id>.jpg      ids: train 000000.., val 100000.. (numeric: Ultralytics'
    <root>/labels/{train,val}/<id>.txt      predictions.json uses int(stem) as image_id)
    <root>/annotations/instances_val.json   COCO format, image id = int(stem), category id = class + 1
    <root>/data.yaml                        absolute ``path:``, ready for Ultralytics
    <root>/DONE                             generation parameters (regenerated when they change)

Six classes (circle, rectangle, triangle, star, cross, ring), each drawn in its own hue family (hue 30 x class
+- 8 on OpenCV's 0-180 scale, random saturation and brightness), so both shape and colour carry the class and a
small detector learns it in a few CPU minutes; 1-6 objects per image,
object sizes from about 7% to 50% of the image side (log-uniform), partial overlaps (up to 30% of the smaller
box, later shapes drawn on top), gradient backgrounds with noise and distractor lines. Needs numpy and OpenCV only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .yolo_layout import VAL_ID_OFFSET, generate_yolo_dataset, write_data_yaml  # noqa: F401 (re-exported)

CLASSES = ["circle", "rectangle", "triangle", "star", "cross", "ring"]
GENERATOR_VERSION = 2
MAX_OVERLAP = 0.3  # boxes may overlap, covering at most 30% of the smaller one
DEFAULTS = {"n_train": 512, "n_val": 128, "imgsz": 320, "seed": 0}


def _overlap(a, b) -> float:
    """Intersection over the smaller box's area: how much of the smaller object the other one may cover."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    c0 = c0 * 0.5 + c0.mean() * 0.5  # muted: shapes are the saturated things
    c1 = c1 * 0.5 + c1.mean() * 0.5
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(ang) + yy * math.sin(ang))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img += rng.normal(0, 8, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 4))):  # distractor lines
        p1 = tuple(int(v) for v in rng.integers(0, [w, h]))
        p2 = tuple(int(v) for v in rng.integers(0, [w, h]))
        col = tuple(int(v) for v in rng.uniform(60, 200, 3))
        cv2.line(img, p1, p2, col, int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def _color(rng: np.random.Generator, cls: int) -> tuple[int, int, int]:
    """A saturated colour from the class's hue family (OpenCV hue = 30 * class +- 8; brightness random)."""
    import cv2

    hue = (30 * cls + int(rng.integers(-8, 9))) % 180
    hsv = np.uint8([[[hue, rng.integers(140, 256), rng.integers(140, 256)]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _shape_points(cls: int, cx: float, cy: float, s: float, rng: np.random.Generator) -> np.ndarray:
    """Polygon vertices (float, pixels) of a shape of class ``cls`` centred at (cx, cy), size about ``s``."""
    r = s / 2
    if cls in (0, 5):  # circle / ring: ellipse with mild aspect
        ax, ay = r, r * rng.uniform(0.8, 1.0)
        if rng.random() < 0.5:
            ax, ay = ay, ax
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], 1)
    if cls == 1:  # axis-aligned rectangle
        asp = rng.uniform(0.5, 1.0)
        w, h = (s, s * asp) if rng.random() < 0.5 else (s * asp, s)
        return np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2], [cx + w / 2, cy + h / 2],
                         [cx - w / 2, cy + h / 2]])
    if cls == 2:  # triangle, random rotation
        a0 = rng.uniform(0, 2 * math.pi)
        t = a0 + np.array([0, 2 * math.pi / 3, 4 * math.pi / 3])
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if cls == 3:  # five-pointed star
        a0 = rng.uniform(0, 2 * math.pi)
        t = a0 + np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1)
    if cls == 4:  # plus-shaped cross
        a = r * rng.uniform(0.25, 0.4)
        pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a),
               (-a, -a)]
        return np.array([[cx + x, cy + y] for x, y in pts])
    raise ValueError(cls)


def render_image(rng: np.random.Generator, imgsz: int, max_objects: int = 6):
    """One image (BGR uint8) and its boxes ``[(cls, x1, y1, x2, y2), ...]`` in pixels."""
    import cv2

    h = w = imgsz
    img = _background(rng, h, w)
    boxes: list[tuple[int, float, float, float, float]] = []
    n = int(rng.integers(1, max_objects + 1))
    for _ in range(n):
        for _attempt in range(20):
            cls = int(rng.integers(0, len(CLASSES)))
            s = float(math.exp(rng.uniform(math.log(0.07 * imgsz), math.log(0.5 * imgsz))))
            cx, cy = rng.uniform(s / 2 + 1, w - s / 2 - 1), rng.uniform(s / 2 + 1, h - s / 2 - 1)
            pts = _shape_points(cls, cx, cy, s, rng)
            x1, y1 = np.clip(pts.min(0), 0, [w, h])
            x2, y2 = np.clip(pts.max(0), 0, [w, h])
            box = (float(x1), float(y1), float(x2), float(y2))
            if (x2 - x1) < 4 or (y2 - y1) < 4 or any(_overlap(box, b[1:]) > MAX_OVERLAP for b in boxes):
                continue
            col = _color(rng, cls)
            ipts = np.round(pts * 16).astype(np.int32)  # 4 fractional bits
            if cls == 5:
                thick = max(2, int(s * rng.uniform(0.12, 0.22)))
                cv2.polylines(img, [ipts], True, col, thick, cv2.LINE_AA, shift=4)
                pad = thick / 2
                box = (max(0.0, box[0] - pad), max(0.0, box[1] - pad), min(float(w), box[2] + pad),
                       min(float(h), box[3] + pad))
            else:
                cv2.fillPoly(img, [ipts], col, cv2.LINE_AA, shift=4)
            boxes.append((cls, *box))
            break
    return img, boxes


def _params(n_train: int, n_val: int, imgsz: int, seed: int) -> dict:
    return {"version": GENERATOR_VERSION, "n_train": int(n_train), "n_val": int(n_val), "imgsz": int(imgsz),
            "seed": int(seed), "classes": CLASSES}


def generate_shapes(root: str | Path, n_train: int = DEFAULTS["n_train"], n_val: int = DEFAULTS["n_val"],
                    imgsz: int = DEFAULTS["imgsz"], seed: int = DEFAULTS["seed"], force: bool = False) -> Path:
    """Generate the dataset into ``root`` unless an identical one is there; return ``root/data.yaml``."""
    return generate_yolo_dataset(root, _params(n_train, n_val, imgsz, seed), CLASSES,
                                 lambda rng, split: render_image(rng, imgsz), "yolo_dero built-in shapes dataset",
                                 "shape", force=force)
