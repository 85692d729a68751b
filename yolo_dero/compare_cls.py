"""``python -m yolo_dero.compare_cls``: original vs plain vs DERO of one classification architecture.

    python -m yolo_dero.compare_cls --arch mcunet_v4 --epochs 8          # built-in data, 64 px
    python -m yolo_dero.compare_cls --arch resnet34 --data-path /imagenet --epochs 90 --imgsz 224

Each variant is trained by ``classification.train.run(args)`` (same seed, same budget, the args built by its
own parser), whose returned history gives the pure training time per epoch and the final top-1. Then it measures, for the three trained models:

* CPU latency, batch 1, float32, eval mode, the three timed interleaved (:func:`yolo_dero.report.time_interleaved`),
  at ``--eval-imgsz`` (default: the architecture's native input size, 224 or 176 for MCUNet);
* peak activation memory (int8, batch 1, engines ``fused`` and ``tflm``, whole and body) at ``--eval-imgsz``;

and writes ``<out>/cls_compare.json`` and ``<out>/cls_compare.md`` (``<out>`` = results by default). One file holds
every architecture run so far (a new run of an architecture replaces its entry). ``--markdown-from FILE.json``
rewrites the markdown from an existing JSON without training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .benchmark import SPEED_MEMORY_RATIO_KEYS, VARIANTS, environment, fmt, throughput, kib, markdown_table, memory_figures, ratio_rows, ratios, write_results
from .fileutil import outputs_problem
from .paths import REPO_ROOT

ARCHS = {"resnet34": ("resnet34", 224), "resnet50": ("resnet50", 224), "mcunet_v4": ("mcunet_v4", 176),
         "densenet121": ("densenet121", 224)}
RATIO_KEYS = [
    ("acc1", "top-1", "higher is better"),
    ("params", "parameters", ""),
] + SPEED_MEMORY_RATIO_KEYS


def variant_names(arch: str) -> Dict[str, str]:
    from .catalog import registry_names
    from .report import registry_variant

    names = registry_names()
    out = {v: registry_variant(ARCHS[arch][0], v, names) for v in VARIANTS}
    missing = [v for v, n in out.items() if n is None]
    if missing:
        raise SystemExit(f"error: no registry model for {arch} {missing} (registry: {', '.join(names)})")
    return out


def train_argv(model_name: str, args, out_dir: Path) -> List[str]:
    resize = round(args.imgsz * 73 / 64)  # train.py's built-in ratio (64 -> 73; 224 -> 256)
    argv = ["--model", model_name, "--epochs", str(args.epochs), "-b", str(args.batch_size), "-j", str(args.workers),
            "--opt", args.opt, "--lr", str(args.lr), "--wd", str(args.wd), "--lr-scheduler", args.lr_scheduler,
            "--lr-warmup-epochs", str(args.lr_warmup_epochs), "--lr-warmup-method", "linear",
            "--seed", str(args.seed), "--device", args.device, "--output-dir", str(out_dir),
            "--print-freq", "1000000", "--train-crop-size", str(args.imgsz), "--val-crop-size", str(args.imgsz),
            "--val-resize-size", str(resize)]
    if args.data_path:
        argv += ["--data-path", args.data_path]
    return argv + list(args.train_args or [])


def train_variant(variant: str, model_name: str, args) -> Dict[str, Any]:
    import classification.train as T

    out_dir = Path(args.project).resolve() / f"{args.arch}-{variant}"
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = train_argv(model_name, args, out_dir)
    print(f"\n=== {variant}: python -m classification.train {' '.join(argv)}", flush=True)
    t0 = time.time()
    history = T.run(T.get_args_parser().parse_args(argv))
    acc = [e.acc1 for e in history.epochs]
    return {"model": model_name, "train_argv": argv, "acc1": round(acc[-1], 2),
            "best_acc1": round(max(acc), 2), "acc1_per_epoch": [round(a, 2) for a in acc],
            **throughput([{"seconds": e.train_seconds, "images": e.train_images} for e in history.epochs]),
            "train_epoch_seconds": [round(e.train_seconds, 2) for e in history.epochs],
            "train_wall_s": round(time.time() - t0, 1), "checkpoint": history.checkpoint}


def load_trained(model_name: str, checkpoint: str) -> torch.nn.Module:
    from classification.models import get_model

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = get_model(model_name, num_classes=len(ckpt["classes"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def run(args) -> Dict[str, Any]:
    from .report import time_interleaved

    names = variant_names(args.arch)
    eval_imgsz = args.eval_imgsz or ARCHS[args.arch][1]
    rows: Dict[str, Dict[str, Any]] = {}
    for v in VARIANTS:
        rows[v] = train_variant(v, names[v], args)
    models = {v: load_trained(names[v], rows[v]["checkpoint"]) for v in VARIANTS}
    for v, m in models.items():
        rows[v]["params"] = sum(p.numel() for p in m.parameters())
        rows[v].update(memory_figures(m, eval_imgsz))
    lat = time_interleaved(models, (1, 3, eval_imgsz, eval_imgsz), args.repeats)
    for v in VARIANTS:
        rows[v]["latency_ms"] = round(lat[v] * 1000, 2)
    return {
        "command": "python -m yolo_dero.compare_cls " + " ".join(args.argv),
        "arch": args.arch,
        "budget": {"data": args.data_path or "built-in synthetic (10 classes, 1000 train / 200 val)",
                   "epochs": args.epochs, "imgsz": args.imgsz, "batch_size": args.batch_size, "opt": args.opt,
                   "lr": args.lr, "wd": args.wd, "lr_scheduler": args.lr_scheduler,
                   "lr_warmup_epochs": args.lr_warmup_epochs, "seed": args.seed, "extra": args.train_args or []},
        "eval_imgsz": eval_imgsz, "latency_repeats": args.repeats, "rows": rows,
        "ratios": ratios(rows, [k for k, _, _ in RATIO_KEYS]), "environment": environment(),
    }


def to_markdown(r: Dict[str, Any]) -> str:
    b, rows = r["budget"], r["rows"]
    lines = [f"# Classification comparison: {r['arch']} original vs plain vs DERO", "", f"`{r['command']}`", "",
             f"Same budget and seed for all three (classification/train.py): data {b['data']}, {b['epochs']} epochs "
             f"at {b['imgsz']} px, batch {b['batch_size']}, {b['opt']} lr {b['lr']} wd {b['wd']} {b['lr_scheduler']} "
             f"(warmup {b['lr_warmup_epochs']}), seed {b['seed']}. Top-1 after the last epoch (best in brackets).", ""]
    headers = ["variant", "model", "top-1 %", "params", "train img/s", f"latency ms @{r['eval_imgsz']}",
               "fused peak KiB", "fused body KiB", "tflm peak KiB", "tflm body KiB", "tflm arena KiB"]
    table = [[v, x["model"], f"{x['acc1']:.2f} ({x['best_acc1']:.2f})", x["params"], fmt(x["train_img_s"], 1),
              fmt(x["latency_ms"], 2)] + [fmt(kib(x[k]), 1) for k in ("fused_peak_bytes", "fused_body_peak_bytes",
                                                                       "tflm_peak_bytes", "tflm_body_peak_bytes",
                                                                       "tflm_arena_bytes")] for v, x in rows.items()]
    env = r["environment"]
    lines += [markdown_table(headers, table), "", "Ratios:", "",
              markdown_table(["metric", "goal", "DERO/plain", "DERO/original"], ratio_rows(rows, RATIO_KEYS)), "",
              f"Training images/s: per epoch, images / time spent in train.py's `train_one_epoch` (evaluation excluded); "
              f"the median over epochs (all epochs together: `train_img_s_total` in the JSON). Latency: CPU, batch 1, float32, eval mode, median of {r['latency_repeats']} interleaved runs in "
              f"one process, at {r['eval_imgsz']} px. Peak memory: int8 activations, batch 1, at {r['eval_imgsz']} px "
              f"(`fused` = docs/memory_model.md §3, `tflm` = TFLM greedy planner; 'body' = after the stem). "
              f"Machine: {env['cpu']}, "
              f"{env['cpus']} CPUs, torch {env['torch']}, {env['torch_threads']} threads."]
    return "\n".join(lines)


def merge_previous(path: Path, result: Dict[str, Any]) -> Dict[str, Any]:
    """Keep the other architectures already in ``path`` (one file holds every architecture run, latest wins)."""
    import json

    archs: Dict[str, Any] = {}
    if path.is_file():
        try:
            archs = dict(json.loads(path.read_text()).get("archs", {}))
        except (ValueError, AttributeError):
            archs = {}
    archs[result["arch"]] = result
    order = [a for a in ARCHS if a in archs]
    return {"archs": {a: archs[a] for a in order}}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yolo_dero.compare_cls", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=sorted(ARCHS))
    p.add_argument("--data-path", default=None, help="ImageFolder root (default: the built-in synthetic data)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--imgsz", type=int, default=64, help="train/val crop size (default: %(default)s)")
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("--opt", default="sgd")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--wd", type=float, default=5e-5)
    p.add_argument("--lr-scheduler", default="cosineannealinglr")
    p.add_argument("--lr-warmup-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--eval-imgsz", type=int, default=None, help="latency/memory input size (default: native)")
    p.add_argument("--repeats", type=int, default=20, help="latency repeats")
    p.add_argument("--project", default=str(REPO_ROOT / "runs" / "compare_cls"))
    p.add_argument("--out", default=str(REPO_ROOT / "results"))
    p.add_argument("--stem", default="cls_compare", help="output file name stem (default: %(default)s)")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, help="further classification/train.py options")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--markdown-from"]:  # rewrite the .md of an existing cls_compare.json (no training)
        import json

        src = Path(argv[1])
        archs = json.loads(src.read_text())["archs"]
        src.with_suffix(".md").write_text("\n\n".join(to_markdown(r) for r in archs.values()).rstrip() + "\n")
        return 0
    args = parser().parse_args(argv)
    args.argv = argv
    problem = outputs_problem((args.out, "--out", True), (args.project, "--project", True))
    if problem:  # before the trainings, not after them
        print(f"error: {problem}", file=sys.stderr)
        return 2
    result = run(args)
    combined = merge_previous(Path(args.out) / f"{args.stem}.json", result)
    md_text = "\n\n".join(to_markdown(r) for r in combined["archs"].values())
    js, md = write_results(Path(args.out), args.stem, combined, md_text)
    print("\n" + md.read_text())
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
