"""The library behind ``train_det.py`` and ``val_det.py`` (the scripts are thin wrappers)."""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..datasets import DatasetError, resolve_data
from ..fileutil import outputs_problem
from ..paths import REPO_ROOT
from .anneal import ANNEAL_KEY, check_activation_anneal, yaml_with_anneal
from .distill import DEFAULT_WEIGHT as DEFAULT_DISTILL_WEIGHT
from .evaluate import evaluate_detector, report_label_issues
from .model import DEFAULT_DETECTOR, CheckpointError, DeroHeadDistillationTrainer, DeroYOLO, check_checkpoint
from .parser import ModelConfigError

# the accuracy study: distillation at the head's outputs lifts DERO, Ultralytics' feature matching cost it
# (docs/accuracy_study.md, findings 9 and 11)
DEFAULT_DISTILL = "head"

# The default quick CPU schedule: DERO YOLOv5n on the built-in shapes data, reaching mAP50 >= 0.5 on its val
# split in a few minutes on 2 CPU cores (see the README section for measured figures).
QUICK = {"epochs": 6, "imgsz": 256, "batch": 16, "warmup_epochs": 0.0, "close_mosaic": 3, "optimizer": "AdamW",
         "lr0": 0.002}

# Ultralytics train options passed straight through when given (flag -> type)
PASS_TRAIN = {
    "epochs": int, "imgsz": int, "batch": int, "device": str, "workers": int, "seed": int, "patience": int,
    "optimizer": str, "lr0": float, "lrf": float, "momentum": float, "weight_decay": float,
    "warmup_epochs": float, "close_mosaic": int, "mosaic": float, "mixup": float, "fraction": float,
    "save_period": int, "cache": str, "time": float, "freeze": int, "max_det": int, "nbs": int,
}
RESUME_ALLOWED = {"imgsz", "batch", "device", "close_mosaic", "save_period", "workers", "cache", "patience", "time",
                  "plots", "val"}
USER_ERRORS = (DatasetError, CheckpointError, ModelConfigError, FileNotFoundError)


