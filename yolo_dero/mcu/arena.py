"""Measure a TFLite model's arena in the TensorFlow Lite Micro interpreter (PyPI ``tflite-micro``).

TFLM has no API returning the arena bytes: ``print_allocations()`` writes them to C stderr (file
descriptor 2), so :func:`_capture_fd2` points fd 2 at a temporary file with ``os.dup2`` while it runs.
Its lines ``Arena allocation head/tail/total N bytes`` give

* **head**: the non-persistent, planned activation buffers (what the memory analyzer's ``tflm`` engine
  predicts as ``arena_bytes``),
* **tail**: persistent allocations (tensor structs, node data, quantization parameters, kernel op data,
  scratch requests),
* **total** = head + tail as allocated with the arena size given.

The **minimal arena** is found by bisection on ``arena_size``: a too-small arena raises
``RuntimeError: TFLM failed to allocate tensors``. It can exceed ``total`` slightly because of alignment
of the arena start and of the head/tail boundary.

One inference on a random int8 input is compared with the LiteRT interpreter (``ai-edge-litert``, reference
kernels) on the same input: outputs must agree within ``tolerance`` LSB (default 2). The difference to
LiteRT's default optimized kernels is reported too (not checked).

TFLM's Python binding is not robust (some too-small arenas segfault instead of raising; one long run aborted
with a double free), so every TFLM call runs in a forked child process (:func:`_isolated`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from .export import require

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


def _isolated(fn: Callable, *args, isolate: bool = True, timeout: float = 300.0):
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


def _allocates(model: bytes, arena_size: int, isolate: bool = True) -> bool:
    """Whether TFLM allocates ``model`` in ``arena_size`` bytes (a crash counts as "does not")."""
    try:
        return bool(_isolated(_allocates_here, model, arena_size, isolate=isolate))
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
    return _isolated(_allocations_here, model, arena_size, isolate=isolate)


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
    return _isolated(_run_here, model, arena_size, inputs, n_out, isolate=isolate)


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
        if _allocates(model, mid):
            hi = mid
        else:
            lo = mid
    return hi, tries


@dataclass
class ArenaResult:
    path: str
    head_bytes: int                      # planned (non-persistent) activation buffers
    tail_bytes: int                      # persistent allocations
    total_bytes: int                     # head + tail with a generous arena
    minimal_arena_bytes: Optional[int]   # smallest arena_size that allocates (bisection)
    bisection_tries: int
    file_bytes: int
    detail: Dict[str, int] = field(default_factory=dict)
    input_shape: List[int] = field(default_factory=list)
    input_dtype: str = ""
    outputs_checked: bool = False
    max_abs_diff_lsb: Optional[int] = None
    tolerance_lsb: int = 2
    outputs_match: Optional[bool] = None
    litert_resolver: str = "BUILTIN_REF"
    max_abs_diff_lsb_optimized: Optional[int] = None   # against LiteRT's default (optimized/XNNPACK) kernels
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0
    online_head_bytes: Optional[int] = None  # offline memory plan in the file: head with the plan removed (plan.py)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _dtype(d) -> np.dtype:
    return np.dtype(d)


def compare_with_litert(model: bytes, arena_size: int, seed: int = 0, resolver: str = "BUILTIN_REF",
                        isolate: bool = True) -> Tuple[int, List[List[int]], str]:
    """Run one random int8 input through TFLM and LiteRT; returns (max |diff| in LSB, input shape, dtype).

    LiteRT runs in a child process as well (its optimized kernels aborted with a double free on
    YOLOv5n-DERO, observed). See :func:`_compare_here`.
    """
    return _isolated(_compare_here, model, arena_size, seed, resolver, isolate=isolate)


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


def measure_arena(path: Union[str, Path, bytes], bisect: bool = True, check_outputs: bool = True,
                  tolerance: int = 2, align: int = 16) -> ArenaResult:
    """Measure head/tail/total arena bytes of a ``.tflite`` under TFLM, the minimal arena, and the output check."""
    require("tflite_micro")
    t0 = time.time()
    model = path if isinstance(path, (bytes, bytearray)) else Path(path).read_bytes()
    model = bytes(model)
    size = max(10 * len(model), 1 << 20)  # TFLM's own default is 10x the flatbuffer
    while True:
        try:
            alloc = allocations(model, size)
            break
        except RuntimeError as e:
            if size > (1 << 32) or "allocate" not in str(e):
                raise
            size *= 4
    minimal, tries = (None, 0)
    if bisect:
        upper = alloc["total"] + 4 * align
        if not _allocates(model, upper):
            upper = size
        minimal, tries = minimal_arena(model, upper, align)
    res = ArenaResult(path=str(path) if not isinstance(path, (bytes, bytearray)) else "<bytes>",
                      head_bytes=alloc["head"], tail_bytes=alloc["tail"], total_bytes=alloc["total"],
                      minimal_arena_bytes=minimal, bisection_tries=tries, file_bytes=len(model),
                      detail=alloc["detail"], tolerance_lsb=tolerance)
    # --- offline memory plan (plan.py): head bytes of the same file without the plan ---
    from .plan import has_plan, strip_plan

    try:
        planned = has_plan(model)
    except ImportError:  # ai-edge-litert (the flatbuffer schema) missing: no plan report
        planned = False
    if planned:
        res.online_head_bytes = allocations(strip_plan(model), size)["head"]
        res.notes.append(f"offline memory plan: planned head {res.head_bytes} B, online head {res.online_head_bytes} B")
    # --- end offline memory plan ---
    if check_outputs:
        require("ai_edge_litert")
        diff, shapes, dt = compare_with_litert(model, size)
        res.outputs_checked, res.max_abs_diff_lsb = True, diff
        try:
            res.max_abs_diff_lsb_optimized = compare_with_litert(model, size, resolver="AUTO")[0]
        except RuntimeError as e:  # LiteRT's optimized kernels crashed: reported, not fatal
            res.notes.append(f"LiteRT optimized kernels: {e}")
        res.outputs_match = diff <= tolerance
        res.input_shape, res.input_dtype = shapes[0], dt
    res.seconds = round(time.time() - t0, 1)
    return res
