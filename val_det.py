#!/usr/bin/env python3
"""Validate a detection checkpoint: Ultralytics' mAP50-95/mAP50 and pycocotools' COCOeval on the same predictions.

    python val_det.py --weights runs/detect/yolov5n-dero-rep-c3-shapes/weights/best.pt --json-out val.json
    python val_det.py --weights best.pt --data data/coco.yaml --data-path /data/coco --imgsz 640
    python val_det.py --weights best.pt --data my.yaml --coco-json my_val_gt.json
"""

import sys

from yolo_dero.ultra.cli import val_main

if __name__ == "__main__":
    sys.exit(val_main())