def _bool(s: str) -> bool:
    if s.lower() in {"1", "true", "yes", "on", "y"}:
        return True
    if s.lower() in {"0", "false", "no", "off", "n"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


class OptionError(ValueError):
    """A trailing ``key=value`` option that is malformed or that Ultralytics does not know."""


def _extra(tokens: list[str]) -> dict[str, Any]:
    """Trailing ``key=value`` Ultralytics options (values parsed as Python/YAML scalars); a malformed token or a
    key Ultralytics does not know raises :class:`OptionError` naming it (Ultralytics' own check is a traceback)."""
    import difflib

    import yaml
    from ultralytics.cfg import DEFAULT_CFG_DICT

    out = {}
    for t in tokens:
        if "=" not in t:
            raise OptionError(f"unrecognised argument {t!r}: extra Ultralytics options are key=value "
                              f"(e.g. cos_lr=True); see python train_det.py --help")
        k, v = t.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in DEFAULT_CFG_DICT:
            close = difflib.get_close_matches(k, list(DEFAULT_CFG_DICT), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise OptionError(f"unknown Ultralytics option '{k}' (in {t!r}): {hint}valid keys include hsv_h, "
                              f"fliplr, cos_lr, degrees, dropout; see python train_det.py --help and "
                              f"Ultralytics' default.yaml for all {len(DEFAULT_CFG_DICT)}")
        out[k] = yaml.safe_load(v)
    return out


def _fail(msg: str, code: int = 2) -> int:
    print(f"ERROR: {msg}", file=sys.stderr)
    return code


def _device_problem(device) -> str | None:
    """Why ``--device`` names no device of this machine (CUDA indices beyond what torch sees), or None."""
    if device is None or str(device).strip().lower() in ("", "cpu", "mps"):
        return None
    ids = [x for x in str(device).replace("cuda:", "").split(",") if x.strip()]
    if not all(x.strip().isdigit() for x in ids):
        return None  # Ultralytics' own forms ('-1' etc.) are left to it
    n = torch.cuda.device_count()
    bad = [x.strip() for x in ids if int(x) >= n]
    if bad:
        have = f"CUDA devices 0-{n - 1}" if n else "no CUDA device"
        return f"--device {device}: this machine has {have}; pass --device cpu" + (f" or 0-{n - 1}" if n else "")
    return None


def _batch_problem(batch: Any) -> str | None:
    """Why a batch size is refused (None when it is usable): 0 and negatives other than -1 would silently become
    Ultralytics' AutoBatch (its default size on CPU, with gradients accumulated over several batches)."""
    if isinstance(batch, (int, float)) and not isinstance(batch, bool) and (batch == 0 or batch < -1):
        return (f"--batch {batch:g}: the batch size must be a positive number of images (or -1 for Ultralytics' "
                f"AutoBatch); pass e.g. --batch {QUICK['batch']}")
    return None


def _count_problem(given: dict[str, Any]) -> str | None:
    """Why --epochs/--imgsz (or epochs=/imgsz= given as key=value) are refused, or None: below 1 Ultralytics
    fails with a traceback after the data and the model are built."""
    for key, example in (("epochs", QUICK["epochs"]), ("imgsz", QUICK["imgsz"])):
        v = given.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 1:
            return f"--{key} {v:g}: must be at least 1; pass e.g. --{key} {example}"
    return None


# write errors reported as a full disk (EFBIG: a file-size limit, which the fault-injection tests use)
DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


# ------------------------------------------------------------------------------------------------------------ train


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_det.py", description="Train a (DERO) YOLOv5n detector with Ultralytics, offline.",
        epilog="Extra Ultralytics train options may follow as key=value (e.g. hsv_h=0.0 cos_lr=True).")
    p.add_argument("--model", default=DEFAULT_DETECTOR,
                   help="model YAML (cfg/yolov5n.yaml the original, cfg/yolov5n-dero-rep-c3.yaml DERO's detector, "
                        "which deploys as its plain twin cfg/yolov5n-plain-rep-c3.yaml; cfg/yolov5n-dero-rep.yaml the "
                        "same with C3 as a pure chain; cfg/yolov5n-dero.yaml the seed's unit) "
                        "or a .pt to fine-tune (default: %(default)s)")
    p.add_argument("--data", default="data/shapes.yaml", help="data YAML (default: %(default)s, the built-in set)")
    p.add_argument("--data-path", default=None, help="dataset root, overrides the data YAML's path: (and $DERO_COCO_DIR)")
    p.add_argument("--epochs", type=int, default=QUICK["epochs"], help="default: %(default)s")
    p.add_argument("--imgsz", type=int, default=QUICK["imgsz"], help="default: %(default)s")
    p.add_argument("--batch", type=int, default=QUICK["batch"],
                   help="images per batch (default: %(default)s); -1: Ultralytics' AutoBatch (sized to the CUDA "
                        "GPU's memory, Ultralytics' default size on CPU; --nbs then defaults to Ultralytics' nominal "
                        "batch, so gradients accumulate over several batches). 0 and negative values other than -1 "
                        "are refused")
    p.add_argument("--device", default=None, help="cpu, 0, 0,1 (DDP) ... (default: first GPU, else cpu)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--project", default=str(REPO_ROOT / "runs" / "detect"), help="default: %(default)s")
    p.add_argument("--name", default=None, help="run name (default: <model>-<data>)")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing it")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="LAST_PT",
                   help="resume an interrupted run from its weights/last.pt (alone: the latest last.pt under "
                        "--project); finishes the epochs the run was started with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--optimizer", default=QUICK["optimizer"],
                   help="SGD, Adam, AdamW, ... or auto (Ultralytics' default) (default: %(default)s)")
    p.add_argument("--lr0", type=float, default=QUICK["lr0"], help="default: %(default)s")
    p.add_argument("--lrf", type=float, default=None)
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-epochs", type=float, default=QUICK["warmup_epochs"], help="default: %(default)s")
    p.add_argument("--close-mosaic", type=int, default=QUICK["close_mosaic"], help="default: %(default)s")
    p.add_argument("--nbs", type=int, default=None,
                   help="nominal batch size: Ultralytics accumulates gradients over nbs/batch batches per optimizer "
                        "step and scales weight decay by batch*accumulate/nbs (its default 64 means 4 batches of 16 "
                        "per step). Default here: --batch, one step per batch, weight decay as given")
    p.add_argument("--mosaic", type=float, default=None)
    p.add_argument("--mixup", type=float, default=None)
    p.add_argument("--fraction", type=float, default=None)
    p.add_argument("--save-period", type=int, default=None)
    p.add_argument("--cache", default=None, help="ram or disk")
    p.add_argument("--time", type=float, default=None, help="hours (overrides epochs)")
    p.add_argument("--freeze", type=int, default=None)
    p.add_argument("--max-det", type=int, default=None)
    p.add_argument("--amp", type=_bool, default=None, help="true/false (CPU never uses AMP)")
    p.add_argument("--cos-lr", action="store_true")
    p.add_argument("--plots", type=_bool, default=True, help="true/false (default: true)")
    p.add_argument("--val", type=_bool, default=True, help="validate every epoch (default: true)")
    p.add_argument("--deterministic", type=_bool, default=True)
    p.add_argument("--pretrained", default=None, help="a .pt whose matching weights initialise the model")
    p.add_argument("--teacher", default=None, metavar="WEIGHTS_PT",
                   help="distil from this trained detector (e.g. the original YOLOv5n's best.pt), with the same "
                        "classes; see --distill")
    p.add_argument("--distill", choices=sorted(DEFAULT_DISTILL_WEIGHT), default=DEFAULT_DISTILL,
                   help="head: match the teacher's class scores and box distributions (yolo_dero.ultra.distill); "
                        "feature: Ultralytics' feature matching at the head's inputs (default: %(default)s)")
    p.add_argument("--distill-weight", type=float, default=None,
                   help="weight of the distillation loss, Ultralytics' dis (default: 1.0 for head, where 1 weighs "
                        "the teacher like the labels; Ultralytics' 6.0 for feature)")
    p.add_argument("--act-anneal-epochs", type=float, default=None, metavar="N",
                   help="train with every DERO unit's activation blended with the identity, the blend falling from 1 "
                        "to 0 over the first N epochs (at most --epochs minus one): the re-parameterizable units "
                        "(cfg/yolov5n-dero-rep-c3.yaml) start linear, so gradients reach every layer through the "
                        "shortcut chain, and end as built. Half of --epochs is the studied length. Stored in the "
                        f"model's YAML ({ANNEAL_KEY}), so a resume continues it (default: the YAML's {ANNEAL_KEY}, "
                        "else 0 = off; a .pt fine-tunes without its earlier anneal)")
    p.add_argument("--no-label-scan", action="store_true", help="skip the label pre-scan")
    p.add_argument("--json-out", default=None, help="write the final metrics and paths as JSON")
    p.add_argument("--verbose", type=_bool, default=False)
    p.add_argument("extra", nargs="*", help="extra Ultralytics options, key=value")
    return p


