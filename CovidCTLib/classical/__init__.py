"""Classical (non-learned) segmentation: HU-threshold lungs with airway removal and right/left split,
HU-class infection (ground glass / consolidation) with vessel exclusion, and 2-D rules for 8-bit slices.

Research software, not a diagnosis: every mask must be reviewed.
"""

from CovidCTLib.classical.infection import InfectionThresholds, segment_infection_classical
from CovidCTLib.classical.lungs import segment_lungs_classical
from CovidCTLib.segmentation.sides import split_right_left

__all__ = [
    "InfectionThresholds",
    "segment_infection_classical",
    "segment_lungs_classical",
    "split_right_left",
]
