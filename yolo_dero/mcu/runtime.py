"""Running a ``.tflite`` in TensorFlow Lite Micro (PyPI ``tflite-micro``) and in LiteRT (``ai-edge-litert``).

* **Isolation** (:func:`run_isolated`): TFLM's Python binding is not robust (some too-small arenas segfault instead
  of raising; one long run aborted with a double free), so every TFLM call, and every LiteRT call next to one, runs
  in a forked child process; a crash comes back as :class:`TFLMCrash`.
* **Arena sizing**: TFLM has no API returning the arena bytes: ``print_allocations()`` writes them to C stderr (file
  descriptor 2), so :func:`_capture_fd2` points fd 2 at a temporary file with ``os.dup2`` while it runs, and
  :func:`parse_allocations` reads its lines ``Arena allocation head/tail/total N bytes``. :func:`allocations`
  builds an interpreter with a given arena, :func:`working_arena` finds one that allocates (10x the flatbuffer, at
  least 1 MiB, then x4), :func:`minimal_arena` bisects to the smallest (a too-small arena raises
  ``RuntimeError: TFLM failed to allocate tensors``, or crashes, which counts as "does not allocate").
* **Inference**: :func:`run_tflm` (TFLM), :func:`litert_reference` (LiteRT's reference kernels, TFLM's
  arithmetic), :func:`compare_with_litert` (one random input through both), :func:`predict_litert` (float images in,
  dequantized outputs out).

The runtimes are imported on first use (importing this module needs numpy only).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple, Union

import numpy as np

from .tflite import require


_LINE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


_USED = re.compile(r"'([^']+)' used (\d+) bytes")


@contextlib.contextmanager
def _capture_fd2():
    """Redirect C-level stderr (fd 2) into a temp file; yields a list that receives the text on exit."""
    import sys

    sink: List[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield sink
        finally:
            try:
                sys.stderr.flush()
            except Exception:  # pragma: no cover
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))


def parse_allocations(text: str) -> Dict[str, Any]:
    """``{"head": int, "tail": int, "total": int, "detail": {name: bytes}}`` from print_allocations output."""
    out: Dict[str, Any] = {"detail": {}}
    for key, val in _LINE.findall(text):
        out[key] = int(val)
    for name, val in _USED.findall(text):
        out["detail"][name] = int(val)
    missing = [k for k in ("head", "tail", "total") if k not in out]
    if missing:
        raise RuntimeError(f"could not read {', '.join(missing)} from TFLM's print_allocations output:\n{text[-2000:]}")
    return out


def _interpreter(model: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model, arena_size=int(arena_size))


class TFLMCrash(RuntimeError):
    """TFLM died (a signal such as SIGSEGV / SIGABRT) in the isolated child process."""


def run_isolated(fn: Callable, *args, isolate: bool = True, timeout: float = 300.0):
    """Run ``fn(*args)`` in a forked child and return its (pickled) result.

    TFLM's Python binding is not robust: some too-small arenas crash it with a segmentation fault instead
    of raising (seen on MCUNet-DERO), and a long-lived process that builds many interpreters once aborted
    with ``free(): double free`` (seen after a dozen models in one cross-check). Every TFLM call therefore
    runs in a child process; an exception in the child is re-raised here as ``RuntimeError`` with its
    message, a crash as :class:`TFLMCrash`. ``isolate=False`` (or no ``os.fork``) runs in-process.
    """
    if not isolate or not hasattr(os, "fork"):
        return fn(*args)
    import pickle
    import sys
    import warnings

    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    with warnings.catch_warnings():  # the child runs TFLM only (no JAX/torch threads are needed there)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            os.close(r)
            import faulthandler

            faulthandler.disable()  # a crash here is reported by the parent, not as a traceback dump
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            try:
                payload, code = pickle.dumps(("ok", fn(*args))), 0
            except BaseException as e:  # noqa: BLE001
                payload, code = pickle.dumps(("error", f"{type(e).__name__}: {e}")), 1
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    deadline = time.time() + timeout
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())  # until the child closes its end (exits)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise TFLMCrash("the isolated child process hung")
        time.sleep(0.005)
    data = b"".join(chunks)
    if os.WIFSIGNALED(status) or not data:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        raise TFLMCrash(f"crashed in the isolated child process (signal {sig}, status {status})")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise RuntimeError(value)
    return value


def _allocates_here(model: bytes, arena_size: int) -> bool:
    with _capture_fd2():
        try:
            it = _interpreter(model, arena_size)
        except RuntimeError:
            return False
    del it
    return True


def allocates(model: bytes, arena_size: int, isolate: bool = True) -> bool:
    """Whether TFLM allocates ``model`` in ``arena_size`` bytes (a crash counts as "does not")."""
    try:
        return bool(run_isolated(_allocates_here, model, arena_size, isolate=isolate))
    except TFLMCrash:
        return False


def _allocations_here(model: bytes, arena_size: int) -> Dict[str, Any]:
    with _capture_fd2() as log:
        it = _interpreter(model, arena_size)
        it.print_allocations()
    return parse_allocations(log[0])


def allocations(model: bytes, arena_size: int, isolate: bool = True) -> Dict[str, Any]:
    """Build a TFLM interpreter with ``arena_size`` and parse its print_allocations output.

    Raises ``RuntimeError`` (TFLM failed to allocate) or :class:`TFLMCrash`.
    """
    return run_isolated(_allocations_here, model, arena_size, isolate=isolate)


def working_arena(model: bytes) -> Tuple[int, Dict[str, Any]]:
    """An arena size that allocates ``model`` (10x the flatbuffer, at least 1 MiB, then x4 until it allocates)
    and TFLM's :func:`allocations` there: ``(size, allocations)``."""
    size = max(10 * len(model), 1 << 20)
    while True:
        try:
            return size, allocations(model, size)
        except RuntimeError as e:
            if size > (1 << 32) or "allocate" not in str(e):
                raise
            size *= 4


