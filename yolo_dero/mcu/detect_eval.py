"""Accuracy of a deployed detector: mAP of the full-int8 ``.tflite`` itself, next to its float checkpoint's.

The exported detector (:func:`~yolo_dero.mcu.export.export_tflite`) stops at the raw per-level head maps
``cat(box_i, cls_i)``; a microcontroller application decodes them itself. Here the ``.tflite`` runs on LiteRT's
reference kernels (TFLite Micro's arithmetic), its dequantized maps are decoded by the trained model's own
``Detect`` layer (DFL, anchors, sigmoid), and Ultralytics' validator and pycocotools score them exactly as they
score the checkpoint (:func:`yolo_dero.ultra.evaluate.evaluate_module`): same letterbox, NMS and mAP.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from ..datasets import DatasetError
from ..datasets.resolve import image_files, resolve_data
from ..paths import REPO_ROOT
from ..ultra.evaluate import evaluate_module
from ..ultra.model import DeroYOLO, check_checkpoint
from .export import RawDetectHead, export_tflite, is_detection_model
from .tflite import require

RawFn = Callable[[torch.Tensor], List[torch.Tensor]]


class DeployedDetector(nn.Module):
    """A trained detector whose convolutions are replaced by ``raw`` (NCHW images in [0, 1] -> the per-level raw
    head maps, NCHW), decoded by the model's own ``Detect`` layer: what Ultralytics' ``Detect`` returns in
    inference, ``(B, 4 + nc, anchors)``."""

    def __init__(self, det_model: nn.Module, raw: RawFn):
        super().__init__()
        if not is_detection_model(det_model):
            raise TypeError(f"{type(det_model).__name__} is not an Ultralytics detection model")
        head = det_model.model[-1]
        if getattr(head, "end2end", False):
            raise ValueError("end-to-end (NMS-free) heads are not supported: their raw maps decode differently")
        self.head = copy.deepcopy(head).eval()
        self.stride = det_model.stride
        self.names = dict(det_model.names)
        self.raw = raw

    def forward(self, im: torch.Tensor, **_: Any) -> torch.Tensor:
        levels = [t.float() for t in self.raw(im)]
        bs, r = im.shape[0], 4 * self.head.reg_max
        boxes = torch.cat([t[:, :r].reshape(bs, r, -1) for t in levels], -1)
        scores = torch.cat([t[:, r:].reshape(bs, self.head.nc, -1) for t in levels], -1)
        return self.head._inference({"boxes": boxes, "scores": scores, "feats": levels})


def torch_raw(det_model: nn.Module) -> RawFn:
    """The float model's own raw head maps (the exported graph before quantization)."""
    net = RawDetectHead(det_model).eval()

    def run(im: torch.Tensor) -> List[torch.Tensor]:
        with torch.no_grad():
            return net(im)
    return run


