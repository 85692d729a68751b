"""A torchvision-style model registry: ``@register_model()`` on a builder, ``get_model(name, **kw)``."""

from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

BUILTIN_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under ``name`` (default: the function's name)."""

    def wrapper(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in BUILTIN_MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        BUILTIN_MODELS[key] = fn
        return fn

    return wrapper


def list_models() -> List[str]:
    """Names of all registered models, sorted."""
    return sorted(BUILTIN_MODELS)


def get_model(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
    """Build a registered model by name, e.g. ``get_model("resnet34dero", num_classes=10)``."""
    try:
        builder = BUILTIN_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}") from None
    return builder(num_classes=num_classes, **kwargs)
