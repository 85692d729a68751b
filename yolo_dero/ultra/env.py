"""Offline, project-owned Ultralytics environment. Import this (or anything in ``yolo_dero.ultra``) before
``ultralytics``.

What it does, once per process (idempotent):

* ``YOLO_CONFIG_DIR`` -> ``cache_dir()/ultralytics`` (Ultralytics keeps its ``settings.json`` and fonts in
  ``$YOLO_CONFIG_DIR/Ultralytics``), so a user's global settings (``datasets_dir``, integrations, ...) never
  leak into this project's runs;
* a font there: ``check_font`` (dataset checks, every plot) downloads ``Arial.ttf`` /
  ``Arial.Unicode.ttf`` unless the file is in that directory, even with ``YOLO_OFFLINE=1``. We copy a TTF that
  is already on the machine (matplotlib's bundled DejaVuSans.ttf, else a system font) under both names;
* ``YOLO_OFFLINE=1``: Ultralytics' ``ONLINE`` is False, so no connectivity probe, no pip-update check, no
  analytics events; ``YOLO_AUTOINSTALL=false``: ``check_requirements`` never pip-installs (a missing package
  is an error instead); ``ULTRALYTICS_API_KEY`` is dropped from the environment (no Platform uploads);
* after import: settings ``sync=False``, every integration (ClearML, Comet, DVC, MLflow, Ray Tune,
  TensorBoard, W&B) off, ``datasets_dir``/``weights_dir`` under the cache, ``runs_dir`` = ``<repo>/runs``;
* ``check_amp`` (CUDA only) would download ``yolo26n.pt`` to compare FP32 and AMP outputs: when that file
  is not already in ``weights_dir``, the check is skipped with AMP left on -- what Ultralytics itself does when
  the download fails -- instead of attempting the download. On CPU the trainer never uses AMP.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

from ..paths import REPO_ROOT, cache_dir

LOG = logging.getLogger("yolo_dero")

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
_state: dict = {}


def config_dir() -> Path:
    """The project's ``YOLO_CONFIG_DIR`` (Ultralytics appends ``/Ultralytics``)."""
    return cache_dir() / "ultralytics"


def settings_dir() -> Path:
    return config_dir() / "Ultralytics"


def find_local_font() -> Path | None:
    """A TTF already on this machine: matplotlib's DejaVuSans.ttf, else the first system TTF found."""
    spec = importlib.util.find_spec("matplotlib")
    candidates = []
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf")
    for root in ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts"):
        p = Path(root)
        if p.is_dir():
            candidates.extend(sorted(p.rglob("DejaVuSans.ttf")) + sorted(p.rglob("*.ttf"))[:1])
    return next((c for c in candidates if c.is_file()), None)


def install_fonts(target: Path) -> list[Path]:
    """Copy a local TTF into ``target`` as Arial.ttf and Arial.Unicode.ttf (skips files already there)."""
    target.mkdir(parents=True, exist_ok=True)
    missing = [target / n for n in FONT_NAMES if not (target / n).is_file()]
    if not missing:
        return [target / n for n in FONT_NAMES]
    src = find_local_font()
    if src is None:
        LOG.warning("yolo_dero: no TTF font found on this machine; Ultralytics plots would try to download "
                    "Arial.ttf. Put any .ttf at %s (or pass plots=False).", target / FONT_NAMES[0])
        return []
    for dst in missing:
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)  # atomic: concurrent processes never see a half-written font
    return [target / n for n in FONT_NAMES]


def setup_environment() -> Path:
    """Set the environment variables and fonts; call before ``import ultralytics``. Returns the settings dir."""
    if "env" in _state:
        return _state["env"]
    already_set = (os.environ.get("YOLO_CONFIG_DIR") == str(config_dir())
                   and os.environ.get("YOLO_OFFLINE") == "1")  # e.g. a DDP worker spawned by our trainer
    if "ultralytics" in sys.modules and not already_set:
        LOG.warning("yolo_dero: ultralytics was imported before yolo_dero.ultra; its settings directory and "
                    "online check were already fixed. Import yolo_dero.ultra first to stay offline.")
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir())
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ.pop("ULTRALYTICS_API_KEY", None)
    sdir = settings_dir()
    install_fonts(sdir)
    _state["env"] = sdir
    return sdir


def _offline_check_amp(original):
    def check_amp(model):
        """Ultralytics' check_amp without its download: skip (AMP on) when yolo26n.pt is not local."""
        from ultralytics.utils import LOGGER, WEIGHTS_DIR

        device = next(model.parameters()).device
        if device.type == "cuda" and not (Path(WEIGHTS_DIR) / "yolo26n.pt").is_file():
            LOGGER.info(f"AMP: checks skipped offline (no yolo26n.pt in {WEIGHTS_DIR}); using amp=True. "
                        "Pass amp=False if you see NaN losses.")
            return True
        return original(model)  # CPU/MPS: False at once; CUDA with local weights: the real check

    check_amp.__wrapped__ = original
    return check_amp


def patch_ultralytics() -> None:
    """After ``import ultralytics``: project settings, fonts in the live settings dir, offline check_amp."""
    if _state.get("patched"):
        return
    from ultralytics import utils as uutils
    from ultralytics.engine import trainer as utrainer

    install_fonts(Path(uutils.USER_CONFIG_DIR))  # the directory check_font really looks in
    wanted = {
        "datasets_dir": str(cache_dir() / "datasets"),
        "weights_dir": str(cache_dir() / "weights"),
        "runs_dir": str(REPO_ROOT / "runs"),
        "sync": False,
        "api_key": "",
        "clearml": False, "comet": False, "dvc": False, "mlflow": False, "raytune": False,
        "tensorboard": False, "wandb": False, "vscode_msg": False, "openvino_msg": False,
    }
    settings = uutils.SETTINGS
    changed = {k: v for k, v in wanted.items() if k in settings and settings.get(k) != v}
    if changed:  # write only when needed: many processes share this file
        settings.update(changed)
    if not getattr(utrainer.check_amp, "__wrapped__", None):
        utrainer.check_amp = _offline_check_amp(utrainer.check_amp)
    _state["patched"] = True
