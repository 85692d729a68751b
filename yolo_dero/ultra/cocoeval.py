"""pycocotools COCOeval on Ultralytics' ``predictions.json`` against a COCO-format ground truth.

Id rules of Ultralytics 8.4's ``predictions.json`` (``DetectionValidator.pred_to_json``):

* ``image_id`` is ``int(stem)`` for numeric file stems (leading zeros lost), else the stem string; each entry
  also carries ``file_name``. We map to the ground truth's image ids through the file stem.
* ``category_id`` is ``class_map[class index]`` where ``class_map`` is COCO's 80->91 list when Ultralytics
  recognised the val set as COCO (val path contains ``coco`` and ends in ``/val2017.txt`` or
  ``/test-dev2017.txt``), else ``class index + 1``. We undo that map and apply the ground truth's own
  class -> category id map (``coco_category_ids`` of the data YAML, or matching by class name).
* ``bbox`` is ``[x, y, w, h]`` in original-image pixels, like COCO.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

COCO80_TO_91 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
                32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
                58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
                88, 89, 90]


def ultralytics_is_coco(val: Any) -> bool:
    """Ultralytics' own test (DetectionValidator.init_metrics) for 'this val set is COCO'."""
    return isinstance(val, str) and "coco" in val and val.endswith((f"{os.sep}val2017.txt",
                                                                       f"{os.sep}test-dev2017.txt"))


def ultralytics_class_map(data: dict, nc: int) -> list[int]:
    """The class index -> category id list Ultralytics used when writing predictions.json for ``data``."""
    val = data.get("val")
    if isinstance(val, str):
        val = str((Path(data.get("path", ".")) / val).resolve())
    return list(COCO80_TO_91) if ultralytics_is_coco(val) else list(range(1, nc + 1))


def category_map_by_name(gt_categories: list[dict], names: dict[int, str]) -> list[int]:
    """Class index -> GT category id, matching names (case-insensitive); falls back to sorted-id order."""
    by_name = {str(c["name"]).strip().lower(): int(c["id"]) for c in gt_categories if "name" in c}
    ids = [by_name.get(str(names[i]).strip().lower()) for i in range(len(names))]
    if all(i is not None for i in ids):
        return ids  # type: ignore[return-value]
    sorted_ids = sorted(int(c["id"]) for c in gt_categories)
    if len(sorted_ids) == len(names):
        return sorted_ids
    missing = [names[i] for i, x in enumerate(ids) if x is None]
    raise ValueError(f"cannot map classes to the ground truth's categories: names {missing[:5]} not found and "
                     f"{len(sorted_ids)} categories != {len(names)} classes")


def evaluate(predictions: str | Path | list, gt_json: str | Path, pred_class_map: list[int],
             gt_category_ids: list[int] | None, names: dict[int, str],
             image_files: Iterable[str] | None = None) -> dict[str, Any]:
    """Run pycocotools' COCOeval (bbox) and return ``{"map50_95", "map50", "stats", "n_images", ...}``.

    Args:
        predictions: Ultralytics' predictions.json (path or loaded list).
        gt_json: COCO-format ground truth.
        pred_class_map: class index -> category id as written in predictions.json (see ultralytics_class_map).
        gt_category_ids: class index -> GT category id (None: match by name).
        names: class names (for name matching and messages).
        image_files: the images that were validated; restricts the evaluation to them (all GT images if None).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
    if gt_category_ids is None:
        gt_category_ids = category_map_by_name(gt.dataset.get("categories", []), names)
    gt_cats = set(gt.getCatIds())
    bad = [c for c in gt_category_ids if c not in gt_cats]
    if bad:
        raise ValueError(f"category ids {bad[:5]} are not in {gt_json}")
    pred_to_class = {cid: i for i, cid in enumerate(pred_class_map)}

    stem_to_id: dict[Any, int] = {}
    for im in gt.dataset["images"]:
        stem = Path(str(im.get("file_name", im["id"]))).stem
        stem_to_id[stem] = im["id"]
        if stem.isnumeric():
            stem_to_id.setdefault(int(stem), im["id"])
    if image_files is None:
        img_ids = sorted(gt.getImgIds())
        not_in_gt = 0
    else:
        stems = [Path(f).stem for f in image_files]
        img_ids = sorted({stem_to_id[s] for s in stems if s in stem_to_id})
        not_in_gt = sum(1 for s in stems if s not in stem_to_id)

    preds = json.loads(Path(predictions).read_text()) if isinstance(predictions, (str, Path)) else predictions
    dets, unmatched = [], 0
    for p in preds:
        key = Path(p["file_name"]).stem if p.get("file_name") else p["image_id"]
        gid = stem_to_id.get(key, stem_to_id.get(p["image_id"]))
        cls = pred_to_class.get(int(p["category_id"]))
        if gid is None or cls is None:
            unmatched += 1
            continue
        dets.append({"image_id": gid, "category_id": gt_category_ids[cls], "bbox": p["bbox"], "score": p["score"]})

    out: dict[str, Any] = {"n_images": len(img_ids), "n_predictions": len(dets), "unmatched_predictions": unmatched,
                           "images_not_in_gt": not_in_gt, "gt_json": str(gt_json)}
    if not dets or not img_ids:
        out.update(map50_95=0.0, map50=0.0, stats=[0.0] * 12, summary="no predictions to evaluate")
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
    ev = COCOeval(gt, dt, "bbox")
    ev.params.imgIds = img_ids
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(x) for x in ev.stats]
    out.update(map50_95=max(stats[0], 0.0), map50=max(stats[1], 0.0), stats=stats, summary=buf.getvalue())
    return out
