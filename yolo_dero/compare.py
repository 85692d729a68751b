"""``python -m yolo_dero.compare``: original vs plain vs DERO YOLOv5n at the same budget and seed.

    python -m yolo_dero.compare --data data/shapes.yaml            # the default budget of train_det.py
    python -m yolo_dero.compare --epochs 1 --imgsz 128 --fraction 0.03 --out /tmp/c   # a smoke run

Trains the three models one after another with identical settings (``train_det.py``'s quick schedule by
default), validates each best.pt with ``val_det``'s library function (Ultralytics and pycocotools mAP), and
writes ``<out>/det_compare.json`` and ``<out>/det_compare.md`` with

* mAP50-95 / mAP50 (Ultralytics and pycocotools), parameters, GFLOPs at the training size;
* training images/s: images seen / pure training time, the time between Ultralytics' ``on_train_epoch_start``
  and ``on_train_epoch_end`` callbacks summed over epochs (validation and checkpointing excluded);
* CPU latency, batch 1, float32, eval mode, BatchNorm not folded (as ``yolo_dero.report``): the median of the
  three models timed interleaved in this process (:func:`yolo_dero.benchmark.time_interleaved`);
* peak activation memory (int8, batch 1) under the ``fused`` and ``tflm`` engines, whole network and body;
* ratios DERO/plain and DERO/original;

plus side-by-side pictures (Ground truth | original | plain | DERO) of the first val images with an index.html
(:mod:`yolo_dero.visualize`). ``--markdown-from FILE.json`` rewrites the markdown of an existing JSON (no training).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .ultra import DeroYOLO  # sets up offline Ultralytics first
from .ultra.cli import QUICK
from .ultra.evaluate import evaluate_detector
from .ultra.model import gflops
from .benchmark import (SPEED_MEMORY_RATIO_KEYS, VARIANTS, environment, fmt, small_png, throughput, kib, markdown_table,
                        memory_figures, ratio_rows, ratios, time_interleaved, write_results)
from .fileutil import outputs_problem
from .paths import REPO_ROOT

# the detector default (train_det.py's) and its plain twin, which is what the default folds into at deployment
YAMLS = {"original": "cfg/yolov5n.yaml", "plain": "cfg/yolov5n-plain-rep-c3.yaml",
         "dero": "cfg/yolov5n-dero-rep-c3.yaml"}
RATIO_KEYS = [
    ("map50_95", "mAP50-95 (Ultralytics)", "higher is better"),
    ("map50", "mAP50 (Ultralytics)", "higher is better"),
    ("coco_map50_95", "mAP50-95 (pycocotools)", "higher is better"),
    ("params", "parameters", ""),
    ("gflops", "GFLOPs", ""),
] + SPEED_MEMORY_RATIO_KEYS


class EpochTimer:
    """Pure training time per epoch from the trainer callbacks (validation is run after epoch end)."""

    def __init__(self):
        self.epochs: List[Dict[str, float]] = []
        self._t0 = 0.0

    def start(self, trainer) -> None:
        self._t0 = time.perf_counter()

    def end(self, trainer) -> None:
        n = len(trainer.train_loader.dataset)
        self.epochs.append({"seconds": time.perf_counter() - self._t0, "images": n})

    def attach(self, model) -> "EpochTimer":
        model.add_callback("on_train_epoch_start", self.start)
        model.add_callback("on_train_epoch_end", self.end)
        return self



def train_variant(variant: str, args, project: Path) -> Dict[str, Any]:
    model = DeroYOLO(YAMLS[variant])
    timer = EpochTimer().attach(model)
    kw = dict(data=args.data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, nbs=args.batch,
              seed=args.seed, deterministic=True, optimizer=args.optimizer, lr0=args.lr0,
              warmup_epochs=args.warmup_epochs, close_mosaic=args.close_mosaic, project=str(project),
              name=variant, exist_ok=True, plots=False, verbose=False, val=not args.no_val_per_epoch)
    if args.fraction is not None:
        kw["fraction"] = args.fraction
    if args.workers is not None:
        kw["workers"] = args.workers
    if args.device is not None:
        kw["device"] = args.device
    t0 = time.time()
    model.train(**kw)
    tr = model.trainer
    best = Path(tr.best) if Path(tr.best).is_file() else Path(tr.last)
    return {"weights": str(best), **throughput(timer.epochs), "train_epochs": timer.epochs,
            "train_images_per_epoch": timer.epochs[0]["images"] if timer.epochs else None,
            "train_wall_s": round(time.time() - t0, 1)}


def validate(variant: str, weights: str, args, project: Path) -> Dict[str, Any]:
    v = evaluate_detector(weights, data=args.data, imgsz=args.imgsz, device=args.device, project=str(project / "val"),
                          name=variant, label_scan=False)
    return {"map50_95": round(v["map50_95"], 4), "map50": round(v["map50"], 4),
            "coco_map50_95": round(v["pycocotools"]["map50_95"], 4), "coco_map50": round(v["pycocotools"]["map50"], 4),
            "params": int(v["params"]), "val_images": v["pycocotools"]["n_images"]}


def load_float(weights: str):
    m = DeroYOLO(weights).model
    return m.float().eval()


def run(args) -> Dict[str, Any]:
    project = Path(args.project).resolve()
    rows: Dict[str, Dict[str, Any]] = {}
    for v in args.variants:
        print(f"\n=== training {v} ({YAMLS[v]}) ===", flush=True)
        rows[v] = {"model": YAMLS[v], **train_variant(v, args, project)}
        rows[v].update(validate(v, rows[v]["weights"], args, project))
    models = {v: load_float(rows[v]["weights"]) for v in args.variants}
    for v, m in models.items():
        rows[v]["gflops"] = round(gflops(m, args.imgsz), 3)
        rows[v].update(memory_figures(m, args.imgsz))
    lat = time_interleaved(models, (1, 3, args.imgsz, args.imgsz), args.repeats)
    for v in args.variants:
        rows[v]["latency_ms"] = round(lat[v] * 1000, 2)
    pictures = None
    if args.pictures > 0:
        from .visualize import visualize

        pic_dir = Path(args.pictures_dir).resolve() if args.pictures_dir else project / "pictures"
        pics = visualize([rows[v]["weights"] for v in args.variants], args.data, pic_dir, labels=list(args.variants),
                         max_images=args.pictures, imgsz=args.imgsz, maps=[rows[v]["map50_95"] for v in args.variants])
        pictures = {"dir": str(pic_dir), "index": str(pic_dir / "index.html"), "files": [str(p) for p in pics]}
        if args.docs_picture and pics:
            Path(args.docs_picture).parent.mkdir(parents=True, exist_ok=True)
            small_png(pics[0], Path(args.docs_picture))
    keys = [k for k, _, _ in RATIO_KEYS]
    result = {
        "command": "python -m yolo_dero.compare " + " ".join(args.argv),
        "budget": {"data": args.data, "epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch,
                   "seed": args.seed, "fraction": args.fraction, "optimizer": args.optimizer, "lr0": args.lr0,
                   "warmup_epochs": args.warmup_epochs, "close_mosaic": args.close_mosaic},
        "latency_repeats": args.repeats, "rows": rows,
        "ratios": ratios(rows, keys) if {"dero", "plain", "original"} <= set(rows) else {},
        "pictures": pictures, "environment": environment(),
    }
    return result


def to_markdown(r: Dict[str, Any]) -> str:
    b, rows = r["budget"], r["rows"]
    lines = ["# Detection comparison: YOLOv5n original vs plain vs DERO", "",
             f"`{r['command']}`", "",
             f"Same budget and seed for all three: data `{b['data']}`, {b['epochs']} epochs, imgsz {b['imgsz']}, "
             f"batch {b['batch']}, seed {b['seed']}, {b['optimizer']} lr0 {b['lr0']}, warmup {b['warmup_epochs']}, "
             f"close_mosaic {b['close_mosaic']}" + (f", fraction {b['fraction']}" if b.get("fraction") else "")
             + f". mAP of best.pt on the val split ({next(iter(rows.values())).get('val_images')} images).", ""]
    headers = ["variant", "mAP50-95", "mAP50", "mAP50-95 (coco)", "mAP50 (coco)", "params", "GFLOPs",
               "train img/s", "latency ms", "fused peak KiB", "fused body KiB", "tflm peak KiB", "tflm body KiB",
               "tflm arena KiB"]
    table = []
    for v, x in rows.items():
        table.append([v, x["map50_95"], x["map50"], x["coco_map50_95"], x["coco_map50"], x["params"], x["gflops"],
                      fmt(x["train_img_s"], 1), fmt(x["latency_ms"], 2)]
                     + [fmt(kib(x[k]), 1) for k in ("fused_peak_bytes", "fused_body_peak_bytes", "tflm_peak_bytes",
                                                    "tflm_body_peak_bytes", "tflm_arena_bytes")])
    lines += [markdown_table(headers, table), ""]
    if r["ratios"]:
        lines += ["Ratios:", "", markdown_table(["metric", "goal", "DERO/plain", "DERO/original"],
                                                ratio_rows(rows, RATIO_KEYS)), ""]
    env = r["environment"]
    lines += [f"Training images/s: per epoch, images / time between `on_train_epoch_start` and `on_train_epoch_end` "
              f"(validation excluded); the median over epochs (the all-epochs figure is `train_img_s_total` in the JSON). Latency: CPU, batch 1, float32, eval mode, BatchNorm not folded, median "
              f"of {r['latency_repeats']} interleaved runs in one process. Peak memory: int8 activations, batch 1, at "
              f"imgsz {b['imgsz']} (`yolo_dero.memory`: `fused` = docs/memory_model.md §3, "
              f"`tflm` = TFLM greedy planner; "
              f"'body' = after the stem). Machine: {env['cpu']}, {env['cpus']} CPUs, torch {env['torch']}, "
              f"{env['torch_threads']} threads."]
    if r.get("pictures"):
        p = r["pictures"]
        index = Path(p["index"])
        if index.is_relative_to(REPO_ROOT):
            index = index.relative_to(REPO_ROOT)
        lines += ["", f"Side-by-side pictures (Ground truth | original | plain | DERO) of the first "
                      f"{len(p['files'])} val images: `{index}` (written by the run; `runs/` is not committed)."]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yolo_dero.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/shapes.yaml")
    p.add_argument("--epochs", type=int, default=QUICK["epochs"])
    p.add_argument("--imgsz", type=int, default=QUICK["imgsz"])
    p.add_argument("--batch", type=int, default=QUICK["batch"])
    p.add_argument("--optimizer", default=QUICK["optimizer"])
    p.add_argument("--lr0", type=float, default=QUICK["lr0"])
    p.add_argument("--warmup-epochs", type=float, default=QUICK["warmup_epochs"])
    p.add_argument("--close-mosaic", type=int, default=QUICK["close_mosaic"])
    p.add_argument("--fraction", type=float, default=None, help="fraction of the train split to use")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--no-val-per-epoch", action="store_true", help="validate only after the last epoch")
    p.add_argument("--repeats", type=int, default=30, help="latency repeats (default: %(default)s)")
    p.add_argument("--pictures", type=int, default=8, help="side-by-side pictures of the first N val images (0: none)")
    p.add_argument("--pictures-dir", default=None, help="default: <project>/pictures")
    p.add_argument("--docs-picture", default=None, help="also copy the first picture here (e.g. docs/side_by_side.png)")
    p.add_argument("--project", default=str(REPO_ROOT / "runs" / "compare"), help="training runs (default: %(default)s)")
    p.add_argument("--out", default=str(REPO_ROOT / "results"), help="where det_compare.{json,md} go")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--markdown-from"]:  # rewrite the .md of an existing det_compare.json (no training)
        src = Path(argv[1])
        src.with_suffix(".md").write_text(to_markdown(json.loads(src.read_text())).rstrip() + "\n")
        return 0
    args = parser().parse_args(argv)
    args.argv = argv
    problem = outputs_problem((args.out, "--out", True), (args.project, "--project", True),
                              (args.pictures_dir, "--pictures-dir", True), (args.docs_picture, "--docs-picture"))
    if problem:  # before the trainings, not after them
        print(f"error: {problem}", file=sys.stderr)
        return 2
    result = run(args)
    js, md = write_results(Path(args.out), "det_compare", result, to_markdown(result))
    print("\n" + md.read_text())
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
