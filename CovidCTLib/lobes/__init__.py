"""Lung lobes: segmentation from anatomy (fissures + priors), per-lobe burden and the lobar severity score.

Entry points (research software, not a diagnosis):

* ``segment_lobes(ct, lungs) -> np.ndarray``: 1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL, partitioning ``lungs``;
  ``segment_lobes_detailed`` also returns per-fissure coverage.
* ``lobe_statistics(ct, lungs, infection, lobes) -> list[dict]`` and ``severity_score_lobar(stats)``;
  ``lobe_change(baseline_stats, followup_stats)`` for the longitudinal comparison.
* ``hooks.analyze_lobes(ct, lungs, infection)``: the pipeline step (labelmap + report blocks);
  ``segments.lobe_layer_segments(layer)``: the lobes as ``.seg.nrrd`` segments with SNOMED CT codes.
"""

from CovidCTLib.lobes.segment import (
    METHOD_VERSION,
    LobeParameters,
    LobeSegmentation,
    segment_lobes,
    segment_lobes_detailed,
)
from CovidCTLib.lobes.statistics import LOBAR_SCALE, lobe_change, lobe_statistics, severity_score_lobar

__all__ = [
    "LOBAR_SCALE",
    "METHOD_VERSION",
    "LobeParameters",
    "LobeSegmentation",
    "lobe_change",
    "lobe_statistics",
    "segment_lobes",
    "segment_lobes_detailed",
    "severity_score_lobar",
]