class LiteRTRaw:
    """A full-int8 detector ``.tflite`` run by LiteRT's reference kernels, image by image: each image quantized
    with the input's scale and zero point, each output dequantized with its own and returned NCHW, ordered
    largest map first (the ``Detect`` layer's level order)."""

    def __init__(self, tflite: Union[str, Path, bytes]):
        require("ai_edge_litert")
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        content = tflite if isinstance(tflite, (bytes, bytearray)) else Path(tflite).read_bytes()
        self.interpreter = Interpreter(model_content=bytes(content),
                                       experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        # NHWC maps; a larger map is a finer level, which Detect lists first
        self.outputs = sorted(self.interpreter.get_output_details(), key=lambda d: -int(np.prod(d["shape"][1:3])))
        self.input_hw = tuple(int(v) for v in self.input["shape"][1:3])

    def __deepcopy__(self, memo):  # Ultralytics copies the module it validates; the interpreter cannot be copied
        return self

    def __call__(self, im: torch.Tensor) -> List[torch.Tensor]:
        if tuple(im.shape[-2:]) != self.input_hw:
            raise ValueError(f"the .tflite takes {self.input_hw[0]}x{self.input_hw[1]} images, got "
                             f"{im.shape[-2]}x{im.shape[-1]}: validate at the export size (imgsz) on square images")
        scale, zero = self.input["quantization"]
        info = np.iinfo(self.input["dtype"])
        per_image = []
        for x in im.permute(0, 2, 3, 1).cpu().numpy():
            q = np.clip(np.round(x[None] / scale + zero), info.min, info.max).astype(self.input["dtype"])
            self.interpreter.set_tensor(self.input["index"], q)
            self.interpreter.invoke()
            per_image.append([(self.interpreter.get_tensor(d["index"]).astype(np.float32) - d["quantization"][1])
                              * d["quantization"][0] for d in self.outputs])
        return [torch.from_numpy(np.concatenate(level)).permute(0, 3, 1, 2) for level in zip(*per_image)]


def train_images(data: str, imgsz: int, num: int) -> List[torch.Tensor]:
    """The first ``num`` training images of a detection data YAML, letterboxed like validation (``(1, H, W, 3)``
    in [0, 1]): the calibration set of an int8 export scored on the val split."""
    import cv2
    from ultralytics.data.augment import LetterBox

    rd = resolve_data(data, splits=("train",))
    files = image_files(rd.root, rd.data["train"])[:num]
    if not files:
        raise FileNotFoundError(f"no training images in '{rd.source}' to calibrate on")
    box = LetterBox((imgsz, imgsz), auto=False, stride=32)
    out = []
    for f in files:
        im = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if im is None:  # reported and skipped: the others still calibrate
            print(f"WARNING calibration: unreadable image {f} skipped (replace it or remove it from the train split)")
            continue
        out.append(torch.from_numpy(cv2.cvtColor(box(image=im), cv2.COLOR_BGR2RGB)).float().div(255.0)[None])
    if not out:
        raise FileNotFoundError(f"none of the {len(files)} training images of '{rd.source}' could be read to "
                                f"calibrate on")
    return out


def evaluate_int8_detector(weights: str, data: Optional[str] = None, imgsz: Optional[int] = None,
                           num_calib: int = 64,
                           tflite: Optional[str] = None, project: str = str(REPO_ROOT / "runs" / "val-int8"),
                           name: str = "int8", forms: Sequence[str] = ("float", "int8")) -> Dict[str, Any]:
    """mAP (Ultralytics and pycocotools) of a trained detector checkpoint on ``data``'s val split as deployed:
    ``"int8"`` exports it full-int8 (folded where re-parameterizable, calibrated on ``num_calib`` training images)
    to ``tflite`` (a temporary file if None) and scores the file; ``"float"`` scores the float model through the
    same decode. ``data`` and ``imgsz`` default to the checkpoint's training data and size. Returns
    ``{form: figures}`` plus the export's operator counts."""
    import tempfile

    yolo = DeroYOLO(str(check_checkpoint(weights)))
    model = yolo.model.float().eval()
    trained = (yolo.ckpt or {}).get("train_args", {})
    data = data or trained.get("data")
    if not data:
        raise DatasetError(f"no data YAML given and '{weights}' names none: pass --data")
    imgsz = int(imgsz or trained.get("imgsz") or 640)
    out: Dict[str, Any] = {"weights": str(weights), "data": str(data), "imgsz": imgsz}
    if "float" in forms:
        out["float"] = evaluate_module(DeployedDetector(model, torch_raw(model)), data, imgsz, model.names,
                                       project=project, name=f"{name}-float")
    if "int8" in forms:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tflite) if tflite else Path(tmp) / "detector.tflite"
            r = export_tflite(copy.deepcopy(model), imgsz, path, calib=train_images(data, imgsz, num_calib),
                              num_calib=num_calib)
            out["int8"] = evaluate_module(DeployedDetector(model, LiteRTRaw(path)), data, imgsz, model.names,
                                          project=project, name=f"{name}-int8")
        out.update(op_counts=r.op_counts, lowering=r.lowering, tflite_bytes=r.bytes, num_calib=num_calib)
    return out
