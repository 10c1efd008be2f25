"""Typed results of the quantification (lungs, infection per class, zones, severity, lesions).

``Quantification.to_dict()`` is the numeric part of report.json; every other view (CSV, MRML tables, HTML/PDF,
panel) reads those keys through :mod:`CovidCTLib.report.fields`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from CovidCTLib.labels import INFECTION_CLASSES
from CovidCTLib.severity import SEVERITY_SCALE


@dataclass
class ZoneStats:
    """One zone (upper / middle / lower third) of one lung."""

    lung: str
    zone: str
    lung_ml: float
    class_ml: dict[str, float]  # infection class key -> mL
    percent: float
    severity: int

    @property
    def infection_ml(self) -> float:
        return float(sum(self.class_ml.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "lung": self.lung,
            "zone": self.zone,
            "lung_ml": self.lung_ml,
            "infection_ml": self.infection_ml,
            **{f"{c.key}_ml": self.class_ml.get(c.key, 0.0) for c in INFECTION_CLASSES},
            "percent": self.percent,
            "severity": self.severity,
        }


@dataclass
class Lesion:
    """One connected infection component."""

    id: int
    type: str
    volume_ml: float
    consolidation_fraction: float
    mean_hu: float
    centroid_voxel: list[float]
    centroid_mm: list[float]
    bbox_voxel: list[list[int]]
    lung: str
    zone: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SeverityScore:
    """The zone severity score: per-zone scores and their sum."""

    per_zone: dict[str, int]
    n_regions: int = 6

    @property
    def total(self) -> int:
        return int(sum(self.per_zone.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "max": self.n_regions * SEVERITY_SCALE.max_score,
            "per_zone": dict(self.per_zone),
            "bins": SEVERITY_SCALE.bins(),
            "scale": SEVERITY_SCALE.describe("zone"),
            "description": (
                "Sum over 6 zones (right/left lung x upper/middle/lower thirds of each lung's cranio-caudal "
                "extent) of a 0-5 score of the infected percentage of the zone."
            ),
        }


@dataclass
class Quantification:
    """Everything :func:`CovidCTLib.quantify.quantify_scan` measures."""

    lung_ml: dict[str, float]  # "right" / "left" -> mL
    class_ml: dict[str, dict[str, float]]  # side -> infection class key -> mL
    zones: list[ZoneStats]
    severity: SeverityScore
    lesions: list[Lesion] = field(default_factory=list)
    voxel_volume_ml: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The numeric part of report.json (keys as documented in the README)."""
        sides = ("right", "left")

        def pct(part: float, whole: float) -> float:
            return float(100.0 * part / whole) if whole > 0 else 0.0

        total_lung = float(sum(self.lung_ml[s] for s in sides))
        inf_side = {s: float(sum(self.class_ml[s].values())) for s in sides}
        total_inf = float(sum(inf_side.values()))
        infection: dict[str, Any] = {"total_ml": total_inf}
        for c in INFECTION_CLASSES:
            infection[f"{c.key}_ml"] = float(sum(self.class_ml[s].get(c.key, 0.0) for s in sides))
        infection["percent_of_lungs"] = pct(total_inf, total_lung)
        for s in sides:
            infection[f"{s}_ml"] = inf_side[s]
        for s in sides:
            infection[f"{s}_percent"] = pct(inf_side[s], self.lung_ml[s])
        for s in sides:
            for c in INFECTION_CLASSES:
                infection[f"{s}_{c.key}_ml"] = float(self.class_ml[s].get(c.key, 0.0))
        for c in INFECTION_CLASSES:
            infection[f"{c.key}_percent_of_lungs"] = pct(infection[f"{c.key}_ml"], total_lung)
        return {
            "lungs": {
                "right_ml": float(self.lung_ml["right"]),
                "left_ml": float(self.lung_ml["left"]),
                "total_ml": total_lung,
            },
            "infection": infection,
            "zones": [z.to_dict() for z in self.zones],
            "severity_score": self.severity.to_dict(),
            "lesions": [lesion.to_dict() for lesion in self.lesions],
            "voxel_volume_ml": self.voxel_volume_ml,
        }
