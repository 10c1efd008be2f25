"""Lung lobes: segmentation from anatomy (fissures + priors), per-lobe burden and the lobar severity score.

Entry points (research software, not a diagnosis):

* ``segment_lobes(ct, lungs) -> np.ndarray``: 1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL, partitioning ``lungs``;
  ``segment_lobes_detailed`` also returns per-fissure coverage.
* ``lobe_statistics(ct, lungs, infection, lobes) -> list[dict]`` and ``severity_score_lobar(stats)``.
"""

from CovidCTLib.lobes.segment import (
    METHOD_VERSION,
    LobeParameters,
    LobeSegmentation,
    segment_lobes,
    segment_lobes_detailed,
)
from CovidCTLib.lobes.statistics import LOBAR_SCALE, lobe_statistics, severity_score_lobar

__all__ = [
    "LOBAR_SCALE",
    "METHOD_VERSION",
    "LobeParameters",
    "LobeSegmentation",
    "lobe_statistics",
    "segment_lobes",
    "segment_lobes_detailed",
    "severity_score_lobar",
]
