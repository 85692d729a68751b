"""Data YAMLs -> a resolved copy Ultralytics can use offline, plus a pre-scan of YOLO labels.

``resolve_data('data/shapes.yaml')`` generates the built-in dataset on first use; ``resolve_data('data/coco.yaml')``
finds a local COCO 2017 (``--data-path``, ``$DERO_COCO_DIR`` or ``path:``) and fails with the expected paths when
it is absent. Every resolved YAML has an absolute ``path:`` and no ``download:`` key, and carries the
project keys ``coco_json`` (absolute) and ``coco_category_ids`` used by the pycocotools evaluation.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..fileutil import yaml_problem
from ..paths import REPO_ROOT, cache_dir, shipped

IMG_FORMATS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic"}
PROJECT_KEYS = ("builtin", "cache_name", "n_train", "n_val", "imgsz", "seed", "path_env")


class DatasetError(FileNotFoundError):
    """A dataset (or part of it) that is not where its YAML says."""


@dataclass
class ResolvedData:
    yaml_path: Path  # the file to hand to Ultralytics (absolute path:, no download:)
    data: dict  # its contents
    source: Path  # the YAML the user named
    root: Path
    coco_json: Path | None = None
    category_ids: list[int] | None = None
    names: dict = field(default_factory=dict)

    @property
    def nc(self) -> int:
        return len(self.names)


def find_data_yaml(data: str | Path) -> Path:
    """A data YAML as given (relative to cwd), else relative to the repository; a bare name (``shapes.yaml``,
    ``shapes``) is also looked up in ``<repo>/data``. A path with folders that does not exist is an error, never a
    silent fall-back to the project's own copy of a file with the same name."""
    p = Path(data).expanduser()
    own = shipped("data")  # <repo>/data, or the package data of an installed wheel
    cands = [p] if p.is_absolute() else [p, REPO_ROOT / p]
    if len(p.parts) == 1:
        cands += [own / p.name] + ([own / f"{p.name}.yaml"] if not p.suffix else [])
    elif p.parent == Path("data"):  # data/shapes.yaml: the project's own file, also where no checkout is around it
        cands += [own / p.name]
    for c in cands:
        if c.is_file():
            return c.resolve()
    folder = next((c for c in cands[:2] if c.is_dir()), None)
    if folder is not None:
        where = "" if str(folder.resolve()) == str(data) else f" ({folder.resolve()})"
        raise DatasetError(f"data '{data}' is a folder{where}, not a data YAML: pass a data YAML with "
                           f"--data (e.g. data/shapes.yaml, or one whose 'path:' is this folder) and the dataset "
                           f"folder with --data-path")
    raise DatasetError(f"data YAML not found: '{data}' (looked in {Path.cwd()}, {REPO_ROOT}, {own})")


def _names(d: dict) -> dict:
    names = d.get("names")
    if names is None:
        return {i: f"class_{i}" for i in range(int(d.get("nc", 0)))}
    if isinstance(names, list):
        return dict(enumerate(names))
    return {int(k): v for k, v in names.items()}


def _root(d: dict, source: Path, data_path: str | Path | None) -> tuple[Path, str]:
    """The dataset root and where it came from (for error messages)."""
    if data_path:
        return Path(data_path).expanduser().resolve(), "--data-path"
    env = d.get("path_env")
    if env and os.environ.get(env):
        return Path(os.environ[env]).expanduser().resolve(), f"${env}"
    p = Path(str(d.get("path") or source.parent)).expanduser()
    if p.is_absolute():
        return p, f"'path:' in {source}"
    cands = [(source.parent / p), REPO_ROOT / p, cache_dir() / "datasets" / p]
    return next((c.resolve() for c in cands if c.exists()), cands[0].resolve()), f"'path:' in {source}"


def _check_split(root: Path, spec: Any, key: str, how: str, source: Path, env: str | None) -> None:
    entries = spec if isinstance(spec, list) else [spec]
    for e in entries:
        p = (root / str(e)).resolve()
        if not p.exists():
            hint = f"set ${env}=/path/to/dataset or " if env else ""
            raise DatasetError(
                f"dataset '{source.name}': {key} images not found: missing '{p}'.\n"
                f"Dataset root '{root}' (from {how}). Expected under it: {_layout_hint(spec, key)}.\n"
                f"Fix: {hint}pass --data-path DIR, or edit 'path:' in {source}. Nothing is downloaded.")
        if not _has_images(p):
            kinds = ", ".join(sorted(IMG_FORMATS)[:6])
            raise DatasetError(f"dataset '{source.name}': {key} '{p}' holds no images ({kinds}, ... files); put the "
                               f"images there or point '{key}:' in {source} at the right folder")


def _has_images(p: Path) -> bool:
    """Whether a split entry (a folder, searched recursively, or an image-list file) names at least one image."""
    if p.is_dir():
        return any(f.suffix[1:].lower() in IMG_FORMATS for f in p.rglob("*"))
    with open(p, encoding="utf-8-sig") as f:
        return any(line.strip() for line in f)


