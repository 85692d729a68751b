"""Building blocks made of the DERO unit. Imports torch only: classification users never need Ultralytics."""

from .dero import DeroPool, DeroUnit, DropPath, Shortcut, exportable_shortcuts, fold_channels, make_activation

__all__ = ["DeroUnit", "DeroPool", "Shortcut", "DropPath", "exportable_shortcuts", "fold_channels", "make_activation"]
