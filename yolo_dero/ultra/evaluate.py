"""Detection evaluation as a library function: Ultralytics' mAP and pycocotools' COCOeval on the same predictions.

``val_det.py`` is a thin command line over :func:`evaluate_detector`; the study and the comparison benchmark call it
directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch.nn as nn

from ..datasets import DatasetError, resolve_data, scan_labels
from ..datasets.resolve import image_files
from ..paths import REPO_ROOT
from .cocoeval import evaluate, ultralytics_class_map
from .model import CheckpointError, DeroYOLO, check_checkpoint


def report_label_issues(rd, splits=("train", "val"), limit: int = 30) -> int:
    """Pre-scan the labels and print every bad line as ``file:line: problem -> what Ultralytics does``."""
    total = 0
    for split in splits:
        if not rd.data.get(split):
            continue
        issues, n = scan_labels(rd.root, rd.data[split], rd.nc)
        total += len(issues)
        for i, issue in enumerate(issues):
            if i == limit:
                print(f"WARNING labels ({split}): ... {len(issues) - limit} more label problems not shown")
                break
            print(f"WARNING labels ({split}): {issue}")
        if issues:
            skipped = len({x.label_file for x in issues if x.action == "image skipped"})
            n_images = len(image_files(rd.root, rd.data[split]))
            n_bad_images = sum(1 for x in issues if not x.line)  # the image file itself (line 0), not a label line
            n_lines = len(issues) - n_bad_images
            if skipped and skipped >= n_images:
                what, fix = (("is an unreadable image file", "replace the image files listed above")
                             if n_lines == 0 else
                             ("has a bad label line", "fix the label files listed above") if n_bad_images == 0 else
                             ("has an unreadable image file or a bad label line", "fix the files listed above"))
                raise DatasetError(f"labels ({split}): every one of the {n_images} images {what} and would be skipped "
                                   f"by Ultralytics, leaving nothing to {split} on; {fix}"
                                   + ("" if n_lines == 0 else f" (class id in 0-{rd.nc - 1}, 'class x y w h' "
                                                              f"normalised to [0, 1])"))
            images = f" and {n_bad_images} unreadable image files" if n_bad_images else ""
            print(f"WARNING labels ({split}): {n_lines} bad label lines in {n} label files{images}; "
                  f"{skipped} of {n_images} images will be skipped by Ultralytics, boxes within its 1% tolerance "
                  f"clipped; the rest is used")
    return total


def evaluate_detector(weights: str, data: Optional[str] = None, data_path: Optional[str] = None,
                      imgsz: Optional[int] = None, batch: int = 16, conf: float = 0.001, iou: float = 0.7,
                      max_det: int = 300, device: Optional[str] = None, coco_json: Optional[str] = None,
                      project: str = str(REPO_ROOT / "runs" / "val"), name: Optional[str] = None,
                      plots: bool = False, label_scan: bool = True) -> Dict[str, Any]:
    """Validate ``weights`` on ``data`` (default: the data it was trained on) and return the figures.

    Returns ``{"map50_95", "map50", "precision", "recall", "pycocotools": {...}, "difference", "params", "imgsz",
    ...}``. Raises :class:`~yolo_dero.datasets.DatasetError` or :class:`~yolo_dero.ultra.CheckpointError` on bad
    input (the message names the problem and the fix).
    """
    weights = check_checkpoint(weights)
    model = DeroYOLO(str(weights))
    if data is None:
        ck_data = (model.ckpt or {}).get("train_args", {}).get("data")
        data = ck_data if ck_data and Path(ck_data).is_file() else "data/shapes.yaml"
    rd = resolve_data(data, data_path, splits=("val",), need_coco_json=coco_json is None)
    gt_json = Path(coco_json).resolve() if coco_json else rd.coco_json
    if coco_json and not gt_json.is_file():
        raise DatasetError(f"--coco-json: file not found: '{coco_json}'")
    nc_model = len(model.names)
    if nc_model != rd.nc:
        raise CheckpointError(f"'{weights}' predicts {nc_model} classes but '{rd.source}' has {rd.nc}")
    if label_scan:
        report_label_issues(rd, splits=("val",))
    holder = _record_validated(model)
    kw = dict(data=str(rd.yaml_path), save_json=True, batch=batch, conf=conf, iou=iou, max_det=max_det, plots=plots,
              project=str(Path(project).resolve()), name=name or weights.parent.parent.name, verbose=False)
    if imgsz:
        kw["imgsz"] = imgsz
    if device is not None:
        kw["device"] = device
    metrics = model.val(**kw)
    return {**_figures(metrics, holder, rd, gt_json, coco_json),
            "params": sum(p.numel() for p in model.model.parameters()), "weights": str(weights), "conf": conf,
            "iou": iou}


def evaluate_module(module: nn.Module, data: str, imgsz: int, names: Dict[int, str], batch: int = 1,
                    conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                    project: str = str(REPO_ROOT / "runs" / "val"), name: str = "module") -> Dict[str, Any]:
    """Score any detector ``module`` the way :func:`evaluate_detector` scores a checkpoint: Ultralytics'
    ``DetectionValidator`` (its data loading, letterbox, NMS and mAP) and pycocotools on the same predictions.

    ``module`` takes a batch of NCHW RGB images in [0, 1] and returns what Ultralytics' ``Detect`` layer returns in
    inference, ``(B, 4 + nc, anchors)`` (boxes as centre-xywh in input pixels, class probabilities); it needs a
    ``stride`` tensor. Used to score a deployed (exported) model through the same code as its float checkpoint.
    Every image is letterboxed to ``imgsz`` x ``imgsz``, the fixed input of an exported model; Ultralytics' own
    validation of a checkpoint instead pads rectangular batches up to the next stride multiple past half a stride
    (160 px square images run at 192), so its figure can differ slightly from this one.
    """
    from ultralytics.models.yolo.detect import DetectionValidator

    rd = resolve_data(data, splits=("val",), need_coco_json=True)
    if len(names) != rd.nc:
        raise CheckpointError(f"the module predicts {len(names)} classes but '{rd.source}' has {rd.nc}")
    module.names = dict(names)
    holder: Dict[str, Any] = {}
    validator = DetectionValidator(args=dict(
        task="detect", mode="val", data=str(rd.yaml_path), imgsz=imgsz, batch=batch, conf=conf, iou=iou,
        max_det=max_det, save_json=True, plots=False, rect=False, device="cpu", verbose=False,
        project=str(Path(project).resolve()), name=name, exist_ok=True))
    validator.add_callback("on_val_end", lambda v: holder.update(_validated(v)))
    validator(model=module)
    return {**_figures(validator.metrics, holder, rd, rd.coco_json, None), "conf": conf, "iou": iou}


def _validated(v) -> Dict[str, Any]:
    """What a finished validator says about its run: where it wrote, at which size, which images it scored."""
    return dict(save_dir=Path(v.save_dir), imgsz=v.args.imgsz,
                im_files=list(getattr(getattr(getattr(v, "dataloader", None), "dataset", None), "im_files", None)
                              or []))


def _record_validated(model) -> Dict[str, Any]:
    holder: Dict[str, Any] = {}
    # the images Ultralytics really validated (its dataset drops corrupt images and bad labels): pycocotools
    # scores exactly those, so the two mAPs describe the same set
    model.add_callback("on_val_end", lambda v: holder.update(_validated(v)))
    return holder


def _figures(metrics, holder: Dict[str, Any], rd, gt_json: Path, coco_json: Optional[str]) -> Dict[str, Any]:
    """Ultralytics' figures and pycocotools' on the predictions.json the validator wrote."""
    save_dir = holder["save_dir"]
    pred_json = save_dir / "predictions.json"
    ul = {"map50_95": float(metrics.box.map), "map50": float(metrics.box.map50),
          "precision": float(metrics.box.mp), "recall": float(metrics.box.mr)}
    if not pred_json.is_file():  # Ultralytics writes it only when there were predictions
        pred_json.write_text("[]")
    pc = evaluate(pred_json, gt_json, ultralytics_class_map(rd.data, rd.nc),
                  None if coco_json and rd.category_ids is None else rd.category_ids, rd.names,
                  image_files=holder.get("im_files") or image_files(rd.root, rd.data["val"]))
    return {
        **ul,
        "pycocotools": {k: pc[k] for k in ("map50_95", "map50", "stats", "n_images", "n_predictions",
                                           "unmatched_predictions", "images_not_in_gt")},
        "difference": {"map50_95": round(ul["map50_95"] - pc["map50_95"], 4),
                       "map50": round(ul["map50"] - pc["map50"], 4)},
        "imgsz": holder.get("imgsz"), "data": str(rd.source), "data_resolved": str(rd.yaml_path),
        "coco_json": str(gt_json), "predictions_json": str(pred_json), "save_dir": str(save_dir),
        "speed_ms": {k: round(float(v), 2) for k, v in getattr(metrics, "speed", {}).items()},
    }
