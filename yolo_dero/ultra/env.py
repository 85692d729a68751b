"""The offline Ultralytics set-up: :func:`setup_offline`, called once by ``yolo_dero/ultra/__init__.py`` before
anything in the project imports ``ultralytics`` (Ultralytics reads its environment variables when it is imported).

What :func:`setup_offline` does (idempotent; non-destructive: it never removes or overrides what the user set):

* environment, with ``os.environ.setdefault`` -- a value already set is kept:

  - ``YOLO_CONFIG_DIR=<cache>/ultralytics`` (``<cache>`` = ``$DERO_CACHE_DIR`` or ``<repo>/.cache``): Ultralytics
    keeps ``settings.json`` and its fonts in ``$YOLO_CONFIG_DIR/Ultralytics``, so the project has its own settings
    and never reads or writes the user's global ones. Only set when ``ultralytics`` is not imported yet (it would
    have no effect in this process, and child processes must see the directory this process uses);
  - ``YOLO_OFFLINE=1``: Ultralytics' ``ONLINE`` is False, so no connectivity probe, no pip-update check, no
    analytics events;
  - ``YOLO_AUTOINSTALL=false``: ``check_requirements`` never pip-installs (a missing package is an error);
  - ``ULTRALYTICS_API_KEY`` is left alone; :class:`~.model.DeroDetectionTrainer` never runs Ultralytics Platform
    callbacks, so training uploads nothing whatever the key;

* ``import ultralytics``; then, if it had been imported earlier (its ``ONLINE``, ``AUTOINSTALL`` and settings
  directory were fixed then), a check that they are what the environment above asks for;
* settings: in the project's own settings file (``<cache>/ultralytics/Ultralytics/settings.json``) ``sync`` off,
  every integration (ClearML, Comet, DVC, MLflow, Ray Tune, TensorBoard, W&B) off, ``datasets_dir`` and
  ``weights_dir`` under the cache, ``runs_dir`` = ``<repo>/runs`` (written only when a value differs). Any other
  settings file (``ultralytics`` imported first with the user's global settings, or a ``YOLO_CONFIG_DIR`` the user
  set) is never written: if its ``sync`` or an integration is on, :class:`OfflineSetupError` says which and how
  to fix it; its directories are used as they are;
* a font: Ultralytics' ``check_font`` (dataset checks, every plot) downloads ``Arial.ttf`` /
  ``Arial.Unicode.ttf`` unless the file is in its settings directory, even offline. matplotlib's bundled
  ``DejaVuSans.ttf`` is copied there under both names (missing names only; nothing else on the machine is
  searched). Without matplotlib a warning says what to do.

``check_amp`` is not touched here: :func:`offline_check_amp` replaces it only while
:class:`~.model.DeroDetectionTrainer` sets up training.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from ..paths import REPO_ROOT, cache_dir

LOG = logging.getLogger("yolo_dero")

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
_state: dict = {}


class OfflineSetupError(RuntimeError):
    """Ultralytics is configured in a way the offline set-up cannot fix without overriding the user's choices."""


def config_dir() -> Path:
    """The project's ``YOLO_CONFIG_DIR`` (Ultralytics appends ``/Ultralytics``)."""
    return cache_dir() / "ultralytics"


def settings_dir() -> Path:
    return config_dir() / "Ultralytics"


def offline_settings() -> dict:
    """Settings the offline set-up needs in every settings file: sync and every integration off."""
    return {"sync": False, **{k: False for k in INTEGRATIONS}}


def project_settings() -> dict:
    """Everything the set-up writes into the project's own settings file."""
    return {**offline_settings(),
            "datasets_dir": str(cache_dir() / "datasets"),
            "weights_dir": str(cache_dir() / "weights"),
            "runs_dir": str(REPO_ROOT / "runs"),
            "vscode_msg": False, "openvino_msg": False}


