"""The offline Ultralytics set-up (yolo_dero/ultra/env.py, issue 13 item 2) is explicit and non-destructive: the
user's environment variables and global settings are kept, a settings file the project does not own is never
rewritten (a clear error instead), the font comes from matplotlib only, and ``check_amp`` is replaced only while
the DERO trainer sets up. Import-order cases run in fresh interpreters (a few seconds each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import yolo_dero.ultra  # noqa: F401  (offline Ultralytics environment before any ultralytics import)
from yolo_dero.paths import REPO_ROOT
from yolo_dero.ultra import env as uenv

REPORT = """
import json, os, sys
import yolo_dero.ultra
from ultralytics import utils
from ultralytics.engine import trainer
print(json.dumps({"env": {k: v for k, v in os.environ.items() if k.startswith(("YOLO_", "ULTRALYTICS_"))},
                  "config_dir": str(utils.USER_CONFIG_DIR), "settings_file": str(utils.SETTINGS.file),
                  "check_amp_wrapped": hasattr(trainer.check_amp, "__wrapped__")}))
"""


def _env(tmp: Path, **extra: str) -> dict:
    """A clean child environment: no YOLO_/ULTRALYTICS_ variables, fresh HOME and project cache."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "ULTRALYTICS_"))}
    e.pop("XDG_CONFIG_HOME", None)
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    e.update(HOME=str(home), DERO_CACHE_DIR=str(tmp / "cache"), OMP_NUM_THREADS="1",
             PYTHONPATH=os.pathsep.join([str(REPO_ROOT), e.get("PYTHONPATH", "")]), **extra)
    return e