def _run_here(model: bytes, arena_size: int, inputs: List[np.ndarray], n_out: int) -> List[np.ndarray]:
    with _capture_fd2():
        it = _interpreter(model, arena_size)
        for i, x in enumerate(inputs):
            it.set_input(x, i)
        it.invoke()
        return [np.array(it.get_output(i)) for i in range(n_out)]


def run_tflm(model: bytes, arena_size: int, inputs: List[np.ndarray], n_out: int, isolate: bool = True
             ) -> List[np.ndarray]:
    """One TFLM inference (isolated in a child process by default)."""
    return run_isolated(_run_here, model, arena_size, inputs, n_out, isolate=isolate)


def _litert_ref_here(model: bytes, inputs: List[np.ndarray]) -> List[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), inputs):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [np.array(it.get_tensor(d["index"])) for d in it.get_output_details()]


def litert_reference(model: bytes, inputs: List[np.ndarray], isolate: bool = True) -> List[np.ndarray]:
    """The outputs of LiteRT's reference kernels (TFLM's arithmetic) on ``inputs`` (in a child process by default)."""
    return run_isolated(_litert_ref_here, model, inputs, isolate=isolate)


def minimal_arena(model: bytes, upper: int, align: int = 16) -> Tuple[int, int]:
    """Smallest arena size (multiple of ``align``) that still allocates; returns ``(size, tries)``.

    ``upper`` must allocate. Bisection over ``[0, upper]``.
    """
    lo, hi, tries = 0, upper, 0     # lo fails (or is 0), hi allocates
    while hi - lo > align:
        mid = (lo + hi) // 2 // align * align
        if mid <= lo:
            mid = lo + align
        tries += 1
        if allocates(model, mid):
            hi = mid
        else:
            lo = mid
    return hi, tries


def _dtype(d) -> np.dtype:
    return np.dtype(d)


def compare_with_litert(model: bytes, arena_size: int, seed: int = 0, resolver: str = "BUILTIN_REF",
                        isolate: bool = True) -> Tuple[int, List[List[int]], str]:
    """Run one random int8 input through TFLM and LiteRT; returns (max |diff| in LSB, input shape, dtype).

    LiteRT runs in a child process as well (its optimized kernels aborted with a double free on
    YOLOv5n-DERO, observed). See :func:`_compare_here`.
    """
    return run_isolated(_compare_here, model, arena_size, seed, resolver, isolate=isolate)


def _compare_here(model: bytes, arena_size: int, seed: int = 0, resolver: str = "BUILTIN_REF"
                  ) -> Tuple[int, List[List[int]], str]:
    """Run one random int8 input through TFLM and LiteRT; returns (max |diff| in LSB, input shape, dtype).

    ``resolver``: LiteRT's op resolver. ``BUILTIN_REF`` (default) runs LiteRT's reference kernels, the
    same arithmetic as TFLM's; ``AUTO`` uses the optimized kernels + XNNPACK, whose rounding differs by a
    few LSB on deep int8 models (3 LSB on MCUNet-DERO, observed).
    """
    from ai_edge_litert.interpreter import Interpreter as LiteRT, OpResolverType

    ref = LiteRT(model_content=model, experimental_op_resolver_type=getattr(OpResolverType, resolver))
    ref.allocate_tensors()
    rng = np.random.default_rng(seed)
    inputs = []
    for d in ref.get_input_details():
        dt = _dtype(d["dtype"])
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            x = rng.integers(info.min, info.max + 1, size=tuple(d["shape"]), dtype=np.int64).astype(dt)
        else:
            x = rng.random(tuple(d["shape"]), dtype=np.float32).astype(dt)
        ref.set_tensor(d["index"], x)
        inputs.append(x)
    ref.invoke()
    ref_out = [ref.get_tensor(d["index"]) for d in ref.get_output_details()]
    got = run_tflm(model, arena_size, inputs, len(ref_out))
    diff = 0
    for a, b in zip(ref_out, got):
        b = np.asarray(b).reshape(a.shape)
        diff = max(diff, int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)))) if a.size else 0)
    return diff, [list(map(int, d["shape"])) for d in ref.get_input_details()], \
        str(_dtype(ref.get_input_details()[0]["dtype"]))


def predict_litert(model: Union[str, Path, bytes], images: np.ndarray, batch: int = 1) -> np.ndarray:
    """Float outputs of a full-int8 ``.tflite`` on float NHWC ``images`` (what the float model takes), through
    LiteRT's reference kernels (TFLite Micro's arithmetic): each image is quantized with the input tensor's scale
    and zero point, the output dequantized with the output's. Returns ``(N, ...)`` of the first output."""
    require("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter as LiteRT, OpResolverType

    content = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    ref = LiteRT(model_content=bytes(content), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    ref.allocate_tensors()
    inp, out = ref.get_input_details()[0], ref.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    info = np.iinfo(_dtype(inp["dtype"]))
    results = []
    for im in images:
        q = np.clip(np.round(im[None] / in_scale + in_zero), info.min, info.max).astype(_dtype(inp["dtype"]))
        ref.set_tensor(inp["index"], q)
        ref.invoke()
        results.append((ref.get_tensor(out["index"]).astype(np.float32) - out_zero) * out_scale)
    return np.concatenate(results)
