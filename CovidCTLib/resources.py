"""Where the shipped models are: a source checkout's ``Resources/Models`` or, in an installed wheel, the
package data folder ``CovidCTLib/_models`` (copied there by ``setup.py`` when the wheel is built).

``$COVIDCT_MODELS_DIR`` overrides both. Found from this package's own location, so the answer does not
depend on which module asks.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: the models folder inside an installed package (wheel)
PACKAGED_MODELS = "_models"


def default_models_dir(package_dir: Path = PACKAGE_DIR) -> Path:
    """``$COVIDCT_MODELS_DIR``, else ``<checkout>/Resources/Models`` when it exists, else the packaged copy."""
    env = os.environ.get("COVIDCT_MODELS_DIR")
    if env:
        return Path(env)
    checkout = package_dir.parent / "Resources" / "Models"
    packaged = package_dir / PACKAGED_MODELS
    if checkout.is_dir() or not packaged.is_dir():
        return checkout
    return packaged
