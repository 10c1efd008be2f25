"""Noise floor of the severity score and the lesion list: a normal lung must read 0.

Two parameters, stated in report.json (``noise_floor``) and the report:

* ``min_lesion_ml``: connected infection components (26-connectivity) smaller than this are removed from the
  infection mask itself, so volumes, zones, lesion list and outputs agree (0.25 mL, a sphere of about 8 mm).
* ``min_zone_percent``: a zone scores 1 only when at least this share of its lung volume is infected
  (1 %); below it the zone scores 0 (trace findings, partial volume and residual false positives).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from CovidCTLib.imaging.grid import occupied_box
from CovidCTLib.quantify import severity_from_percent


@dataclass(frozen=True)
class NoiseFloor:
    """Smallest lesion counted (mL) and smallest zone involvement (%) that scores a zone 1."""

    min_lesion_ml: float = 0.25
    min_zone_percent: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        """The floor as stated in report.json."""
        return {
            **asdict(self),
            "meaning": (
                f"Infection components smaller than {self.min_lesion_ml:g} mL are not counted (removed from the "
                f"mask and the lesion list); a zone scores 1 only from {self.min_zone_percent:g} % involvement."
            ),
        }


def remove_small_lesions(infection: np.ndarray, voxel_ml: float, min_lesion_ml: float) -> np.ndarray:
    """``infection`` without its 26-connected components smaller than ``min_lesion_ml`` (uint8 copy)."""
    out = np.asarray(infection).astype(np.uint8, copy=True)
    if min_lesion_ml <= 0 or not out.any():
        return out
    found = occupied_box(out > 0)
    sub = out[found]
    lab, n = ndimage.label(sub > 0, structure=np.ones((3, 3, 3), dtype=bool))
    size = np.bincount(lab.ravel(), minlength=n + 1).astype(float) * voxel_ml
    small = size < min_lesion_ml
    small[0] = False
    sub[small[lab]] = 0
    return out


def zone_severity(percent: float, floor: NoiseFloor) -> int:
    """Zone score 0-5 with the floor: 0 below ``min_zone_percent``, else the usual bins."""
    return 0 if percent < floor.min_zone_percent else severity_from_percent(percent)


def apply_noise_floor(numbers: dict[str, Any], floor: NoiseFloor) -> dict[str, Any]:
    """Re-score the zones of a ``quantify`` result with the floor and state it (modifies and returns it)."""
    zones = numbers.get("zones") or []
    for zone in zones:
        zone["severity"] = zone_severity(float(zone["percent"]), floor)
    score = numbers.get("severity_score")
    if isinstance(score, dict):
        score["per_zone"] = {f"{z['lung']}_{z['zone']}": z["severity"] for z in zones}
        score["total"] = int(sum(z["severity"] for z in zones))
        score["noise_floor"] = (
            f"A zone scores 1 only from {floor.min_zone_percent:g} % involvement; lesions under "
            f"{floor.min_lesion_ml:g} mL are not counted."
        )
    numbers["lesions"] = [d for d in numbers.get("lesions") or [] if d["volume_ml"] >= floor.min_lesion_ml]
    numbers["noise_floor"] = floor.as_dict()
    return numbers
