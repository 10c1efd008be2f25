"""The one table of report fields: key in report.json, label, unit, and which views show it.

report.csv's columns, the Slicer statistics table, the HTML/PDF summary and the panel all read this table;
adding a number to every view means adding one :class:`Field` here (and computing it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from CovidCTLib.labels import INFECTION_CLASSES


@dataclass(frozen=True)
class Field:
    """One reported value: ``key`` is its dotted path in report.json (``lookup(report, key)``)."""

    key: str
    label: str
    unit: str = ""
    csv: bool = True  # a column of report.csv
    table: bool = True  # a row of the statistics table (Slicer, HTML/PDF summary)


def _class_fields() -> tuple[Field, ...]:
    return tuple(Field(f"infection.{c.key}_ml", f"{c.name} volume", "mL") for c in INFECTION_CLASSES)


#: every field, in report.csv column order
FIELDS: tuple[Field, ...] = (
    Field("source", "Input", csv=True, table=False),
    Field("series_uid", "Series instance UID", csv=True, table=False),
    Field("method", "Method", csv=True, table=False),
    Field("model_versions", "Model versions", csv=True, table=False),
    Field("covid_probability", "COVID probability (research use, not a diagnosis)", "probability"),
    Field("explanation.heat_in_infection", "Classifier heat inside the segmented infection (Grad-CAM)", "fraction"),
    Field("lungs.right_ml", "Right lung volume", "mL"),
    Field("lungs.left_ml", "Left lung volume", "mL"),
    Field("lungs.total_ml", "Total lung volume", "mL"),
    Field("infection.total_ml", "Infection volume", "mL"),
    *_class_fields(),
    Field("infection.percent_of_lungs", "Involvement, both lungs", "%"),
    Field("infection.right_percent", "Involvement, right lung", "%"),
    Field("infection.left_percent", "Involvement, left lung", "%"),
    Field("severity_score.total", "CT severity score (6 zones, 0-30)", "points"),
    Field("severity_score_lobar.total", "Lobar CT severity score (5 lobes, 0-25)", "points"),
    # issue 14: peripheral (outer third) involvement and the landmark zones (CovidCTLib.anatomy)
    Field("peripheral_involvement.both.peripheral_share", "Peripheral (outer third) share of infection", "fraction"),
    Field("peripheral_involvement.right.peripheral_share", "Peripheral share of infection, right lung", "fraction"),
    Field("peripheral_involvement.left.peripheral_share", "Peripheral share of infection, left lung", "fraction"),
    Field("anatomical_zones.method", "Anatomical zones made by", table=False),
    Field("anatomical_zones.landmarks.carina_z_mm", "Carina level (LPS z)", "mm"),
    Field("anatomical_zones.landmarks.ipv_z_mm", "Inferior pulmonary vein level, proxy (LPS z)", "mm"),
    Field("anatomical_zones.score_total", "Anatomical-zone score (carina / IPV zones, 0-30)", "points"),
    Field("n_lesions", "Number of lesions", "count", table=False),
    Field("software_version", "CovidCT version", table=False),
    Field("timing_s.total", "Analysis time", "s", table=False),
)

CSV_COLUMNS: tuple[str, ...] = tuple(f.key for f in FIELDS if f.csv)
TABLE_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.table)


def field(key: str) -> Field:
    """The field of ``key``."""
    for f in FIELDS:
        if f.key == key:
            return f
    raise KeyError(key)


def lookup(report: dict[str, Any], dotted: str) -> Any:
    """``report["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    value: Any = report
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