def _py(tmp: Path, code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def _report(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_import_keeps_the_api_key_and_sets_defaults(tmp_path):
    r = _report(_py(tmp_path, REPORT, _env(tmp_path, ULTRALYTICS_API_KEY="ul_" + "0" * 40)))
    assert r["env"]["ULTRALYTICS_API_KEY"] == "ul_" + "0" * 40  # left alone
    own = tmp_path / "cache" / "ultralytics"
    assert r["env"]["YOLO_CONFIG_DIR"] == str(own)
    assert r["env"]["YOLO_OFFLINE"] == "1" and r["env"]["YOLO_AUTOINSTALL"] == "false"
    assert r["config_dir"] == str(own / "Ultralytics")
    s = json.loads((own / "Ultralytics" / "settings.json").read_text())
    assert s["sync"] is False and not any(s[k] for k in uenv.INTEGRATIONS)
    assert s["runs_dir"] == str(REPO_ROOT / "runs") and s["weights_dir"] == str(tmp_path / "cache" / "weights")
    assert r["check_amp_wrapped"] is False  # importing replaces nothing in Ultralytics
    assert not (tmp_path / "home" / ".config" / "Ultralytics").exists()  # the user's global settings untouched


def test_preset_variables_are_respected_and_a_foreign_settings_file_is_not_written(tmp_path):
    mine = tmp_path / "mine"
    (mine / "Ultralytics").mkdir(parents=True)
    settings = mine / "Ultralytics" / "settings.json"
    # a user's settings dir, already offline: used as it is (its datasets_dir etc. are the user's)
    seed = _py(tmp_path, "import ultralytics.utils as u; u.SETTINGS.update(sync=False, clearml=False, comet=False, "
                         "dvc=False, mlflow=False, raytune=False)", _env(tmp_path, YOLO_CONFIG_DIR=str(mine)))
    assert seed.returncode == 0, seed.stderr[-3000:]
    before = settings.read_bytes()
    r = _report(_py(tmp_path, REPORT, _env(tmp_path, YOLO_CONFIG_DIR=str(mine), YOLO_AUTOINSTALL="true")))
    assert r["env"]["YOLO_CONFIG_DIR"] == str(mine) and r["env"]["YOLO_AUTOINSTALL"] == "true"
    assert r["config_dir"] == str(mine / "Ultralytics") and r["settings_file"] == str(settings)
    assert settings.read_bytes() == before
    assert (mine / "Ultralytics" / "Arial.ttf").is_file()  # the font where check_font looks
    assert not (tmp_path / "cache" / "ultralytics").exists()


def test_a_preset_settings_dir_with_sync_on_is_refused_not_rewritten(tmp_path):
    mine = tmp_path / "mine"
    e = _env(tmp_path, YOLO_CONFIG_DIR=str(mine))
    assert _py(tmp_path, "import ultralytics", e).returncode == 0  # Ultralytics' defaults: sync and integrations on
    settings = mine / "Ultralytics" / "settings.json"
    before = settings.read_bytes()
    p = _py(tmp_path, "import yolo_dero.ultra", e)
    assert p.returncode != 0 and "OfflineSetupError" in p.stderr, p.stderr[-3000:]
    assert "sync=True" in p.stderr and "yolo settings sync=False" in p.stderr and "YOLO_CONFIG_DIR=" in p.stderr
    assert settings.read_bytes() == before


def test_ultralytics_imported_first_with_global_settings_is_refused(tmp_path):
    e = _env(tmp_path)
    assert _py(tmp_path, "import ultralytics", e).returncode == 0
    glob = tmp_path / "home" / ".config" / "Ultralytics" / "settings.json"  # the user's global settings
    before = glob.read_bytes()
    p = _py(tmp_path, "import ultralytics\nimport yolo_dero.ultra", e)
    assert p.returncode != 0 and "OfflineSetupError" in p.stderr, p.stderr[-3000:]
    assert "import yolo_dero.ultra before ultralytics" in p.stderr and str(glob) in p.stderr
    assert glob.read_bytes() == before


def test_ultralytics_imported_first_in_the_offline_environment_proceeds(tmp_path):
    """A child process (e.g. Ultralytics' DDP worker, which imports ultralytics first) that inherits the set-up."""
    own = tmp_path / "cache" / "ultralytics"
    e = _env(tmp_path, YOLO_CONFIG_DIR=str(own), YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false")
    r = _report(_py(tmp_path, "import ultralytics\n" + REPORT, e))
    assert r["config_dir"] == str(own / "Ultralytics")
    assert json.loads((own / "Ultralytics" / "settings.json").read_text())["sync"] is False


def test_setup_is_idempotent():
    assert uenv.setup_offline() == uenv.setup_offline()


def test_check_amp_is_replaced_only_while_the_dero_trainer_sets_up(tmp_path):
    from ultralytics.engine import trainer as utrainer
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import checks

    from yolo_dero.ultra import DeroDetectionTrainer

    assert utrainer.check_amp is checks.check_amp  # after import: Ultralytics' own
    seen = []
    trainer = DeroDetectionTrainer.__new__(DeroDetectionTrainer)
    trainer.wdir = tmp_path
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DetectionTrainer, "_setup_train", lambda self: seen.append(utrainer.check_amp), raising=False)
        trainer._setup_train()
    assert seen and getattr(seen[0], "__wrapped__", None) is checks.check_amp
    assert utrainer.check_amp is checks.check_amp  # restored

    class CPUModel(__import__("torch").nn.Linear):
        pass

    with uenv.offline_check_amp():
        assert utrainer.check_amp(CPUModel(1, 1)) is False  # CPU: the original's answer, no download
    assert utrainer.check_amp is checks.check_amp


def test_dero_trainer_never_runs_platform_callbacks():
    from ultralytics.utils.callbacks import platform

    from yolo_dero.ultra import DeroDetectionTrainer
    from yolo_dero.ultra.model import PLATFORM_CALLBACKS

    assert all(cb.__module__ == PLATFORM_CALLBACKS == platform.__name__ for cb in platform.callbacks.values())
    ran = []

    def upload(trainer):
        ran.append("platform")

    upload.__module__ = PLATFORM_CALLBACKS  # stands for Ultralytics' (which return early under pytest)
    trainer = DeroDetectionTrainer.__new__(DeroDetectionTrainer)
    trainer.callbacks = {"on_pretrain_routine_start": [upload, lambda t: ran.append("other")]}
    trainer.run_callbacks("on_pretrain_routine_start")
    assert ran == ["other"]


def test_fonts_come_from_matplotlib_only(tmp_path, monkeypatch, caplog):
    bundled = uenv.bundled_font()
    assert bundled is not None and bundled.name == "DejaVuSans.ttf" and "matplotlib" in str(bundled)
    fonts = uenv.install_fonts(tmp_path / "a")
    assert [f.name for f in fonts] == list(uenv.FONT_NAMES)
    assert all(f.read_bytes() == bundled.read_bytes() for f in fonts)

    monkeypatch.setattr(uenv.importlib.util, "find_spec", lambda name: None)  # matplotlib not installed
    with caplog.at_level("WARNING", logger="yolo_dero"):
        assert uenv.install_fonts(tmp_path / "b") == []
    assert "matplotlib is not installed" in caplog.text and "Arial.ttf" in caplog.text
    assert not list((tmp_path / "b").iterdir())
