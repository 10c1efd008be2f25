"""The anatomy step of ``analyze``: peripheral vs central involvement and the landmark zones (issue 14).

One call from :func:`CovidCTLib.pipeline.analyze` (stage ``anatomy``, after the lobes); its dictionary is
merged into the report numbers: ``peripheral_involvement`` and ``anatomical_zones``. Research software,
not a diagnosis.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from CovidCTLib.anatomy.landmarks import find_landmarks
from CovidCTLib.anatomy.peripheral import PeripheralMap, peripheral_involvement
from CovidCTLib.anatomy.zones import anatomical_zones
from CovidCTLib.volume import CTVolume


def analyze_anatomy(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    lobes: np.ndarray | None = None,
    peripheral: PeripheralMap | None = None,
    min_percent: float = 0.0,
) -> dict[str, Any]:
    """``{"peripheral_involvement": ..., "anatomical_zones": ...}`` for one analysed CT.

    ``lobes``: the lobe labelmap (None: no per-lobe split); ``peripheral``: the outer-third map when the
    assessment already made it; ``min_percent``: the zone noise floor of the landmark zone score.
    """
    landmarks = find_landmarks(ct, lungs)
    return {
        "peripheral_involvement": peripheral_involvement(ct, lungs, infection, lobes, peripheral),
        "anatomical_zones": anatomical_zones(ct, lungs, infection, landmarks, min_percent),
    }
