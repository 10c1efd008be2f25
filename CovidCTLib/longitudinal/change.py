"""Change map and per-region numbers between a baseline and a registered follow-up.

Change labels (on the baseline grid): 1 persistent (infected at both times), 2 new (follow-up only),
3 resolved (baseline only). Regions: each lung and, for volumes, three craniocaudal zones per lung (upper,
middle, lower thirds of that lung's own extent along the patient's superior axis). Single slices (2-D)
are measured in cm^2 of lung area instead of mL, without zones.

Verdict between two time points for one region, from the percentage of that region's lung that is
infected (p0 at the earlier, p1 at the later time; d = p1 - p0 in percentage points):

* **progression** if d >= +5 points, or if d >= +1 point and the relative change d / p0 >= +25 %;
* **regression** if d <= -5 points, or if d <= -1 point and the relative change <= -25 %;
* **stable** otherwise (changes under 1 point are always stable: segmentation noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

PERSISTENT, NEW, RESOLVED = 1, 2, 3
CHANGE_NAMES = {PERSISTENT: "persistent", NEW: "new", RESOLVED: "resolved"}
#: colours (RGB 0..1) used by every change-map writer and view: persistent amber, new red, resolved green
CHANGE_COLORS = {PERSISTENT: (0.95, 0.70, 0.20), NEW: (0.90, 0.15, 0.15), RESOLVED: (0.20, 0.75, 0.35)}
ZONES = ("upper", "middle", "lower")


@dataclass(frozen=True)
class VerdictThresholds:
    """Thresholds of :func:`verdict` in percentage points and relative percent."""

    points: float = 5.0
    relative_percent: float = 25.0
    min_points: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return {
            "progression_if_points_at_least": self.points,
            "or_relative_percent_at_least": self.relative_percent,
            "with_points_at_least": self.min_points,
            "regression": "mirror image (negative changes)",
        }


def verdict(p0: float, p1: float, thresholds: VerdictThresholds | None = None) -> str:
    """``progression`` / ``stable`` / ``regression`` from the infected percentage at two times."""
    t = thresholds or VerdictThresholds()
    d = p1 - p0
    relative = (d / p0 * 100.0) if p0 > 0 else (np.inf if d > 0 else 0.0)
    if d >= t.points or (d >= t.min_points and relative >= t.relative_percent):
        return "progression"
    if d <= -t.points or (d <= -t.min_points and relative <= -t.relative_percent):
        return "regression"
    return "stable"


def change_map(baseline_infection: np.ndarray, followup_infection_on_baseline: np.ndarray) -> np.ndarray:
    """1 persistent, 2 new, 3 resolved (uint8, same shape as the inputs)."""
    a = np.asarray(baseline_infection) > 0
    b = np.asarray(followup_infection_on_baseline) > 0
    out = np.zeros(a.shape, np.uint8)
    out[a & b] = PERSISTENT
    out[b & ~a] = NEW
    out[a & ~b] = RESOLVED
    return out


def is_slice(image: sitk.Image) -> bool:
    """True for a 2-D image or a 1-slice volume."""
    return image.GetDimension() == 2 or image.GetSize()[2] == 1


def unit_measure(image: sitk.Image) -> tuple[float, str]:
    """(size of one voxel, unit): mL per voxel for volumes, cm^2 per pixel for single slices."""
    sx, sy = image.GetSpacing()[:2]
    if is_slice(image):
        return sx * sy / 100.0, "cm2"
    return sx * sy * image.GetSpacing()[2] / 1000.0, "mL"


def zone_map(lungs: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Zone index per voxel: 1 upper, 2 middle, 3 lower third of each lung (0 outside; all 0 for slices)."""
    zones = np.zeros(lungs.shape, np.uint8)
    if is_slice(image):
        return zones
    # physical superior coordinate of every axial index (z axis of the array is the slowest)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    sup = np.array([image.TransformIndexToPhysicalPoint((0, 0, z))[2] for z in range(lungs.shape[0])])
    if abs(direction[2, 2]) < 0.5:  # not an axial stack: use the array's z order
        sup = np.arange(lungs.shape[0], dtype=float)
    for label in (1, 2):
        inside = lungs == label
        zs = np.nonzero(inside.any(axis=(1, 2)))[0]
        if zs.size == 0:
            continue
        top, bottom = sup[zs].max(), sup[zs].min()
        span = max(top - bottom, 1e-6)
        frac = (top - sup) / span  # 0 at the apex, 1 at the base
        zone_of_slice = np.clip((frac * 3.0).astype(int), 0, 2) + 1
        zones[inside] = np.broadcast_to(zone_of_slice[:, None, None], lungs.shape)[inside]
    return zones


def regions(lungs: np.ndarray, image: sitk.Image) -> dict[str, np.ndarray]:
    """Boolean masks per region: total, right, left, and for volumes right_upper ... left_lower."""
    out = {"total": lungs > 0, "right": lungs == 1, "left": lungs == 2}
    zones = zone_map(lungs, image)
    if zones.any():
        for label, side in ((1, "right"), (2, "left")):
            for z, name in enumerate(ZONES, start=1):
                out[f"{side}_{name}"] = (lungs == label) & (zones == z)
    return out


def timepoint_numbers(lungs: np.ndarray, infection: np.ndarray, image: sitk.Image) -> dict[str, Any]:
    """Per region: lung size, infection size (all, ground-glass, consolidation) and percent infected."""
    per, unit = unit_measure(image)
    out: dict[str, Any] = {"unit": unit, "regions": {}}
    for name, mask in regions(lungs, image).items():
        lung = float(mask.sum()) * per
        inf = float((mask & (infection > 0)).sum()) * per
        out["regions"][name] = {
            "lung": round(lung, 3),
            "infection": round(inf, 3),
            "ggo": round(float((mask & (infection == 1)).sum()) * per, 3),
            "consolidation": round(float((mask & (infection == 2)).sum()) * per, 3),
            "percent": round(100.0 * inf / lung, 3) if lung > 0 else 0.0,
        }
    return out


def change_numbers(change: np.ndarray, baseline_lungs: np.ndarray, image: sitk.Image) -> dict[str, Any]:
    """Persistent / new / resolved sizes per baseline region (plus what fell outside the baseline lungs)."""
    per, unit = unit_measure(image)
    out: dict[str, Any] = {"unit": unit, "regions": {}}
    masks = regions(baseline_lungs, image)
    masks["total"] = np.ones(change.shape, bool)  # everything, including new voxels just outside the lungs
    masks["outside_baseline_lungs"] = baseline_lungs == 0
    for name, mask in masks.items():
        out["regions"][name] = {
            CHANGE_NAMES[v]: round(float((mask & (change == v)).sum()) * per, 3) for v in CHANGE_NAMES
        }
    return out


def region_changes(
    before: dict[str, Any], after: dict[str, Any], thresholds: VerdictThresholds | None = None
) -> dict[str, Any]:
    """Absolute and relative change of infection size and percent per region, with the verdict."""
    out = {}
    for name, b in before["regions"].items():
        a = after["regions"].get(name)
        if a is None:
            continue
        d_inf = a["infection"] - b["infection"]
        out[name] = {
            "infection_before": b["infection"],
            "infection_after": a["infection"],
            "infection_change": round(d_inf, 3),
            "infection_change_relative_percent": (
                round(100.0 * d_inf / b["infection"], 2) if b["infection"] > 0 else None
            ),
            "percent_before": b["percent"],
            "percent_after": a["percent"],
            "percent_change_points": round(a["percent"] - b["percent"], 3),
            "verdict": verdict(b["percent"], a["percent"], thresholds),
        }
    return out
