"""classification/train.py with an unwritable --output-dir (fails before training, one line, exit 2) and with
unreadable images in the dataset: empty, corrupt, or truncated after a valid header (each reported as
'path: problem', skipped and counted; training completes)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from classification import data as cdata
from classification.data import make_shapes_dataset

REPO = Path(__file__).resolve().parent.parent
TRAIN = str(REPO / "classification" / "train.py")
# the original MCUNet, which trains stably: the plain twin's gradients explode from its first step (a 1e-6 change of the
# input moves them by a third), so whether this one-epoch run hit a NaN depended on float rounding
ARGS = ["--model", "mcunet_v4", "-b", "8", "-j", "0", "--seed", "0", "--epochs", "1", "--print-freq", "1",
        "--train-crop-size", "32", "--val-resize-size", "36", "--val-crop-size", "32"]


def _train(tmp: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DERO_CACHE_DIR=str(tmp / "cache"), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))  # this checkout
    return subprocess.run([sys.executable, TRAIN, *ARGS, *map(str, args)], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> Path:
    """3 classes x 8 train / 4 val 32x32 PNGs, plus a 0-byte PNG, a corrupt PNG and a JPEG truncated after its header
    in train/, and a 0-byte and a truncated PNG in val/."""
    root = make_shapes_dataset(tmp_path_factory.mktemp("bad") / "tiny", train_per_class=8, val_per_class=4,
                               size=32, num_classes=3)
    (root / "train" / "00_circle" / "empty.png").write_bytes(b"")
    (root / "train" / "01_square" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    jpg = io.BytesIO()
    Image.open(root / "train" / "02_triangle" / "00000.png").convert("RGB").save(jpg, "JPEG", quality=95)
    (root / "train" / "02_triangle" / "truncated.jpg").write_bytes(jpg.getvalue()[:len(jpg.getvalue()) // 2])
    png = (root / "val" / "00_circle" / "00000.png").read_bytes()
    (root / "val" / "00_circle" / "truncated.png").write_bytes(png[:len(png) // 2])
    (root / "val" / "02_triangle" / "empty.png").write_bytes(b"")
    return root


def test_unwritable_output_dir_fails_before_training(tmp_path, bad_data):
    (tmp_path / "somefile").write_text("a regular file, so nothing can be created under it (even as root)")
    p = _train(tmp_path, "--data-path", bad_data, "--output-dir", "somefile/sub")
    assert p.returncode == 2, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("error: --output-dir somefile/sub: cannot create or write"), lines[0]
    assert "writable folder" in lines[0]
    assert "Epoch: [0]" not in p.stdout  # no training happened


def test_unreadable_images_are_reported_skipped_and_counted(tmp_path, bad_data):
    p = _train(tmp_path, "--data-path", bad_data, "--output-dir", tmp_path / "out")
    assert p.returncode == 0, p.stderr[-3000:]
    err = p.stderr
    assert "Traceback" not in err
    assert f"{bad_data / 'train' / '00_circle' / 'empty.png'}: empty file (0 bytes) (skipped)" in err
    bad = "truncated or corrupt image data, cannot be decoded ("
    assert f"{bad_data / 'train' / '01_square' / 'corrupt.png'}: {bad}" in err
    assert f"{bad_data / 'val' / '02_triangle' / 'empty.png'}: empty file (0 bytes) (skipped)" in err
    # truncated after a valid header (PIL opens it, decoding fails): named as such, skipped, not a traceback
    assert f"{bad_data / 'train' / '02_triangle' / 'truncated.jpg'}: {bad}OSError: " in err
    assert f"{bad_data / 'val' / '00_circle' / 'truncated.png'}: {bad}" in err
    assert "Epoch: [0]: skipped 3 unreadable image(s)" in err
    assert "Test: skipped 2 unreadable image(s)" in err
    assert "Test: loss" in p.stdout and "over 12 images" in p.stdout  # the bad val image is not counted
    assert (tmp_path / "out" / "checkpoint.pth").is_file()


def test_skipping_folder_substitutes_or_drops(bad_data):
    tf = cdata.eval_transform(32, 32)
    train = cdata.image_folder(bad_data, "train", tf, skip_bad="substitute")
    bad_i = [i for i, (p, _) in enumerate(train.samples) if p.endswith("empty.png")][0]
    img, target, bad = train[bad_i]
    assert img.shape == (3, 32, 32) and bad == ((train.samples[bad_i][0], "empty file (0 bytes)"),)
    assert target == train.samples[bad_i + 1][1]
    val = cdata.image_folder(bad_data, "val", tf, skip_bad=True)
    bad_v = [i for i, (p, _) in enumerate(val.samples) if p.endswith("empty.png")][0]
    assert isinstance(val[bad_v], cdata.BadImage)
    images, targets, dropped = cdata.SkipBadCollate()([val[0], val[bad_v], train[bad_i]])
    assert images.shape == (2, 3, 32, 32) and targets.tolist() == [val[0][1], target] and len(dropped) == 2
    assert cdata.SkipBadCollate()([val[bad_v]]) == (None, None, [tuple(val[bad_v])])
    # the plain ImageFolder (skip_bad off) is unchanged: the decode error raises
    with pytest.raises(Exception):
        cdata.image_folder(bad_data, "val", tf)[bad_v]
    assert torch.is_tensor(images)