def _resume_hint(model: Any) -> str:
    """'resume with: ...' naming the run's last.pt when it exists, else 'start the run again'."""
    save_dir = getattr(getattr(model, "trainer", None), "save_dir", None)
    last = Path(save_dir) / "weights" / "last.pt" if save_dir else None
    return f"resume with: python train_det.py --resume {last}" if last and last.is_file() else "start the run again"


def _latest_last(project: Path) -> Path:
    runs = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"--resume: no */weights/last.pt under {project}; pass the path of a last.pt")
    return runs[-1]


def _resume(args, given: dict[str, Any], data_typed: bool, anneal_typed: bool = False) -> tuple[DeroYOLO, Any]:
    last = _latest_last(Path(args.project)) if args.resume is True else Path(args.resume)
    check_checkpoint(last)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    if ckpt.get("optimizer") is None or int(ckpt.get("epoch", -1)) < 0:
        raise CheckpointError(f"'{last}' is a finished or stripped checkpoint (no optimizer state): nothing to "
                              f"resume. Start a new run instead.")
    targs = ckpt.get("train_args", {})
    print(f"Resuming {last} at epoch {int(ckpt['epoch']) + 2} of {targs.get('epochs')}")
    del ckpt
    overrides = {k: v for k, v in given.items() if k in RESUME_ALLOWED}
    if data_typed:  # e.g. the dataset moved: resolve it again
        overrides["data"] = str(resolve_data(args.data, args.data_path, splits=("train", "val")).yaml_path)
    elif targs.get("data") and not Path(str(targs["data"])).is_file():
        raise DatasetError(f"the run's data YAML '{targs['data']}' is gone (cache cleared?); pass --data again "
                           f"(e.g. --data data/shapes.yaml) to regenerate/resolve it")
    ignored = sorted([k for k in given if k not in RESUME_ALLOWED] + (["act_anneal_epochs"] if anneal_typed else []))
    if ignored:
        print(f"WARNING --resume keeps the checkpoint's {ignored}; start a new run to change them")
    model = DeroYOLO(str(last))
    return model, model.train(resume=True, **overrides)


