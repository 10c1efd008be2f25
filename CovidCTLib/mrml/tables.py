"""Table nodes: the statistics of one analysis and its lesion list, straight from report.json."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import slicer
import vtk

from CovidCTLib.anatomy.rows import anatomy_rows
from CovidCTLib.assessment import CATEGORIES
from CovidCTLib.report.fields import TABLE_FIELDS, lookup
from CovidCTLib.version import DISCLAIMER

#: (report key, measurement label, unit) of the main statistics rows, in display order (from the field table).
STATISTICS_ROWS: tuple[tuple[str, str, str], ...] = tuple((f.key, f.label, f.unit) for f in TABLE_FIELDS)

#: issue 13: assessment and noise-floor rows, listed when the report has them (the category: see below).
ASSESSMENT_ROWS: tuple[tuple[str, str, str], ...] = (
    ("covid_assessment.features.peripheral_share", "Peripheral / subpleural share of infection", "fraction"),
    ("covid_assessment.features.ggo_share", "Ground-glass share of infection", "fraction"),
    ("covid_assessment.features.n_significant_lesions", "Significant lesions", "count"),
    ("noise_floor.min_lesion_ml", "Noise floor: smallest lesion counted", "mL"),
    ("noise_floor.min_zone_percent", "Noise floor: zone involvement scoring 1", "%"),
)


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _unit_for(key: str) -> str:
    lowered = key.lower()
    if lowered.endswith("_ml") or lowered.endswith("ml"):
        return "mL"
    if "percent" in lowered or lowered.endswith("_pct"):
        return "%"
    if "score" in lowered:
        return "points"
    if lowered.endswith("_mm"):
        return "mm"
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def statistics_rows(report: dict[str, Any]) -> list[tuple[str, str, float, str]]:
    """``(key, measurement, value, unit)`` rows: the main numbers, then every numeric zone field."""
    rows = [(key, label, _number(lookup(report, key)), unit) for key, label, unit in STATISTICS_ROWS]
    rows += [
        (key, label, _number(lookup(report, key)), unit)
        for key, label, unit in ASSESSMENT_ROWS
        if lookup(report, key) is not None
    ]
    assessment = report.get("covid_assessment")  # issue 13: the category as an ordinal row
    if isinstance(assessment, dict) and assessment.get("category") in CATEGORIES:
        category = assessment["category"]
        rows.insert(
            1,
            (
                "covid_assessment.category",
                f"COVID-19 assessment (RSNA): {category} (0 negative, 1 atypical, 2 indeterminate, 3 typical)",
                float(CATEGORIES.index(category)),
                "category",
            ),
        )
    lesions = report.get("lesions")
    if isinstance(lesions, list):
        rows.append(("lesions.count", "Number of lesions", float(len(lesions)), "count"))
    rows += anatomy_rows(report)  # issue 14: per-lobe peripheral split, anatomical zones
    zones = report.get("zones")
    if isinstance(zones, list):
        for index, zone in enumerate(zones):
            if not isinstance(zone, dict):
                continue
            label = zone.get("name") or zone.get("zone") or zone.get("label") or str(index + 1)
            for field, value in zone.items():
                if _is_number(value):
                    rows.append((f"zones[{index}].{field}", f"Zone {label}: {field}", float(value), _unit_for(field)))
    return rows


def _new_table_node(scene: slicer.vtkMRMLScene, name: str, report: dict[str, Any]) -> slicer.vtkMRMLTableNode:
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    versions = report.get("versions") or {}
    node.SetAttribute("CovidCT.Disclaimer", str(report.get("disclaimer") or DISCLAIMER))
    node.SetAttribute("CovidCT.SoftwareVersion", str(versions.get("covidct", "")))
    node.SetAttribute("CovidCT.Method", str(report.get("method") or versions.get("method") or ""))
    models = versions.get("models") or {}
    node.SetAttribute("CovidCT.Models", ";".join(f"{k}={v}" for k, v in sorted(dict(models).items())))
    node.SetDescription(str(report.get("disclaimer") or DISCLAIMER))
    return node


def _string_column(name: str, values: Iterable[Any]) -> vtk.vtkStringArray:
    column = vtk.vtkStringArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue("" if value is None else str(value))
    return column


def _double_column(name: str, values: Iterable[Any]) -> vtk.vtkDoubleArray:
    column = vtk.vtkDoubleArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue(_number(value))
    return column


def add_statistics_table(scene: slicer.vtkMRMLScene, report: dict[str, Any], name: str) -> slicer.vtkMRMLTableNode:
    """A table node with one row per measurement (Measurement, Value, Unit, Key)."""
    rows = statistics_rows(report)
    node = _new_table_node(scene, name, report)
    table = node.GetTable()
    table.AddColumn(_string_column("Measurement", [r[1] for r in rows]))
    table.AddColumn(_double_column("Value", [r[2] for r in rows]))
    table.AddColumn(_string_column("Unit", [r[3] for r in rows]))
    table.AddColumn(_string_column("Key", [r[0] for r in rows]))
    node.SetUseColumnTitleAsColumnHeader(True)
    node.SetColumnDescription("Value", "Value from report.json (NaN when not computed)")
    node.Modified()
    return node


def add_lesions_table(scene: slicer.vtkMRMLScene, report: dict[str, Any], name: str) -> slicer.vtkMRMLTableNode:
    """A table node with one row per lesion; numeric fields as numbers, lists/others as text."""
    lesions = [lesion for lesion in (report.get("lesions") or []) if isinstance(lesion, dict)]
    node = _new_table_node(scene, name, report)
    table = node.GetTable()
    fields: list[str] = []
    for lesion in lesions:
        fields.extend(key for key in lesion if key not in fields)
    for field in fields:
        values = [lesion.get(field) for lesion in lesions]
        numeric = all(_is_number(v) or v is None for v in values)
        if numeric:
            table.AddColumn(_double_column(field, values))
        else:
            table.AddColumn(_string_column(field, [_text(v) for v in values]))
    node.SetUseColumnTitleAsColumnHeader(True)
    node.Modified()
    return node


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(f"{v:.4g}" if _is_number(v) else str(v) for v in value)
    return "" if value is None else str(value)


def table_rows(node: slicer.vtkMRMLTableNode) -> list[dict[str, Any]]:
    """The table's content as a list of ``{column: value}`` dicts (tests and export)."""
    table = node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c, column_name in enumerate(names):
            column = table.GetColumn(c)
            row[column_name] = (
                column.GetValue(r) if isinstance(column, vtk.vtkStringArray) else float(column.GetValue(r))
            )
        rows.append(row)
    return rows
