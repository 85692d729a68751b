"""Shared guard of the deployment tests: skip without requirements-mcu.txt, except where it must be tested."""

import importlib.util
import os

import pytest

MCU_MODULES = ("litert_torch", "tflite_micro", "ai_edge_litert", "torchao")


def require_mcu_packages() -> None:
    """Skip the calling test module when the deployment packages are missing.

    Under CI (or with ``DERO_REQUIRE_MCU=1``) a missing package is an error instead: CI must test deployment.
    """
    missing = [m for m in MCU_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return
    msg = f"deployment packages not installed ({', '.join(missing)}): pip install -r requirements-mcu.txt"
    if os.environ.get("DERO_REQUIRE_MCU") == "1" or os.environ.get("CI"):
        raise RuntimeError(f"DERO_REQUIRE_MCU=1 or CI set, but {msg}")
    pytest.skip(msg, allow_module_level=True)