def train_main(argv: list[str] | None = None) -> int:
    parser = train_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    typed = {a.dest for a in parser._actions for o in a.option_strings
             if any(t == o or t.startswith(o + "=") for t in argv)}  # options the user actually gave
    given: dict[str, Any] = {}
    for k, typ in PASS_TRAIN.items():
        v = getattr(args, k, None)
        if v is not None:
            given[k] = typ(v)
    if args.amp is not None:
        given["amp"] = args.amp
    if args.cos_lr:
        given["cos_lr"] = True
    given.update(plots=args.plots, val=args.val)
    try:
        extra = _extra(args.extra)
    except OptionError as e:
        return _fail(str(e))
    given.update(extra)
    problem = (_batch_problem(given.get("batch")) or _count_problem(given) or _device_problem(given.get("device"))
               or outputs_problem((args.json_out, "--json-out")))  # not after the last epoch
    if problem:
        return _fail(problem)
    t0 = time.time()
    model = None
    try:
        if args.resume:
            model, metrics = _resume(args, {k: v for k, v in given.items() if k in typed or k in extra},
                                     data_typed="data" in typed or "data_path" in typed,
                                     anneal_typed=args.act_anneal_epochs is not None)
        else:
            # now, before the data is generated, not at the first save after an epoch; Ultralytics creates the
            # folder itself, so an error found later (in the data, say) leaves none behind
            problem = outputs_problem((args.project, "--project", True, False))
            if problem:
                return _fail(problem)
            rd = resolve_data(args.data, args.data_path, splits=("train", "val"))
            if not args.no_label_scan:
                report_label_issues(rd)
            batch = given.get("batch", QUICK["batch"])
            given.setdefault("nbs", batch if batch > 0 else 64)  # one optimizer step per batch (-1 = autobatch)
            model_arg = args.model
            fine_tune = str(model_arg).lower().endswith(".pt")
            if fine_tune:
                check_checkpoint(model_arg)
            if args.act_anneal_epochs is not None and not fine_tune:
                model_arg = str(yaml_with_anneal(model_arg, args.act_anneal_epochs))
            elif args.act_anneal_epochs and "," in str(given.get("device", "")):
                return _fail("--act-anneal-epochs with a .pt on several GPUs: Ultralytics' DDP workers rebuild the "
                             "model from the checkpoint, without the setting; fine-tune on one device")
            model = DeroYOLO(model_arg)
            if fine_tune:  # the checkpoint's own anneal is history: a fine-tune anneals only when asked to
                model.model.yaml[ANNEAL_KEY] = args.act_anneal_epochs or 0
            check_activation_anneal(model.model, given.get("epochs", QUICK["epochs"]))  # before any epoch runs
            name = args.name or f"{Path(str(args.model)).stem}-{rd.source.stem}"
            train_kw = dict(data=str(rd.yaml_path), project=str(Path(args.project).resolve()), name=name,
                            exist_ok=args.exist_ok, deterministic=args.deterministic,
                            verbose=args.verbose, **given)
            if args.pretrained:
                check_checkpoint(args.pretrained)
                train_kw["pretrained"] = str(Path(args.pretrained).resolve())
            if args.teacher:
                check_checkpoint(args.teacher, nc=rd.nc, role="--teacher")  # it must predict the student's classes
                train_kw["distill_model"] = str(Path(args.teacher).resolve())
            if args.distill_weight is not None and not args.teacher:
                return _fail("--distill-weight needs --teacher WEIGHTS_PT (the detector to distil from)")
            trainer = None
            if args.teacher:
                trainer = DeroHeadDistillationTrainer if args.distill == "head" else None
                train_kw["dis"] = (args.distill_weight if args.distill_weight is not None
                                   else DEFAULT_DISTILL_WEIGHT[args.distill])
            metrics = model.train(trainer=trainer, **train_kw)
    except USER_ERRORS as e:
        return _fail(str(e))
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        return _fail(f"disk full while writing ({e.strerror}); the checkpoints saved before are intact (written "
                     f"atomically). Free space, then {_resume_hint(model)}", code=1)
    except KeyboardInterrupt:
        trainer = getattr(model, "trainer", None)
        if trainer is not None and getattr(trainer, "save_dir", None):
            print(f"\nInterrupted. Resume with: python train_det.py --resume {Path(trainer.save_dir) / 'weights' / 'last.pt'}")
        return 130
    trainer = model.trainer
    save_dir = Path(trainer.save_dir)
    best = Path(trainer.best)
    box = getattr(metrics, "box", None)
    result = {
        "save_dir": str(save_dir),
        "best": str(best) if best.is_file() else None,
        "last": str(trainer.last) if Path(trainer.last).is_file() else None,
        "map50_95": float(box.map) if box is not None else None,
        "map50": float(box.map50) if box is not None else None,
        "epochs": int(trainer.epochs),
        "wall_s": round(time.time() - t0, 1),
        "model": str(getattr(trainer.args, "model", args.model)),
        "data": str(trainer.args.data),
        "imgsz": trainer.args.imgsz,
    }
    print(f"\nResults saved to {save_dir}")
    print(f"Best weights: {result['best']}")
    if box is not None:
        print(f"Final val (best.pt): mAP50-95 {result['map50_95']:.4f}  mAP50 {result['map50']:.4f}  "
              f"[{result['epochs']} epochs, {result['wall_s']:.0f} s]")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


