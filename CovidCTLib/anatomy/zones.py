"""Anatomical zones: upper / middle / lower split at the carina and at the inferior-pulmonary-vein level.

A second zone set beside the bounding-box thirds of :mod:`CovidCTLib.quantify` (whose zone score stays the
CT severity score of the report): every lung voxel is upper when its physical superior coordinate (LPS z)
lies above the carina, lower when it lies at or below the IPV level, middle in between
(:mod:`CovidCTLib.anatomy.landmarks` finds both). When either landmark is not found the zones are the
bounding-box thirds of each lung, and the block says so (``method`` ``"thirds"`` and a ``fallback`` line).
Per zone: lung_ml, infection_ml, percent and a 0-5 score (the scale of the zone score, with the same noise
floor); ``score_total`` 0-30. Research software, not a diagnosis.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from CovidCTLib.anatomy.landmarks import Landmarks
from CovidCTLib.labels import LEFT_LUNG, LUNG_NAMES, RIGHT_LUNG
from CovidCTLib.severity import SEVERITY_SCALE
from CovidCTLib.volume import CTVolume

ZONE_NAMES = ("upper", "middle", "lower")
METHOD_LANDMARKS = "landmarks"
METHOD_THIRDS = "thirds"


def superior_mm(ct: CTVolume, flat: np.ndarray) -> np.ndarray:
    """Physical superior coordinate (LPS z, mm) of flat ``(z, y, x)`` indices of the CT's array."""
    image = ct.image
    row = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)[2] * np.asarray(image.GetSpacing())
    k, j, i = np.unravel_index(flat, ct.shape)
    return float(image.GetOrigin()[2]) + row[0] * i + row[1] * j + row[2] * k


def zone_boundaries(landmarks: Landmarks) -> tuple[float, float] | None:
    """(upper/middle, middle/lower) boundary z in mm from the landmarks, None when one is missing."""
    if landmarks.carina_z_mm is None or landmarks.ipv_z_mm is None or landmarks.ipv_z_mm >= landmarks.carina_z_mm:
        return None
    return landmarks.carina_z_mm, landmarks.ipv_z_mm


def anatomical_zones(
    ct: CTVolume, lungs: np.ndarray, infection: np.ndarray, landmarks: Landmarks, min_percent: float = 0.0
) -> dict[str, Any]:
    """The report.json ``anatomical_zones`` block (see the module docstring)."""
    lungs = np.asarray(lungs)
    flat = np.flatnonzero(lungs)
    side = lungs.ravel()[flat]
    infected = np.asarray(infection).ravel()[flat] > 0
    z = superior_mm(ct, flat)
    bounds = zone_boundaries(landmarks)
    zone = np.zeros(flat.shape, dtype=np.int64)
    per_lung_bounds: dict[str, list[float]] = {}
    for value in (RIGHT_LUNG, LEFT_LUNG):
        sel = side == value
        if not sel.any():
            continue
        if bounds is None:
            top, bottom = float(z[sel].max()), float(z[sel].min())
            upper_mid, mid_low = top - (top - bottom) / 3.0, top - 2.0 * (top - bottom) / 3.0
        else:
            upper_mid, mid_low = bounds
        zone[sel] = np.where(z[sel] > upper_mid, 0, np.where(z[sel] > mid_low, 1, 2))
        per_lung_bounds[LUNG_NAMES[value]] = [round(upper_mid, 1), round(mid_low, 1)]
    code = (np.clip(side.astype(np.int64), 0, 2) * 3 + zone) * 2 + infected
    counts = np.bincount(code, minlength=18).reshape(3, 3, 2) * ct.voxel_volume_ml
    zones = []
    for value in (RIGHT_LUNG, LEFT_LUNG):
        for index, name in enumerate(ZONE_NAMES):
            lung_ml, inf_ml = float(counts[value, index].sum()), float(counts[value, index, 1])
            percent = 100.0 * inf_ml / lung_ml if lung_ml > 0 else 0.0
            score = 0 if percent < min_percent else SEVERITY_SCALE.score(percent)
            zones.append(
                {
                    "lung": LUNG_NAMES[value],
                    "zone": name,
                    "lung_ml": round(lung_ml, 2),
                    "infection_ml": round(inf_ml, 2),
                    "percent": round(percent, 2),
                    "score": int(score),
                }
            )
    block: dict[str, Any] = {
        "method": METHOD_LANDMARKS if bounds is not None else METHOD_THIRDS,
        "landmarks": landmarks.to_dict(),
        "boundaries_z_mm": per_lung_bounds,
        "zones": zones,
        "score_total": int(sum(zone["score"] for zone in zones)),
        "definition": (
            "Upper: above the carina; middle: from the carina to the inferior-pulmonary-vein level; lower: below "
            "it (physical superior coordinate). A second zone set: the CT severity score uses the "
            "bounding-box thirds."
        ),
    }
    if bounds is None:
        missing = [
            name for name, v in (("carina", landmarks.carina_z_mm), ("IPV level", landmarks.ipv_z_mm)) if v is None
        ] or ["a consistent carina/IPV order"]
        block["fallback"] = (
            f"Anatomical zones fell back to the bounding-box thirds of each lung: {' and '.join(missing)} not found."
        )
    return block