def bundled_font() -> Path | None:
    """matplotlib's bundled DejaVuSans.ttf (found without importing matplotlib), or None."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.origin:
        return None
    font = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return font if font.is_file() else None


def install_fonts(target: Path) -> list[Path]:
    """Copy matplotlib's DejaVuSans.ttf into ``target`` as Arial.ttf and Arial.Unicode.ttf (files already there
    are kept). Returns the font paths, or [] (with a warning) when matplotlib is not installed."""
    target.mkdir(parents=True, exist_ok=True)
    missing = [target / n for n in FONT_NAMES if not (target / n).is_file()]
    if not missing:
        return [target / n for n in FONT_NAMES]
    src = bundled_font()
    if src is None:
        LOG.warning("yolo_dero: matplotlib is not installed (it is in requirements.txt), so its DejaVuSans.ttf "
                    "cannot serve as Ultralytics' plot font, and Ultralytics would try to download Arial.ttf. "
                    "Install matplotlib, or copy any .ttf to %s and %s (or pass plots=False).",
                    target / FONT_NAMES[0], target / FONT_NAMES[1])
        return []
    for dst in missing:
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)  # atomic: concurrent processes never see a half-written font
    return [target / n for n in FONT_NAMES]


def _env_true(name: str, default: bool) -> bool:
    """The value Ultralytics' ``env_bool`` gives the variable ``name``."""
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def _same_dir(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def setup_offline() -> Path:
    """Set up the offline, project-owned Ultralytics environment (see the module docstring) and import
    Ultralytics. Idempotent. Returns Ultralytics' live settings directory.

    Raises:
        OfflineSetupError: ``ultralytics`` was imported earlier in a state this set-up cannot change, or the
            settings file in use is not the project's and has sync or an integration on. Nothing is rewritten.
    """
    if "dir" in _state:
        return _state["dir"]
    imported_first = "ultralytics" in sys.modules
    if not imported_first:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir()))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")

    import ultralytics  # noqa: F401  (the first import reads the variables above)
    from ultralytics import utils as uutils

    live_dir = Path(uutils.USER_CONFIG_DIR)
    settings = uutils.SETTINGS
    problems, fixes = [], []
    if imported_first:
        if uutils.ONLINE and _env_true("YOLO_OFFLINE", False):
            problems.append("Ultralytics was imported before YOLO_OFFLINE=1 was set and is in online mode")
        if uutils.AUTOINSTALL and not _env_true("YOLO_AUTOINSTALL", True):
            problems.append("Ultralytics was imported before YOLO_AUTOINSTALL=false was set and may pip-install "
                            "missing packages")
    # The project's own file: the one in its config dir, or the one Ultralytics chose for that dir (it falls back
    # to a private temporary dir when that dir is not writable)
    owned = _same_dir(Path(settings.file).parent, settings_dir()) or (
        not imported_first and _same_dir(os.environ.get("YOLO_CONFIG_DIR", ""), config_dir()))
    if owned:
        changed = {k: v for k, v in project_settings().items() if k in settings and settings.get(k) != v}
        if changed and not problems:  # write only when needed: many processes share this file
            settings.update(changed)
    else:
        on = [k for k, v in offline_settings().items() if k in settings and settings.get(k) != v]
        if on:
            problems.append(f"the Ultralytics settings file in use, {settings.file}, is not this project's and has "
                            f"{', '.join(f'{k}=True' for k in on)} (it is left as it is)")
            fixes.append("or, for the settings, turn them off in that file: yolo settings "
                         + " ".join(f"{k}=False" for k in on))
    if problems:
        raise OfflineSetupError(
            "yolo_dero cannot set up offline Ultralytics: " + "; ".join(problems) + ". Fix: import yolo_dero.ultra "
            f"before ultralytics, or start Python with YOLO_CONFIG_DIR={config_dir()} YOLO_OFFLINE=1 "
            "YOLO_AUTOINSTALL=false (the project's own settings)" + "".join(f"; {f}" for f in fixes))
    install_fonts(live_dir)  # the directory check_font really looks in
    _state["dir"] = live_dir
    return live_dir


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


@contextlib.contextmanager
def offline_check_amp() -> Iterator[None]:
    """Within the block, the trainer's ``check_amp`` does not download: on CUDA, when ``yolo26n.pt`` is not already
    in ``weights_dir``, the check is skipped with AMP left on -- what Ultralytics itself does when the download
    fails. On CPU the trainer never uses AMP. The original is restored on exit."""
    from ultralytics.engine import trainer as utrainer

    original = utrainer.check_amp
    utrainer.check_amp = _offline_check_amp(original)
    try:
        yield
    finally:
        utrainer.check_amp = original
