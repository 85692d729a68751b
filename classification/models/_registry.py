"""A torchvision-style model registry: ``@register_model()`` on a builder, ``get_model(name, **kw)``.

Names follow one convention, ``<arch>_<variant>``: the original network keeps its published name (``resnet34``,
``mcunet_v4``, ``densenet121``), its twins add ``_plain`` and ``_dero`` (``resnet34_plain``, ``mcunet_v4_dero``). The
names of earlier releases (``resnet34dero``, ``mcunet_dero_v4``...) stay accepted as deprecated aliases
(:data:`DEPRECATED_NAMES`, as timm's deprecation map): :func:`get_model` resolves them and warns once per name.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Set

from torch import nn

BUILTIN_MODELS: Dict[str, Callable[..., nn.Module]] = {}

#: deprecated registry name -> its current name (accepted everywhere a registry name is; never listed as current)
DEPRECATED_NAMES: Dict[str, str] = {
    "resnet34plain": "resnet34_plain",
    "resnet34dero": "resnet34_dero",
    "resnet50plain": "resnet50_plain",
    "resnet50dero": "resnet50_dero",
    "mcunet_plain_v4": "mcunet_v4_plain",
    "mcunet_dero_v4": "mcunet_v4_dero",
}
_warned: Set[str] = set()


def register_model(name: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under ``name`` (default: the function's name)."""

    def wrapper(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in BUILTIN_MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        if key in DEPRECATED_NAMES:
            raise ValueError(f"{key!r} is already registered, as a deprecated alias of {DEPRECATED_NAMES[key]!r}")
        BUILTIN_MODELS[key] = fn
        return fn

    return wrapper


def list_models(include_deprecated: bool = False) -> List[str]:
    """The current registry names, sorted; with ``include_deprecated`` the deprecated aliases follow them.

    :func:`is_model` is the membership test: it accepts the aliases too.
    """
    return sorted(BUILTIN_MODELS) + (sorted(DEPRECATED_NAMES) if include_deprecated else [])


def is_model(name: str) -> bool:
    """True for a current or a deprecated registry name."""
    return name in BUILTIN_MODELS or name in DEPRECATED_NAMES


def resolve_name(name: str) -> str:
    """The current name of ``name``: itself, or the name a deprecated alias stands for (a DeprecationWarning the
    first time each alias is resolved). Unknown names are returned unchanged."""
    new = DEPRECATED_NAMES.get(name)
    if new is None:
        return name
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"model name {name!r} is deprecated, use {new!r}", DeprecationWarning, stacklevel=3)
    return new


def get_model(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
    """Build a registered model by name, e.g. ``get_model("resnet34_dero", num_classes=10)``; a deprecated name
    (:data:`DEPRECATED_NAMES`) builds the same model with a DeprecationWarning."""
    try:
        builder = BUILTIN_MODELS[resolve_name(name)]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models(include_deprecated=False))}"
                         ) from None
    return builder(num_classes=num_classes, **kwargs)
