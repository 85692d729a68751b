"""Small helpers for classification/train.py: metrics and logging, torch.distributed, checkpoints, EMA."""

from __future__ import annotations

import argparse
import builtins
import datetime
import os
import pickle
import time
from collections import deque

import torch
import torch.distributed as dist

# ---------------------------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------------------------


def dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if dist_on() else 0


def world_size() -> int:
    return dist.get_world_size() if dist_on() else 1


def is_main() -> bool:
    return rank() == 0


def init_distributed(device_type: str) -> tuple[bool, int]:
    """Join the process group when launched by torchrun (RANK and WORLD_SIZE set): env:// rendezvous, NCCL
    on CUDA and gloo on CPU. Only rank 0 keeps ``print`` (``print(..., force=True)`` overrides).
    Returns ``(distributed, local_rank)``."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    _only_main_prints(dist.get_rank() == 0)
    return True, local_rank


def _only_main_prints(main: bool) -> None:
    orig = builtins.print

    def print(*args, **kwargs):  # noqa: A001
        if kwargs.pop("force", False) or main:
            orig(*args, **kwargs)

    builtins.print = print


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist_on():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# ---------------------------------------------------------------------------------------------------------
# metrics, logging
# ---------------------------------------------------------------------------------------------------------


def correct_topk(output: torch.Tensor, target: torch.Tensor, topk=(1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k predictions, for each k (k capped at the number
    of classes). Soft (mixup) targets count by their argmax."""
    if target.ndim == 2:
        target = target.argmax(dim=1)
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hit = pred.eq(target[:, None])
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in topk]


class SmoothedValue:
    """A series of values: the window's median/average and the global average."""

    def __init__(self, window: int = 20, fmt: str = "{median:.4f} ({global_avg:.4f})"):
        self.deque: deque = deque(maxlen=window)
        self.total, self.count, self.fmt = 0.0, 0, fmt

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.deque)).median()) if self.deque else 0.0

    @property
    def avg(self) -> float:
        return sum(self.deque) / len(self.deque) if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, value=self.value)


class MetricLogger:
    """Named SmoothedValues; :meth:`log_every` wraps an iterable and prints progress (with ETA) every
    ``print_freq`` iterations and at the last one."""

    def __init__(self, delimiter: str = "  "):
        self.meters: dict[str, SmoothedValue] = {}
        self.delimiter = delimiter

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def update(self, n: int = 1, **kwargs) -> None:
        for k, v in kwargs.items():
            self.meters.setdefault(k, SmoothedValue()).update(float(v), n)

    def __getattr__(self, name):
        if name in self.__dict__.get("meters", {}):
            return self.meters[name]
        raise AttributeError(name)

    def __str__(self) -> str:
        return self.delimiter.join(f"{k}: {v}" for k, v in self.meters.items())

    def log_every(self, iterable, print_freq: int, header: str = ""):
        n = len(iterable)
        width = len(str(n))
        start = end = time.time()
        iter_time, data_time = SmoothedValue(fmt="{avg:.4f}"), SmoothedValue(fmt="{avg:.4f}")
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if print_freq > 0 and (i % print_freq == 0 or i == n - 1):
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (n - i - 1)))
                mem = ""
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    mem = f"{self.delimiter}max mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}MB"
                print(f"{header} [{i:>{width}}/{n}]{self.delimiter}eta: {eta}{self.delimiter}{self}"
                      f"{self.delimiter}time: {iter_time}{self.delimiter}data: {data_time}{mem}", flush=True)
            end = time.time()
        total = datetime.timedelta(seconds=int(time.time() - start))
        print(f"{header} Total time: {total} ({(time.time() - start) / max(n, 1):.4f} s / it)", flush=True)


# ---------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------


def save_atomic(obj, path: os.PathLike | str) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then os.replace: a crash mid-save never
    leaves a truncated file at ``path`` (:func:`yolo_dero.fileutil.atomic_file`)."""
    from yolo_dero.fileutil import atomic_file

    with atomic_file(path) as f:
        torch.save(obj, f)


def load_file(path: os.PathLike | str):
    """torch.load onto the CPU, safely (weights_only); argparse.Namespace (torchvision reference checkpoints
    store their args as one) is allowed too."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)


def extract_state_dict(obj) -> dict:
    """The model state_dict inside a checkpoint dict (key "model", "state_dict" or "model_state_dict") or
    ``obj`` itself when it is one; a DDP ``module.`` prefix is stripped."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("not a checkpoint dict with a 'model' entry nor a state_dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def state_dict_mismatch(model: torch.nn.Module, sd: dict, show: int = 5) -> str | None:
    """None when ``sd`` loads into ``model`` strictly; else a description of the first mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k} (file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})" for k in own
             if k in sd and sd[k].shape != own[k].shape]
    parts = []
    for name, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shape)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > show else ""
            parts.append(f"{name}: {', '.join(keys[:show])}{more}")
    return "; ".join(parts) or None


class ExponentialMovingAverage(torch.optim.swa_utils.AveragedModel):
    """EMA of the parameters and buffers: ``ema = decay * ema + (1 - decay) * param``."""

    def __init__(self, model: torch.nn.Module, decay: float, device="cpu"):
        def ema_avg(avg, param, num_averaged):
            return decay * avg + (1.0 - decay) * param

        super().__init__(model, device, ema_avg, use_buffers=True)
