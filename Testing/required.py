"""Test dependencies that CI must have: skipped on a developer machine, a failure under CI.

``.ci/run`` sets ``COVIDCT_REQUIRE_ALL=1``. Then a missing test dependency (the slicer-core wheel,
pypdfium2, ...) or a shipped model that is absent fails the run instead of skipping tests quietly.
Real data (``shared_data``) and an OpenGL context for offscreen rendering stay optional: CI has neither
for certain.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE_ALL = "COVIDCT_REQUIRE_ALL"


def required() -> bool:
    """True when every test dependency must be present (CI)."""
    return os.environ.get(REQUIRE_ALL, "") not in ("", "0")


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``; under ``COVIDCT_REQUIRE_ALL=1`` fail with it instead."""
    if required():
        pytest.fail(f"{reason} ({REQUIRE_ALL}=1: CI needs every test dependency; run scripts/setup.sh)", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, reason: str | None = None) -> ModuleType:
    """``pytest.importorskip(name)``, except that a missing module fails under ``COVIDCT_REQUIRE_ALL=1``."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        skip_or_fail(f"{reason or name + ' not installed'}: {exc}")
        raise  # not reached: skip_or_fail always raises
