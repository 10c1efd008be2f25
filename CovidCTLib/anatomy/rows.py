"""Statistics-table rows of the anatomy blocks (per lobe peripheral split, per landmark zone).

Plain ``(key, measurement, value, unit)`` tuples for :func:`CovidCTLib.mrml.tables.statistics_rows`
(no Slicer import); the scan-level numbers are fields of :mod:`CovidCTLib.report.fields`.
"""

from __future__ import annotations

import math
from typing import Any


def _value(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def anatomy_rows(report: dict[str, Any]) -> list[tuple[str, str, float, str]]:
    """Rows for each lobe's peripheral / central involvement and each anatomical zone (none when absent)."""
    rows: list[tuple[str, str, float, str]] = []
    peripheral = report.get("peripheral_involvement")
    for index, lobe in enumerate((peripheral or {}).get("lobes") or []):
        key = f"peripheral_involvement.lobes[{index}]"
        rows += [
            (
                f"{key}.peripheral_percent",
                f"{lobe['key']}: peripheral (outer third) involvement",
                _value(lobe.get("peripheral_percent")),
                "%",
            ),
            (f"{key}.central_percent", f"{lobe['key']}: central involvement", _value(lobe.get("central_percent")), "%"),
            (
                f"{key}.peripheral_share",
                f"{lobe['key']}: peripheral share of infection",
                _value(lobe.get("peripheral_share")),
                "fraction",
            ),
        ]
    zones = report.get("anatomical_zones")
    if isinstance(zones, dict):
        method = zones.get("method", "")
        for index, zone in enumerate(zones.get("zones") or []):
            key = f"anatomical_zones.zones[{index}]"
            name = f"Anatomical zone ({method}) {zone['lung']} {zone['zone']}"
            rows += [
                (f"{key}.lung_ml", f"{name}: lung volume", _value(zone.get("lung_ml")), "mL"),
                (f"{key}.percent", f"{name}: involvement", _value(zone.get("percent")), "%"),
                (f"{key}.score", f"{name}: score", _value(zone.get("score")), "points"),
            ]
    return rows
