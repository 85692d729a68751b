#!/usr/bin/env python3
"""Train a YOLOv5n detector (DERO, plain or original) with Ultralytics, offline.

    python train_det.py       # DERO YOLOv5n (cfg/yolov5n-dero-rep-c3.yaml) on the built-in shapes, quick CPU schedule
    python train_det.py --model cfg/yolov5n-plain-rep-c3.yaml --epochs 30 --imgsz 320   # its plain twin
    python train_det.py --data data/coco.yaml --data-path /data/coco --epochs 300 --imgsz 640 --batch 64 --device 0
    python train_det.py --resume runs/detect/yolov5n-dero-rep-c3-shapes/weights/last.pt

Run ``python train_det.py --help`` for every option; extra Ultralytics options may follow as key=value.
"""

import sys

from yolo_dero.ultra.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
