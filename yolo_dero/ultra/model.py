"""Ultralytics extension points: a DetectionModel with DERO units, its trainer, a YOLO subclass.

* :class:`DeroDetectionModel` -- ``DetectionModel`` built by Ultralytics from the stock-named layout of a project
  YAML, whose DERO rows are then converted (:mod:`.convert`); carries ``memory_stages``.
* :class:`DeroDetectionTrainer` -- ``DetectionTrainer`` whose ``get_model`` builds a DeroDetectionModel, whose
  checkpoints are written atomically and whose ``results.csv`` is rewound to the checkpoint on resume.
  Module-level, importable by path: Ultralytics' DDP launcher pickles the trainer class by reference.
* :class:`DeroYOLO` -- ``YOLO`` with a ``task_map`` routing ``detect`` to the two classes above, so
  ``DeroYOLO('cfg/yolov5n-dero.yaml').train(...)``, ``.val()``, ``.predict()``, ``.export()`` work and a
  ``best.pt`` written by it reloads in a fresh process (its classes live in this importable package).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from copy import deepcopy
from pathlib import Path
from typing import Any, Iterator

import torch
from ultralytics import YOLO
from ultralytics.models import yolo
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.distill_model import DistillationModel
from ultralytics.nn.modules import Detect
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import initialize_weights

from ..fileutil import atomic_write_bytes, remove_stale_temps, temp_sibling
from ..nn.dero import exportable_shortcuts
from ..nn.fuse import fuse_units
from ..nn.padding import to_same_padding
from ..nn import activation_linearity_at, apply_stem_norm, get_style, set_activation_linearity
from .anneal import check_activation_anneal, student_model
from .distill import HeadDistillationModel
from .env import offline_check_amp
from .convert import convert_to_dero, stock_layout
from .parser import ModelConfigError, load_model_yaml, parse_stages, resolve_model_yaml

__all__ = ["DeroDetectionModel", "DeroDetectionTrainer", "DeroYOLO", "CheckpointError", "check_checkpoint",
           "atomic_checkpoint_writes", "rewind_results_csv"]


# DERO's detector: the re-parameterizable form with C3's parallel branch kept. It trains closer to the original than
# the pure-chain C3 of cfg/yolov5n-dero-rep.yaml, has the original's parameters and MACs, and deploys as its plain
# twin (cfg/yolov5n-plain-rep-c3.yaml, which trains as well) at the original's TFLite Micro arena; the figures are in
# docs/accuracy_study.md, finding 10
DEFAULT_DETECTOR = "cfg/yolov5n-dero-rep-c3.yaml"


class CheckpointError(ValueError):
    """A .pt file that is not a usable detection checkpoint for these models."""


class DeroDetectionModel(DetectionModel):
    """A YOLO detection model from a project YAML: Ultralytics' ``DetectionModel.__init__`` builds the layout with
    every DERO row (``DeroConv``, ``DeroC3``, ``DeroC3Seed``, ``DeroSPPF``) as the stock module it replaces, then
    those layers are converted (:func:`~.convert.convert_to_dero`) in the YAML's ``dero_style`` with shortcuts per
    ``dero_shortcuts``, re-initialised (``initialize_weights``) and, with ``same_padding: true``, padded like TFLite.

    Args:
        cfg: model YAML path (resolved relative to cwd, then the repository) or an already loaded dict
            (e.g. ``ckpt['model'].yaml`` when Ultralytics rebuilds a checkpoint's model).
        ch: input channels. nc: number of classes (overrides the YAML's ``nc``). verbose: print the layer table.

    Attributes beyond DetectionModel's, read by the memory analyzer (:mod:`yolo_dero.memory`): ``memory_stages`` --
    ordered ``{"stem": ["model.0"], "stage1": [...], ..., "neck": [...], "head": [...]}`` of qualified module names
    (as in ``named_modules()``); ``memory_outputs`` -- ``"first"``: in eval mode the forward returns (decoded
    predictions, raw per-level predictions) and a deployed graph (export mode) returns the decoded predictions only.
    """

    memory_outputs = "first"

    def __init__(self, cfg: str | Path | dict = "yolov5n-dero.yaml", ch: int = 3, nc: int | None = None,
                 verbose: bool = True):
        yaml = cfg if isinstance(cfg, dict) else load_model_yaml(cfg)
        stock, plan = stock_layout(yaml)  # DERO rows written as the Ultralytics modules they replace
        stages = parse_stages(yaml, len(stock["backbone"]) + len(stock["head"]))
        try:  # the units' style (yolo_dero.nn.DeroStyle); a YAML without the key keeps the seed's unit
            style = get_style(yaml.get("dero_style", "seed"))
        except ValueError as e:
            raise ModelConfigError(f"dero_style: {e}") from None
        if nc and nc != stock["nc"]:
            LOGGER.info(f"Overriding model.yaml nc={stock['nc']} with nc={nc}")
            yaml["nc"] = stock["nc"] = nc
        DetectionModel.__init__(self, stock, ch=ch, verbose=False)  # Ultralytics builds the stock layout
        if not isinstance(self.model[-1], Detect):
            raise ModelConfigError(f"last layer must be Detect, got {type(self.model[-1]).__name__}")
        self.yaml = yaml  # the project's YAML, DERO names included (a checkpoint rebuilds from it)
        self.yaml["channels"] = ch
        self.memory_stages = stages
        if plan:  # the DERO delta: convert the named layers, then initialise as Ultralytics does
            convert_to_dero(self.model, plan, style.unit_kwargs(), bool(self.yaml.get("dero_shortcuts", True)))
            apply_stem_norm(self.model, style)  # the stem is layer 0, the first unit
            initialize_weights(self)  # Ultralytics' BatchNorm eps/momentum and in-place activations, new modules too
        if self.yaml.get("same_padding", False):  # TFLite-style SAME padding for strided layers (no PAD on export)
            to_same_padding(self.model)
        if verbose and RANK in {-1, 0}:
            _layer_table(self.model)
            self.info()
            LOGGER.info("")

    def fuse(self, verbose: bool = True, imgsz: int = 640):
        """Ultralytics' fuse (Conv + BatchNorm of the stock layers), then every DERO unit in its fastest exact form
        (:func:`~yolo_dero.nn.fuse.fuse_units`): units of a re-parameterizable model (``dero_style: rep``) fold into
        one convolution; units of the seed's form keep their shortcut with every BatchNorm folded away. Ultralytics
        runs it before val, predict and export."""
        super().fuse(verbose=False, imgsz=imgsz)
        fuse_units(self)
        if verbose:
            self.info(imgsz=imgsz)
        return self

    def info(self, detailed: bool = False, verbose: bool = True, imgsz: int = 640):
        """Ultralytics' model summary, with GFLOPs that also work when the first parameter is a BatchNorm's.

        (Ultralytics' ``get_flops`` reads the input channels from the first parameter's shape, which is a 1-D
        BatchNorm weight in a DERO unit, and then silently reports nothing.)
        """
        from ultralytics.utils.torch_utils import get_num_gradients, get_num_params, model_info

        if detailed:
            model_info(self, detailed=True, verbose=verbose, imgsz=imgsz)
        if not verbose:
            return None
        n_l = sum(1 for _, m in self.named_modules() if len(m._modules) == 0)
        n_p, n_g, flops = get_num_params(self), get_num_gradients(self), gflops(self, imgsz)
        fs = f", {flops:.1f} GFLOPs" if flops else ""
        name = Path(self.yaml.get("yaml_file", "")).stem.replace("yolo", "YOLO") or "Model"
        LOGGER.info(f"{name} summary: {n_l:,} layers, {n_p:,} parameters, {n_g:,} gradients{fs}")
        return n_l, n_p, n_g, flops


def _layer_table(layers: torch.nn.Sequential) -> None:
    """The converted model's layer table, in the columns of Ultralytics' ``parse_model``."""
    LOGGER.info(f"\n{'':>3}{'from':>20}{'params':>10}  {'module':<45}")
    for m in layers:
        LOGGER.info(f"{m.i:>3}{m.f!s:>20}{sum(p.numel() for p in m.parameters()):10.0f}  {m.type:<45}")


def gflops(model: torch.nn.Module, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs (2 x multiply-accumulates counted by thop, as Ultralytics reports) of one image at ``imgsz``.

    Counts the operators thop hooks (convolutions, BatchNorm, pooling modules); the DERO shortcut's
    parameter-free sum-pool/pad/fold are functional and not counted (they are additions, no multiplies).
    Returns 0.0 where thop is missing or profiling fails, like Ultralytics.
    """
    try:
        import thop
    except ImportError:
        return 0.0
    try:
        h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
        ch = int(getattr(model, "yaml", {}).get("channels", 3))
        p = next(model.parameters())
        stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
        im = torch.empty((1, ch, h, w), device=p.device, dtype=p.dtype)
        return thop.profile(deepcopy(model), inputs=[im], stride=stride, verbose=False)[0] / 1e9 * 2
    except Exception:
        return 0.0


class _Replace(logging.Filter):
    """Rewrite ``old`` to ``new`` in the messages of the logger it is added to."""

    def __init__(self, old: str, new: str):
        super().__init__()
        self.old, self.new = old, new

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and self.old in record.msg:
            record.msg = record.msg.replace(self.old, self.new)
        return True


@contextlib.contextmanager
def atomic_checkpoint_writes(folder: str | Path) -> Iterator[None]:
    """Within the block, Ultralytics' checkpoint writes into ``folder`` are atomic (temporary file + rename).

    Ultralytics 8.4 writes ``last.pt``, ``best.pt`` and ``epochN.pt`` with ``Path.write_bytes`` (``save_model``) and
    rewrites them with ``strip_optimizer`` (``final_eval``); both overwrite in place, so a kill or a full disk
    mid-write leaves a truncated file and the previous epoch's state is gone too. The two are redirected for
    paths in ``folder`` only, and restored on exit.
    """
    from ultralytics.engine import trainer as utrainer

    folder = Path(folder).resolve()
    write_bytes, strip = Path.write_bytes, utrainer.strip_optimizer

    def atomic_write(path: Path, data) -> int:
        if Path(path).resolve().parent != folder:
            return write_bytes(path, data)
        atomic_write_bytes(path, data)
        return len(memoryview(data))

    def atomic_strip(f="best.pt", s="", updates=None):
        target = Path(s or f)
        tmp = temp_sibling(target)
        hide = _Replace(f" saved as {tmp},", "")  # its log line names the file it replaces, not the temporary
        LOGGER.addFilter(hide)
        try:
            out = strip(f, s=str(tmp), updates=updates)
            if tmp.exists():  # nothing written when ``f`` was no valid checkpoint
                os.replace(tmp, target)
            return out
        finally:
            LOGGER.removeFilter(hide)
            tmp.unlink(missing_ok=True)

    Path.write_bytes, utrainer.strip_optimizer = atomic_write, atomic_strip
    try:
        yield
    finally:
        Path.write_bytes, utrainer.strip_optimizer = write_bytes, strip


def _saved_table(saved: Any) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of a checkpoint's ``train_results`` (results.csv as columns), formatted as Ultralytics writes."""
    if not isinstance(saved, dict) or not saved.get("epoch"):
        return None
    header = list(saved)
    if len({len(saved[k]) for k in header}) != 1:
        return None
    fmt = lambda v: "%.6g" % v if isinstance(v, (int, float)) else str(v)  # noqa: E731
    return header, [[fmt(v) for v in row] for row in zip(*(saved[k] for k in header))]


def _file_table(csv: Path) -> tuple[list[str], list[list[str]]] | None:
    lines = [ln for ln in csv.read_text().splitlines() if ln.strip()] if csv.is_file() else []
    return (lines[0].split(","), [ln.split(",") for ln in lines[1:]]) if lines else None


def rewind_results_csv(csv: str | Path, saved: Any, epochs_done: int) -> float:
    """Make ``csv`` (results.csv) list exactly epochs 1..``epochs_done``, those of the checkpoint a run resumes
    from; return the ``time`` of the last (0.0 if none), where the resumed run's times continue.

    Rows after the checkpoint (the row of an epoch whose save was killed, or the later epochs of a run resumed
    from best.pt) would otherwise be listed twice. The checkpoint's own copy of the table (``saved``, its
    ``train_results``) is used where it holds every one of those epochs, else the file's rows are cut.
    """
    csv = Path(csv)
    want = [float(e) for e in range(1, epochs_done + 1)]
    table = None
    for cand in (_saved_table(saved), _file_table(csv)):
        if cand is None or not cand[0] or cand[0][0].strip() != "epoch":
            continue
        rows = [r for r in cand[1] if len(r) == len(cand[0]) and _number(r[0]) <= epochs_done]  # no torn rows
        table = (cand[0], rows)
        if [_number(r[0]) for r in rows] == want:
            break
    if table is None:
        return 0.0
    header, rows = table
    atomic_write_bytes(csv, ("\n".join(",".join(r) for r in [header, *rows]) + "\n").encode())
    names = [h.strip() for h in header]
    t = _number(rows[-1][names.index("time")]) if rows and "time" in names else 0.0
    return t if math.isfinite(t) else 0.0


def _number(text: str) -> float:
    """A results.csv field as a number (infinity where it is not one, so such a row is dropped)."""
    try:
        return float(text)
    except ValueError:
        return float("inf")


PLATFORM_CALLBACKS = "ultralytics.utils.callbacks.platform"  # the callbacks that upload to Ultralytics Platform


class DeroDetectionTrainer(DetectionTrainer):
    """DetectionTrainer whose models are DeroDetectionModels (fresh from a YAML, or rebuilt from a checkpoint).

    Data safety on top of Ultralytics: checkpoints are written atomically (:func:`atomic_checkpoint_writes`),
    temporaries of a killed save are deleted at the next start, and a resumed run's ``results.csv`` lists every
    epoch once (:func:`rewind_results_csv`) with its ``time`` column continuing from the checkpoint's.

    Offline: ``check_amp`` does not download ``yolo26n.pt`` (:func:`~.env.offline_check_amp`, replaced only while
    this trainer sets up) and Ultralytics Platform callbacks never run (:meth:`run_callbacks`).

    A model YAML with ``act_anneal_epochs: N`` (:mod:`.anneal`) trains with its DERO units' activations blended with
    the identity, ``t`` falling per batch from 1 to 0 over the first N epochs.
    """

    _time_offset = 0.0  # seconds of training before a resume (results.csv's time column continues from it)
    _anneal_epochs = 0.0  # the activation anneal's length (0: none), read from the model's YAML when training starts
    _anneal_batch = 0  # batches trained in the current epoch
    distill_head = False  # with ``distill_model``: Ultralytics' feature distillation (True: HeadDistillationModel)

    def get_model(self, cfg: str | dict | None = None, weights: torch.nn.Module | None = None,
                  verbose: bool = True):
        model = self.set_model_names_for_load(
            DeroDetectionModel(cfg, nc=self.data["nc"], ch=self.data["channels"], verbose=verbose and RANK == -1))
        if weights:
            model.load(weights)
        return model

    def setup_model(self):
        """Ultralytics' model set-up; with a teacher and head distillation (this trainer's ``distill_head``, or a
        resumed checkpoint trained so), the teacher-student wrapper is a :class:`~.distill.HeadDistillationModel`
        (Ultralytics wraps the model itself later only if it is not one already)."""
        ckpt = super().setup_model()
        if self.args.distill_model is None:
            return ckpt
        wrapped = isinstance(self.model, DistillationModel)
        saved = ckpt.get("ema") if isinstance(ckpt, dict) else None
        if self.distill_head or isinstance(saved, HeadDistillationModel):
            if wrapped:  # resumed: Ultralytics rebuilt its wrapper; ours has the same state, only its loss differs
                self.model.__class__ = HeadDistillationModel
            else:
                self.model.args = self.args  # the wrapper reads imgsz and dis from its student
                self.model = HeadDistillationModel(student_model=self.model, teacher_model=self.args.distill_model)
        return ckpt

    def _setup_train(self):
        """Ultralytics' setup, after deleting the temporary files of checkpoint saves a kill interrupted, with a
        ``check_amp`` that does not download (:func:`~.env.offline_check_amp`)."""
        if RANK in {-1, 0}:
            remove_stale_temps(self.wdir)
        with offline_check_amp():
            return super()._setup_train()

    def run_callbacks(self, event: str):
        """Ultralytics' callbacks except its Platform ones: training never uploads, whatever
        ``ULTRALYTICS_API_KEY`` or the ``api_key`` setting holds. Steps the activation anneal first."""
        self._step_activation_anneal(event)
        for callback in self.callbacks.get(event, []):
            if getattr(callback, "__module__", None) != PLATFORM_CALLBACKS:
                callback(self)

    def _step_activation_anneal(self, event: str) -> None:
        """Set the trained model's activation linearity for the batch about to run, from the step alone (a resumed
        run continues the schedule); back to the model as built when training ends. The length is read and checked
        against the run's epochs when training starts (:func:`~.anneal.check_activation_anneal`)."""
        if event == "on_train_start":
            self._anneal_epochs = check_activation_anneal(self.model, self.epochs)
        if not self._anneal_epochs:
            return
        if event == "on_train_epoch_start":
            self._anneal_batch = 0
        elif event == "on_train_batch_start":
            progress = self.epoch + self._anneal_batch / max(1, len(self.train_loader))
            set_activation_linearity(student_model(self.model), activation_linearity_at(progress, self._anneal_epochs))
            self._anneal_batch += 1
        elif event == "on_train_end":
            set_activation_linearity(student_model(self.model), 0.0)

    def save_model(self):
        """Ultralytics' save, with last.pt, best.pt and epochN.pt each written atomically."""
        with atomic_checkpoint_writes(self.wdir):
            return super().save_model()

    def final_eval(self):
        """Ultralytics' final validation, whose optimizer stripping rewrites last.pt and best.pt atomically too."""
        with atomic_checkpoint_writes(self.wdir):
            return super().final_eval()

    def resume_training(self, ckpt):
        """Ultralytics' resume, then results.csv rewound to the checkpoint's epoch."""
        super().resume_training(ckpt)
        if ckpt is not None and self.resume and RANK in {-1, 0}:
            self._time_offset = rewind_results_csv(self.csv, ckpt.get("train_results"), self.start_epoch)

    def save_metrics(self, metrics):
        """Ultralytics' results.csv row, with ``time`` counted from the run's start rather than the resume's."""
        start = self.train_time_start
        self.train_time_start = start - self._time_offset
        try:
            super().save_metrics(metrics)
        finally:
            self.train_time_start = start


class DeroHeadDistillationTrainer(DeroDetectionTrainer):
    """:class:`DeroDetectionTrainer` that distils from ``distill_model`` at the head's outputs
    (:class:`~.distill.HeadDistillationModel`) rather than with Ultralytics' feature matching."""

    distill_head = True


def _ckpt_model(ckpt: Any) -> torch.nn.Module | None:
    if not isinstance(ckpt, dict):
        return None
    for key in ("ema", "model"):
        if isinstance(ckpt.get(key), torch.nn.Module):
            # a distillation run's last.pt holds Ultralytics' DistillationModel: the detector is its student
            return getattr(ckpt[key], "student_model", ckpt[key])
    return None


def check_checkpoint(path: str | Path, nc: int | None = None, role: str = "weights") -> Path:
    """Make sure ``path`` is a readable Ultralytics *detection* checkpoint (predicting ``nc`` classes, when given;
    ``role`` names the file in that error, e.g. "--teacher"); raise a clear error otherwise.

    Ultralytics itself would try to download a missing ``.pt`` by name, and reports damaged or foreign files
    with generic errors; this check names the file and what is wrong with it.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: '{path}'")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, not a pickle, ...
        raise CheckpointError(f"'{p}' is not a readable PyTorch checkpoint (corrupt or not a .pt file): "
                              f"{type(e).__name__}: {e}") from None
    if isinstance(ckpt, torch.jit.ScriptModule):
        raise CheckpointError(f"'{p}' is a TorchScript archive, not an Ultralytics checkpoint")
    model = _ckpt_model(ckpt)
    if model is None:
        what = f"a dict with keys {sorted(ckpt)[:8]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"'{p}' is not an Ultralytics detection checkpoint (found {what}; expected a dict "
                              f"with a 'model' or 'ema' DetectionModel) -- weights of another architecture?")
    if not isinstance(model, DetectionModel) or not isinstance(model.model[-1], Detect) \
            or type(model.model[-1]).__name__ != "Detect":
        raise CheckpointError(f"'{p}' holds a {type(model).__name__} with head "
                              f"{type(getattr(model, 'model', [None])[-1]).__name__}, not a detection model")
    if nc is not None and int(model.model[-1].nc) != nc:
        raise CheckpointError(f"{role} '{p}' predicts {int(model.model[-1].nc)} classes, the data has {nc}: use a "
                              f"detector trained on the same classes (e.g. the original YOLOv5n trained on this data)")
    return p.resolve()


class DeroYOLO(YOLO):
    """YOLO whose detection task uses :class:`DeroDetectionModel` and :class:`DeroDetectionTrainer`.

    ``DeroYOLO('cfg/yolov5n-dero-rep-c3.yaml')`` (path relative to cwd or the repository) or ``DeroYOLO('best.pt')``;
    the default is :data:`DEFAULT_DETECTOR`.
    """

    def __init__(self, model: str | Path = DEFAULT_DETECTOR, task: str | None = None,
                 verbose: bool = False):
        s = str(model)
        if s.lower().endswith((".yaml", ".yml")):
            model = str(resolve_model_yaml(s))
            load_model_yaml(model)  # a malformed file fails here in one line, not in Ultralytics' loader
        elif s.lower().endswith(".pt"):
            model = str(check_checkpoint(s))
        super().__init__(model=model, task=task, verbose=verbose)
        if self.task not in (None, "detect"):
            raise CheckpointError(f"'{model}' is a {self.task} model; DeroYOLO handles detection only")

    @staticmethod
    def _resolve_data(kwargs: dict, splits: tuple[str, ...]) -> dict:
        """Route a local data YAML through :func:`~yolo_dero.datasets.resolve_data` (built-in generation, absolute
        ``path:``, no ``download:``); names Ultralytics knows but that are not local pass through unchanged."""
        from ..datasets import resolve_data
        from ..datasets.resolve import find_data_yaml

        data = kwargs.get("data")
        if isinstance(data, (str, Path)) and str(data).lower().endswith((".yaml", ".yml")):
            try:
                find_data_yaml(data)
            except FileNotFoundError:
                return kwargs
            kwargs["data"] = str(resolve_data(data, splits=splits).yaml_path)
        return kwargs

    def train(self, trainer=None, **kwargs: Any):
        """Ultralytics' train; ``data`` defaults to the built-in ``data/shapes.yaml`` and local data YAMLs are
        resolved first (so ``data='data/shapes.yaml'`` or ``data='data/coco.yaml'`` work offline)."""
        if not kwargs.get("resume"):
            kwargs.setdefault("data", "data/shapes.yaml")
            self._resolve_data(kwargs, ("train", "val"))
        return super().train(trainer=trainer, **kwargs)

    def val(self, validator=None, **kwargs: Any):
        """Ultralytics' val, with local data YAMLs resolved first (see :meth:`train`)."""
        return super().val(validator=validator, **self._resolve_data(kwargs, ("val",)))

    def export(self, **kwargs: Any) -> str:
        """Ultralytics' export with the DERO shortcut's sum-pool written in exactly-exportable ops."""
        with exportable_shortcuts():
            return super().export(**kwargs)

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        return {
            "detect": {
                "model": DeroDetectionModel,
                "trainer": DeroDetectionTrainer,
                "validator": yolo.detect.DetectionValidator,
                "predictor": yolo.detect.DetectionPredictor,
            }
        }
