"""The lobes step of ``analyze``: lobe labelmap + the report.json ``lobes`` / ``severity_score_lobar`` blocks.

Called from :func:`CovidCTLib.pipeline.analyze` by one clearly marked hook, so that the pipeline only has to
run :func:`analyze_lobes` and merge its dictionary into the report numbers (research software, not a
diagnosis).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from CovidCTLib.lobes.segment import METHOD_VERSION, segment_lobes_detailed
from CovidCTLib.lobes.statistics import lobe_statistics, severity_score_lobar
from CovidCTLib.progress import Reporter
from CovidCTLib.volume import CTVolume

LIMITS = (
    "Lobes from fissure detection (Hessian sheet filter) and anatomical priors (published lobe shares); where a "
    "fissure is not seen (thick slices, incomplete fissure, consolidation along it) the prior decides; "
    "fissure coverage is given per fissure. Not validated against expert lobe labels."
)


def analyze_lobes(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    reporter: Reporter | None = None,
    min_percent: float = 0.0,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """``(lobes, numbers)``: the lobe labelmap (None for non-HU input) and the report blocks

    ``lobes`` (5 entries: name, key, label, lung, lung_ml, infection_ml, ggo_ml, consolidation_ml, percent,
    score), ``severity_score_lobar`` (total 0-25, per_lobe, scale) and ``lobe_segmentation`` (method,
    per-fissure coverage, limits). ``min_percent``: the noise floor of the lobe score (a lobe involved less
    scores 0).
    """
    if ct.intensity != "HU":
        note = "Lobes not segmented: the lobe segmentation needs a CT in Hounsfield units."
        return None, {
            "lobes": None,
            "severity_score_lobar": None,
            "lobe_segmentation": {"method": METHOD_VERSION, "note": note},
        }
    seg = segment_lobes_detailed(ct, lungs, reporter)
    stats = lobe_statistics(ct, lungs, infection, seg.lobes, min_percent)
    score = severity_score_lobar(stats)
    if min_percent > 0:
        score["noise_floor"] = f"A lobe scores 1 only from {min_percent:g} % involvement."
    numbers = {
        "lobes": stats,
        "severity_score_lobar": score,
        "lobe_segmentation": {"method": seg.method, "fissures": seg.fissures, "limits": LIMITS},
    }
    return seg.lobes, numbers