# -------------------------------------------------------------------------------------------------------------- val


def val_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="val_det.py",
        description="Validate a detection checkpoint: Ultralytics' mAP and pycocotools' COCOeval on its "
                    "predictions.json.")
    p.add_argument("--weights", required=True, help="a .pt written by train_det.py (best.pt / last.pt)")
    p.add_argument("--data", default=None,
                   help="data YAML (default: the one the checkpoint was trained on, else data/shapes.yaml)")
    p.add_argument("--data-path", default=None, help="dataset root, overrides the data YAML's path:")
    p.add_argument("--imgsz", type=int, default=None, help="default: the checkpoint's training size")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--conf", type=float, default=0.001)
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--device", default=None)
    p.add_argument("--coco-json", default=None,
                   help="COCO-format ground truth for datasets whose YAML names none (coco_json:)")
    p.add_argument("--json-out", default=None, help="write the figures as JSON")
    p.add_argument("--project", default=str(REPO_ROOT / "runs" / "val"))
    p.add_argument("--name", default=None)
    p.add_argument("--plots", type=_bool, default=False, help="true/false (default: false)")
    p.add_argument("--no-label-scan", action="store_true")
    return p


def val_main(argv: list[str] | None = None) -> int:
    args = val_parser().parse_args(argv)
    # before the model is built and validation runs: a device this machine lacks, an output that cannot be written
    problem = (_count_problem({"imgsz": args.imgsz}) or _device_problem(args.device)
               or outputs_problem((args.project, "--project", True, False), (args.json_out, "--json-out")))
    if problem:
        return _fail(problem)
    try:
        out = evaluate_detector(args.weights, data=args.data, data_path=args.data_path, imgsz=args.imgsz,
                                batch=args.batch, conf=args.conf, iou=args.iou, max_det=args.max_det,
                                device=args.device, coco_json=args.coco_json, project=args.project, name=args.name,
                                plots=args.plots, label_scan=not args.no_label_scan)
    except USER_ERRORS as e:
        return _fail(str(e))
    pc = out["pycocotools"]
    print(f"\nweights {out['weights']}\ndata {out['data']} ({pc['n_images']} val images), imgsz {out['imgsz']}, "
          f"{out['params']:,} params")
    print(f"Ultralytics   mAP50-95 {out['map50_95']:.4f}  mAP50 {out['map50']:.4f}")
    print(f"pycocotools   mAP50-95 {pc['map50_95']:.4f}  mAP50 {pc['map50']:.4f}   (COCOeval on "
          f"{Path(out['predictions_json']).name} vs {Path(out['coco_json']).name})")
    print(f"Results saved to {out['save_dir']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
        print(f"JSON written to {args.json_out}")
    return 0
