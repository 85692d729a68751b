"""Datasets: the built-in shapes generator and data-YAML resolution (no Ultralytics import here)."""

from .resolve import DatasetError, LabelIssue, ResolvedData, resolve_data, scan_labels
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import generate_shapes

__all__ = ["DatasetError", "LabelIssue", "ResolvedData", "resolve_data", "scan_labels", "generate_shapes",
           "SHAPES_CLASSES"]