def _layout_hint(spec: Any, key: str) -> str:
    s = str(spec[0] if isinstance(spec, list) else spec)
    if s.endswith(".txt"):
        stem = Path(s).stem
        return f"'{s}' (image list), 'images/{stem}/', 'labels/{stem}/'"
    return f"'{s}/' (images) and the matching labels folder ('images' -> 'labels')"


def _write_resolved(d: dict, source: Path) -> Path:
    text = yaml.safe_dump(d, sort_keys=False)
    digest = hashlib.sha1((str(source) + text).encode()).hexdigest()[:10]
    out_dir = cache_dir() / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{source.stem}-{digest}.yaml"
    if not out.is_file() or out.read_text() != text:
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, out)
    return out


def resolve_data(data: str | Path, data_path: str | Path | None = None, splits: tuple[str, ...] = ("train", "val"),
                 need_coco_json: bool = False) -> ResolvedData:
    """Resolve a data YAML for Ultralytics: built-in generation, dataset root, path checks, no download.

    Args:
        data: the YAML (``data/shapes.yaml``, ``data/coco.yaml``, any Ultralytics-style data YAML).
        data_path: overrides the dataset root (``path:``).
        splits: the splits that must exist (``("val",)`` for validation only).
        need_coco_json: also require the COCO-format ground truth (``coco_json`` key).
    """
    source = find_data_yaml(data)
    with open(source, encoding="utf-8") as f:
        try:
            d = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:  # one line with the file and the position, not a scanner traceback
            raise DatasetError(f"{source}: not valid YAML ({yaml_problem(e)}); fix the file") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{source}: not a data YAML (top level must be a mapping)")
    if d.get("nc") is not None and d.get("names") is not None and not d.get("builtin"):
        n_names = len(d["names"]) if isinstance(d["names"], (list, dict)) else None
        if n_names is not None and int(d["nc"]) != n_names:
            raise DatasetError(f"{source}: 'nc: {d['nc']}' but 'names:' lists {n_names} classes; make them agree "
                               f"(or drop 'nc:', which follows from 'names:')")
    if d.get("builtin"):
        from .photo_digits_det import DEFAULTS as PD_DEFAULTS
        from .photo_digits_det import generate_photo_digits_det
        from .shapes import DEFAULTS, generate_shapes

        builtins = {"shapes": (generate_shapes, DEFAULTS), "photo_digits": (generate_photo_digits_det, PD_DEFAULTS)}
        if d["builtin"] not in builtins:
            raise DatasetError(f"{source}: unknown built-in dataset {d['builtin']!r} (known: {sorted(builtins)})")
        generate, defaults = builtins[d["builtin"]]
        root = Path(data_path).resolve() if data_path else cache_dir() / str(d.get("cache_name", d["builtin"]))
        kw = {k: int(d.get(k, v)) for k, v in defaults.items()}
        gen_yaml = generate(root, **kw)
        with open(gen_yaml, encoding="utf-8") as f:
            d = yaml.safe_load(f)
        source_for_msgs = source
    else:
        source_for_msgs = source
    root, how = _root(d, source_for_msgs, data_path)
    if not root.is_dir():
        env = d.get("path_env")
        raise DatasetError(
            f"dataset '{source.name}': root folder '{root}' (from {how}) does not exist.\n"
            f"Expected under it: " + ", ".join(_layout_hint(d[k], k) for k in ("train", "val") if d.get(k))
            + (f", {d['coco_json']}" if d.get("coco_json") else "") + ".\n"
            f"Fix: {'set $' + env + '=/path/to/dataset or ' if env else ''}pass --data-path DIR, or edit 'path:' in "
            f"{source}. Nothing is downloaded.")
    for k in splits:
        if not d.get(k):
            raise DatasetError(f"dataset '{source.name}': no '{k}:' entry in {source}")
        _check_split(root, d[k], k, how, source, d.get("path_env"))
    out = {k: v for k, v in d.items() if k not in PROJECT_KEYS and k != "download"}
    out["path"] = str(root)
    coco_json = None
    if d.get("coco_json"):
        coco_json = (root / str(d["coco_json"])).resolve()
        out["coco_json"] = str(coco_json)
        if need_coco_json and not coco_json.is_file():
            raise DatasetError(f"dataset '{source.name}': COCO-format ground truth not found: '{coco_json}' "
                               f"(key 'coco_json' in {source}, relative to the root '{root}')")
    elif need_coco_json:
        raise DatasetError(f"dataset '{source.name}' names no COCO-format ground truth ('coco_json:'); "
                           f"pass --coco-json FILE")
    names = _names(d)
    cat_ids = d.get("coco_category_ids")
    if cat_ids is not None and len(cat_ids) != len(names):
        raise DatasetError(f"{source}: coco_category_ids has {len(cat_ids)} entries for {len(names)} classes")
    already = source.parent == (cache_dir() / "data").resolve() and "download" not in d
    yaml_path = source if already else _write_resolved(out, source)  # a resolved copy is used as is
    return ResolvedData(yaml_path=yaml_path, data=out, source=source, root=root, coco_json=coco_json,
                        category_ids=list(cat_ids) if cat_ids is not None else None, names=names)


