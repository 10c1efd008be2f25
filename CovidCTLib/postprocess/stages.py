"""The two pipeline hooks of the specificity work (issue 13), kept out of ``pipeline.py``.

``clean_infection``: after segmentation, the HU gate (network output on HU volumes only) and the noise
floor's minimum lesion size. ``score_scan``: after ``quantify``, the zone noise floor and the scan-level
COVID assessment. Both return what they add to report.json.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from CovidCTLib.assessment import AssessmentRules, assess
from CovidCTLib.noise_floor import NoiseFloor, apply_noise_floor, remove_small_lesions
from CovidCTLib.postprocess.infection_hu import HUGating, gate_infection_hu
from CovidCTLib.volume import CTVolume

DEFAULT_FLOOR = NoiseFloor()


def clean_infection(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    method: str,
    gating: HUGating | None = None,
    floor: NoiseFloor = DEFAULT_FLOOR,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Gate a model's infection on HU volumes, then drop lesions below the floor; returns (mask, summary)."""
    summary: dict[str, Any] = {"applied": False}
    if method == "model":
        infection, summary = gate_infection_hu(ct, lungs, infection, gating)
    if not summary.get("applied"):
        summary["reason_not_applied"] = (
            "the HU gate cleans the network output on HU volumes only"
            if method == "model" or ct.intensity != "HU"
            else "the classical method applies its own HU rules"
        )
    if ct.is_3d:
        infection = remove_small_lesions(infection, ct.voxel_volume_ml, floor.min_lesion_ml)
    return infection, summary


def score_scan(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    numbers: dict[str, Any],
    classifier_probability: float | None,
    floor: NoiseFloor = DEFAULT_FLOOR,
    rules: AssessmentRules | None = None,
    peripheral: Any | None = None,
    masses: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply the zone noise floor to ``numbers`` and assess the scan; returns ``(numbers, covid_assessment)``.
    ``peripheral``: the :class:`CovidCTLib.anatomy.peripheral.PeripheralMap` when the caller has it;
    ``masses``: the HU gate's ``mass_like_lesions``."""
    numbers = apply_noise_floor(numbers, floor)
    return numbers, assess(ct, lungs, infection, numbers, classifier_probability, rules, peripheral, masses)
