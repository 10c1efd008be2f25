"""Shared pytest fixtures: repository paths and the real-data folder (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """Where the real data lives: ``$COVIDCT_SHARED_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get("COVIDCT_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; tests using it are skipped when it is not there."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data not available at {root}")
    return root


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Run-time caches (the ONNX export cache) go to a folder of this test session, never the user's."""
    old = os.environ.get("COVIDCT_CACHE_DIR")
    os.environ["COVIDCT_CACHE_DIR"] = str(tmp_path_factory.mktemp("covidct-cache"))
    yield
    if old is None:
        os.environ.pop("COVIDCT_CACHE_DIR", None)
    else:
        os.environ["COVIDCT_CACHE_DIR"] = old