# ----------------------------------------------------------------------------------------------------------------
# Label pre-scan: Ultralytics' verify_image_label warns per *file* and drops the whole image; this names the line.


def image_files(root: Path, spec: Any) -> list[str]:
    """Image files of a split entry, listed the way Ultralytics lists them (folder, .txt list, or a list)."""
    files: list[str] = []
    for e in spec if isinstance(spec, list) else [spec]:
        p = (Path(root) / str(e)).resolve()
        if p.is_dir():
            files += glob.glob(str(Path(glob.escape(str(p))) / "**" / "*.*"), recursive=True)
        elif p.is_file():
            parent = str(p.parent) + os.sep
            with open(p, encoding="utf-8-sig") as t:
                files += [x.replace("./", parent, 1) if x.startswith("./") else x for x in t.read().strip().splitlines()]
    return sorted(x for x in files if x.rpartition(".")[-1].lower() in IMG_FORMATS)


def label_path(img: str) -> str:
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return sb.join(img.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt"


@dataclass
class LabelIssue:
    file: str  # the label file, or the image file itself for an unreadable image (line 0)
    line: int
    message: str
    action: str  # what Ultralytics does about it

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message} -> {self.action}"

    @property
    def label_file(self) -> str:
        """The label file of the image concerned (one per image, whether the image or a label line is bad)."""
        return self.file if self.line else label_path(self.file)


def _image_problem(img: str) -> str | None:
    """Why Ultralytics will not be able to read ``img``, or None. Mirrors its ``check_image``: the header, PIL's
    ``verify()`` (a PNG's chunks and checksums) and, for a JPEG without its end marker, a full decode (Ultralytics
    re-saves such a JPEG and skips the image when it cannot be decoded). So a file truncated after a valid header is
    caught too, while an intact image costs no decode."""
    try:
        if os.path.getsize(img) == 0:
            return "empty image file (0 bytes)"
        from PIL import Image

        with Image.open(img) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(img, "rb") as f:
                f.seek(-2, 2)
                ended = f.read() == b"\xff\xd9"
            if not ended:
                with Image.open(img) as im:
                    im.load()
    except Exception as e:  # noqa: BLE001 - any failure to open is the problem to report
        if "truncated" in str(e).lower():
            return f"truncated or corrupt image data, cannot be decoded ({type(e).__name__}: {e})"
        return f"not a readable image ({type(e).__name__}: {e})"
    return None


def scan_labels(root: Path, spec: Any, nc: int) -> tuple[list[LabelIssue], int]:
    """Check every image of a split (empty, unreadable or truncated files) and every label line: 5 numeric fields (or a
    polygon), class in [0, nc), coordinates in [0, 1].

    Returns (issues, number of label files read). Actions mirror Ultralytics' ``verify_image_label``: a class out of
    range, a bad row, or coordinates beyond its 1% tolerance drop the whole image; coordinates within the
    tolerance are clipped.
    """
    issues: list[LabelIssue] = []
    n_files = 0
    for img in image_files(root, spec):
        problem = _image_problem(img)
        if problem:  # named here: Ultralytics' own warning blames a missing optional HEIF plugin
            issues.append(LabelIssue(img, 0, problem, "image skipped"))
        lf = label_path(img)
        if not os.path.isfile(lf):
            continue
        n_files += 1
        with open(lf, encoding="utf-8-sig") as f:
            rows = [(i + 1, ln.split()) for i, ln in enumerate(f.read().splitlines()) if ln.strip()]
        for ln, parts in rows:
            try:
                vals = [float(x) for x in parts]
            except ValueError:
                issues.append(LabelIssue(lf, ln, f"non-numeric field in {' '.join(parts)!r}", "image skipped"))
                continue
            if len(vals) != 5 and not (len(vals) > 6 and len(vals) % 2 == 1):
                issues.append(LabelIssue(lf, ln, f"{len(vals)} fields (expected 'class x y w h')", "image skipped"))
                continue
            c, coords = vals[0], vals[1:]
            if not all(math.isfinite(v) for v in vals):  # NaN/inf fail every one of Ultralytics' range checks
                issues.append(LabelIssue(lf, ln, f"non-finite value in {' '.join(parts)!r}", "image skipped"))
                continue
            if c % 1 != 0 or not 0 <= c < nc:
                issues.append(LabelIssue(lf, ln, f"class {c:g} out of range 0-{nc - 1}", "image skipped"))
            lo, hi = min(coords), max(coords)
            if hi > 1.01 or lo < -0.01:
                issues.append(LabelIssue(lf, ln, f"coordinates outside [0, 1] (min {lo:g}, max {hi:g})",
                                         "image skipped"))
            elif hi > 1 or lo < 0:
                issues.append(LabelIssue(lf, ln, f"coordinates slightly outside [0, 1] (min {lo:g}, max {hi:g})",
                                         "box clipped"))
    return issues, n_files
