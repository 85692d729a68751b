"""Crash-safe file writing shared by detection, classification and deployment (standard library only).

* :func:`atomic_file` / :func:`atomic_write_bytes` -- write a temporary file beside the target, fsync it, then
  ``os.replace`` it over the target: a kill or a full disk mid-write leaves the previous file untouched.
* :func:`remove_stale_temps` -- delete the temporary files such writes leave behind when the process is killed.
* :func:`generated_dataset` -- build a generated dataset folder once, under a file lock, in a temporary sibling
  folder that is renamed into place with a completion marker.

Temporary names are ``.<name>.tmp-<pid>-<random>`` in the target's folder (same file system, so the rename is
atomic).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

__all__ = ["atomic_file", "atomic_write_bytes", "generated_dataset", "output_problem", "outputs_problem",
           "remove_stale_temps", "temp_sibling", "unwritable_reason"]

# ".<name>.tmp-<pid>" with an optional "-<hex>" suffix (classification's older saves had none)
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?:-[0-9a-f]+)?$")


def temp_sibling(path: os.PathLike | str) -> Path:
    """A fresh temporary name in ``path``'s folder, unique to this process and call."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_file(path: os.PathLike | str) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on a clean exit flush, fsync and rename it to
    ``path``. On an exception the temporary file is removed and ``path`` is left as it was.

    The open file's ``name`` is the temporary path, so the caller can re-read and check what it wrote before the
    rename (the ``with`` block raising is how a failed check keeps the old file).
    """
    p = Path(path)
    tmp = temp_sibling(p)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """``Path(path).write_bytes(data)``, but crash-safe (see :func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def _pid_alive(pid: int) -> bool:
    """Whether another running process has this id (our own id counts as dead: a killed run before us in a
    container often had the same one, and callers clean up before they start writing)."""
    if pid == os.getpid():
        return False
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


def remove_stale_temps(folder: os.PathLike | str, names: tuple[str, ...] | None = None) -> list[Path]:
    """Delete temporary files (or folders) of :func:`atomic_file` in ``folder`` whose writing process is gone.

    ``names`` limits it to temporaries of those target names (e.g. ``("checkpoint.pth",)``). Call it before this
    process starts writing in ``folder``. Returns what was removed.
    """
    removed = []
    d = Path(folder)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        m = _TEMP.match(p.name)
        if not m or (names is not None and m["name"] not in names) or _pid_alive(int(m["pid"])):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``lock_path`` (POSIX flock; elsewhere no lock, only the atomic rename)."""
    with open(lock_path, "a+") as lock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def generated_dataset(root: os.PathLike | str, want: dict, make: Callable[[Path], object],
                      marker: str = ".complete.json", force: bool = False) -> Path:
    """Return ``root`` once it holds the dataset described by ``want``, generating it with ``make(tmp)`` if not.

    Idempotent and safe against concurrent callers (every rank of a torchrun job, two runs started at once):
    generation happens in a temporary sibling folder under a file lock, ``root/<marker>`` with ``want`` (JSON) is
    written last, and the folder is moved into place with one rename. A stale or partial folder is replaced;
    temporary folders of killed generations are deleted (under the lock no other generator is running).
    ``make(tmp)`` must create ``tmp``. ``force`` regenerates even when ``root`` is up to date.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)

    def ready() -> bool:
        try:
            return json.loads((root / marker).read_text()) == want
        except (OSError, ValueError):
            return False

    if not force and ready():
        return root
    with _locked(root.parent / f".{root.name}.lock"):
        if not force and ready():  # another process generated it while we waited
            return root
        name = glob.escape(root.name)
        for stale in [*root.parent.glob(f".{name}.tmp*"), *root.parent.glob(f".{name}.old*")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            make(tmp)
            (tmp / marker).write_text(json.dumps(want))
            if root.exists():  # stale version or partial: move aside, then delete
                trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(root, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def yaml_problem(e: Exception) -> str:
    """``problem at line L, column C`` of a YAML parser error (PyYAML's ``problem`` and ``problem_mark``)."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or type(e).__name__}{where}"


def unwritable_reason(folder: os.PathLike | str, keep: bool = True) -> str | None:
    """Create ``folder`` and write and remove a probe file in it; the reason it failed, or None. Lets a tool refuse
    an unwritable output folder before its work, not at the first save. ``keep=False`` removes again the folders the
    probe created (for a tool that creates its output folder itself, so that an error found later leaves nothing)."""
    d = Path(folder)
    if d.exists() and not d.is_dir():
        return "a file, not a folder, is at that path"
    created = []
    if not keep:
        a = d.absolute()
        while not a.exists() and a != a.parent:
            created.append(a)
            a = a.parent
    probe = d / f".write_test.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        d.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as e:
        return e.strerror or type(e).__name__
    finally:
        for c in created:  # deepest first
            with contextlib.suppress(OSError):
                c.rmdir()
    return None


def output_problem(path: os.PathLike | str | None, flag: str, folder: bool = False, keep: bool = True) -> str | None:
    """The one-line error for an output ``path`` given as ``flag`` that cannot be written, or None (also for None).

    ``folder``: ``path`` is an output folder (created if missing); else a file, whose folder is probed and which
    must not be a folder itself. Probes with :func:`unwritable_reason` (``keep``: see there), so a tool can refuse the
    path before its expensive work instead of failing at the end with a traceback."""
    if path is None or str(path) == "":
        return None
    p = Path(path)
    if folder:
        reason = unwritable_reason(p, keep)
        if reason:
            return (f"{flag} {path}: cannot create or write this folder ({reason}); pass a writable folder with "
                    f"{flag}")
        return None
    if p.is_dir():
        return f"{flag} {path}: is a folder, not a file; pass a file path with {flag}"
    parent = p.parent
    reason = unwritable_reason(parent, keep)
    if reason:
        return (f"{flag} {path}: cannot create or write its folder {parent} ({reason}); pass a writable path with "
                f"{flag}")
    if p.exists() and not os.access(p, os.W_OK):
        return f"{flag} {path}: the file exists and is read-only; pass a writable path with {flag}"
    return None


def outputs_problem(*outputs: tuple) -> str | None:
    """:func:`output_problem` over ``(path, flag[, folder[, keep]])`` tuples: the first problem, or None."""
    for spec in outputs:
        problem = output_problem(*spec)
        if problem:
            return problem
    return None
