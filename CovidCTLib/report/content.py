"""What the radiologist-readable reports show, built once and laid out by both the HTML and PDF writers.

Everything comes from ``result.report`` (the report.json content) and the result's images, formatted the same
way for both outputs: volumes in mL with one decimal, percentages with one decimal, probability with three.
Patient/study identifiers (name, ID, birth date, dates, UIDs, file path) appear only when asked for.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from CovidCTLib.labels import INFECTION_CLASSES, SEGMENTS
from CovidCTLib.report.anatomy_tables import anatomy_tables
from CovidCTLib.report.assessment_text import assessment_paragraph, assessment_rows
from CovidCTLib.version import DISCLAIMER, __version__

LOG = logging.getLogger(__name__)
TOP_LESIONS = 15
NOT_FOR_DIAGNOSIS = "Research software, not for diagnosis"


def ml(value: Any) -> str:
    """Volume in mL, one decimal ('-' when missing)."""
    return "-" if value is None else f"{float(value):.1f}"


def pct(value: Any) -> str:
    """Percentage, one decimal ('-' when missing)."""
    return "-" if value is None else f"{float(value):.1f}"


@dataclass
class Table:
    """A titled table of already formatted strings."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class ReportImages:
    """PNG bytes of the report pictures; ``surface_note`` explains a missing 3-D picture."""

    surface_png: bytes | None = None
    surface_note: str = ""
    axial_png: bytes | None = None
    coronal_png: bytes | None = None
    trend_png: bytes | None = None
    explanation_png: bytes | None = None  # top slices with the classifier's heatmap (issue 16.2)


@dataclass
class ReportContent:
    """Titles, key-value facts, tables and pictures of one report."""

    title: str
    facts: list[tuple[str, str]]
    probability_text: str
    tables: list[Table]
    images: ReportImages
    notes: list[str] = field(default_factory=list)
    compare_tables: list[Table] = field(default_factory=list)
    disclaimer: str = DISCLAIMER
    footer: str = f"{NOT_FOR_DIAGNOSIS}. CovidCT {__version__}."


def _probability_text(report: dict[str, Any]) -> str:
    probability = report.get("covid_probability")
    if probability is None:
        return (
            "No classifier ran for this scan, so there is no COVID-19 probability. The volumes below describe "
            "lung opacities of any cause."
        )
    classification = report.get("classification") or {}
    threshold = classification.get("threshold")
    text = (
        f"COVID-19 probability {float(probability):.3f}: the classifier's estimate (0 to 1) that this scan shows "
        "a COVID-19 pneumonia pattern, learned from labelled research data sets. It is not a diagnosis and "
        "does not distinguish COVID-19 from other causes with a similar CT appearance."
    )
    if threshold is not None:
        verdict = "at or above" if float(probability) >= float(threshold) else "below"
        text += f" It is {verdict} the decision threshold {float(threshold):.2f}."
    return text


def _facts(result, report: dict[str, Any], include_identifiers: bool) -> list[tuple[str, str]]:
    identity = report.get("input") or {}
    versions = report.get("versions") or {}
    facts: list[tuple[str, str]] = []
    if include_identifiers:
        patient = identity.get("patient") or getattr(result.ct, "patient", {}) or {}
        for key, label in (("name", "Patient name"), ("id", "Patient ID"), ("birth_date", "Birth date")):
            if patient.get(key):
                facts.append((label, str(patient[key])))
        for key, label in (
            ("source", "Input"),
            ("acquisition_date", "Acquisition date"),
            ("study_uid", "Study UID"),
            ("series_uid", "Series UID"),
        ):
            value = identity.get(key) or getattr(result.ct, key, None)
            if value:
                facts.append((label, str(value)))
    size = identity.get("size_xyz") or list(result.ct.image.GetSize())
    spacing = identity.get("spacing_mm_xyz") or [round(s, 3) for s in result.ct.image.GetSpacing()]
    facts.append(
        ("Scan", f"{' x '.join(str(s) for s in size)} voxels, {' x '.join(f'{float(s):.3g}' for s in spacing)} mm")
    )
    modality = identity.get("modality") or result.ct.modality
    if modality:
        facts.append(("Modality", str(modality)))
    facts.append(("Method", str(report.get("method") or result.method)))
    models = versions.get("models") or result.model_versions
    facts.append(("Models", ", ".join(f"{k} {v}" for k, v in sorted(models.items())) if models else "none"))
    facts.append(("Software", f"CovidCT {versions.get('covidct', __version__)}"))
    if report.get("created_utc"):
        facts.append(("Analysed (UTC)", str(report["created_utc"])))
    timing = (report.get("timing_s") or {}).get("total")
    if timing is not None:
        facts.append(("Analysis time", f"{float(timing):.1f} s"))
    return facts


def _volume_table(report: dict[str, Any]) -> Table:
    lungs = report.get("lungs") or {}
    infection = report.get("infection") or {}
    zones = report.get("zones") or []

    def side(lung: str, key: str) -> float | None:
        values = [z.get(key) for z in zones if z.get("lung") == lung and z.get(key) is not None]
        return float(sum(values)) if values else None

    rows = []
    for lung, label in (("right", "Right lung"), ("left", "Left lung")):
        classes = [ml(side(lung, f"{c.key}_ml")) for c in INFECTION_CLASSES]
        rows.append(
            [
                label,
                ml(lungs.get(f"{lung}_ml")),
                ml(side(lung, "infection_ml")),
                *classes,
                pct(infection.get(f"{lung}_percent")),
            ]
        )
    classes = [ml(infection.get(f"{c.key}_ml")) for c in INFECTION_CLASSES]
    rows.append(
        [
            "Both lungs",
            ml(lungs.get("total_ml")),
            ml(infection.get("total_ml")),
            *classes,
            pct(infection.get("percent_of_lungs")),
        ]
    )
    return Table("Volumes", ["", "Lung (mL)", "Infection (mL)", *_class_headers(), "Affected (%)"], rows)


def _class_headers() -> list[str]:
    """One column header per infection class (``Ground-glass (mL)``, ``Consolidation (mL)``)."""
    short = {"Ground-glass opacity": "Ground-glass"}
    return [f"{short.get(c.name, c.name)} (mL)" for c in INFECTION_CLASSES]


def _zone_table(report: dict[str, Any]) -> Table:
    rows = []
    for zone in report.get("zones") or []:
        rows.append(
            [
                str(zone.get("lung", "")).capitalize(),
                str(zone.get("zone", "")),
                ml(zone.get("lung_ml")),
                ml(zone.get("infection_ml")),
                *(ml(zone.get(f"{c.key}_ml")) for c in INFECTION_CLASSES),
                pct(zone.get("percent")),
                str(zone.get("severity", "-")),
            ]
        )
    score = report.get("severity_score") or {}
    total = score.get("total")
    maximum = score.get("max")
    note = ""
    if total is not None:
        note = f"Severity score (sum of the zone scores): {total}" + (f" of {maximum}" if maximum else "") + "."
        if score.get("scale"):
            note += f" {score['scale']}"
    return Table(
        "Zones (upper, middle, lower third of each lung)",
        ["Lung", "Zone", "Lung (mL)", "Infection (mL)", *_class_headers(), "Affected (%)", "Score"],
        rows,
        note,
    )


def _lobe_table(report: dict[str, Any]) -> list[Table]:
    """The five lobes with their burden and score (none for 8-bit input, where lobes are not segmented)."""
    lobes = report.get("lobes") or []
    if not lobes:
        return []
    rows = [
        [
            str(lobe.get("name", "")),
            ml(lobe.get("lung_ml")),
            ml(lobe.get("infection_ml")),
            *(ml(lobe.get(f"{c.key}_ml")) for c in INFECTION_CLASSES),
            pct(lobe.get("percent")),
            str(lobe.get("score", "-")),
        ]
        for lobe in lobes
    ]
    score = report.get("severity_score_lobar") or {}
    note = f"Lobar severity score: {score.get('total', '-')} of 25."
    if score.get("scale"):
        note += f" {score['scale']}"
    limits = (report.get("lobe_segmentation") or {}).get("limits")
    if limits:
        note += f" {limits}"
    return [
        Table("Lobes", ["Lobe", "Lung (mL)", "Infection (mL)", *_class_headers(), "Affected (%)", "Score"], rows, note)
    ]


def _lesion_table(report: dict[str, Any], top: int) -> Table:
    lesions = sorted(report.get("lesions") or [], key=lambda item: -float(item.get("volume_ml") or 0.0))
    rows = []
    for lesion in lesions[:top]:
        centroid = lesion.get("centroid_mm")
        where = ", ".join(f"{float(c):.0f}" for c in centroid) if centroid is not None else "-"
        mean_hu = lesion.get("mean_hu")
        rows.append(
            [
                str(lesion.get("id", "")),
                str(lesion.get("type", "")),
                ml(lesion.get("volume_ml")),
                "-" if mean_hu is None else f"{float(mean_hu):.0f}",
                str(lesion.get("lung", "")),
                str(lesion.get("zone", "")),
                where,
            ]
        )
    note = f"{len(lesions)} connected lesions in total" + (
        f"; the {top} largest are listed." if len(lesions) > top else "."
    )
    return Table(
        "Largest lesions",
        ["ID", "Type", "Volume (mL)", "Mean HU", "Lung", "Zone", "Centroid x, y, z (mm, LPS)"],
        rows,
        note,
    )


def _compare_tables(compare: dict[str, Any] | None) -> list[Table]:
    if not compare or not compare.get("rows"):
        return []
    rows = list(compare["rows"])
    preferred = [
        "label",
        "date",
        "infection_total",
        "percent_total",
        "percent_change_points_vs_baseline",
        "verdict_vs_baseline",
        "verdict_vs_previous",
        "lung_dice",
    ]
    columns = (
        compare.get("columns")
        or [c for c in preferred if c in rows[0]]
        or [c for c in rows[0] if c not in ("disclaimer", "software_version", "source")]
    )

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) < 1 else f"{value:.1f}"
        return "" if value is None else str(value)

    table_rows = [[fmt(row.get(c)) for c in columns] for row in rows]
    header = [c.replace("_", " ") for c in columns]
    return [Table(compare.get("title") or "Change over time", header, table_rows, compare.get("note", ""))]


def _surface_picture(result, size: tuple[int, int]) -> tuple[bytes | None, str]:
    from CovidCTLib import render, surfaces

    try:
        render.offscreen_backend()
    except render.RenderUnavailableError as exc:
        return None, str(exc)
    image = result.ct.image
    factor = 2 if max(image.GetSize()) > 256 else 1
    reference = image
    lungs, infection = np.asarray(result.lungs), np.asarray(result.infection)
    if factor > 1:
        # every second voxel, with doubled spacing: same physical positions, 8x less work for a picture
        lungs, infection = lungs[::factor, ::factor, ::factor], infection[::factor, ::factor, ::factor]
        reference = sitk.Image([int(s) for s in lungs.shape[::-1]], sitk.sitkUInt8)
        reference.SetOrigin(image.GetOrigin())
        reference.SetDirection(image.GetDirection())
        reference.SetSpacing([s * factor for s in image.GetSpacing()])
    polys = {}
    for spec in SEGMENTS:
        source = lungs if spec.source == "lungs" else infection
        polys[spec.key] = surfaces.labelmap_to_polydata(source == spec.label, reference, smoothing_iterations=20)
    try:
        return render.render_surfaces_png(polys, None, size), ""
    except render.RenderUnavailableError as exc:
        return None, str(exc)


_LAST: list = []  # [(weakref to result, key, ReportImages)]: HTML then PDF of one result render once


def make_images(
    result, compare: dict[str, Any] | None = None, render_3d: bool = True, size_3d: tuple[int, int] = (700, 700)
) -> ReportImages:
    """Render the report pictures (3-D surfaces, axial and coronal montages, trend plot).

    The pictures of the last result are kept (while that result lives), so writing the HTML and then the
    PDF report of the same result renders them only once.
    """
    from CovidCTLib import render

    key = (id(compare), str((compare or {}).get("trend_png")), render_3d, tuple(size_3d))
    if _LAST and _LAST[0][0]() is result and _LAST[0][1] == key:
        return _LAST[0][2]
    images = ReportImages()
    if render_3d:
        images.surface_png, images.surface_note = _surface_picture(result, size_3d)
    else:
        images.surface_note = "3-D rendering was not requested."
    if result.ct.is_3d:
        images.axial_png = render.overlay_montage_png(result.ct, result.lungs, result.infection, "axial")
        images.coronal_png = render.overlay_montage_png(result.ct, result.lungs, result.infection, "coronal")
    else:
        images.axial_png = render.overlay_montage_png(
            result.ct, result.lungs, result.infection, "axial", n=1, columns=1
        )
    if getattr(result, "heatmap", None) is not None and (result.report or {}).get("explanation"):
        from CovidCTLib.explain.figure import explanation_png

        images.explanation_png = explanation_png(
            result.ct, result.infection, result.heatmap, result.report["explanation"]
        )
    trend = (compare or {}).get("trend_png")
    if isinstance(trend, bytes):
        images.trend_png = trend
    elif trend:
        images.trend_png = Path(trend).read_bytes()
    _LAST[:] = [(weakref.ref(result), key, images)]
    return images


def build_content(
    result,
    include_identifiers: bool = False,
    compare: dict[str, Any] | None = None,
    images: ReportImages | None = None,
    top_lesions: int = TOP_LESIONS,
) -> ReportContent:
    """Everything a report shows, formatted; renders the pictures unless ``images`` is given."""
    report = result.report or {}
    images = images if images is not None else make_images(result, compare)
    return ReportContent(
        title="CovidCT chest CT analysis",
        facts=_facts(result, report, include_identifiers),
        probability_text=assessment_paragraph(report) or _probability_text(report),  # issue 13 hook
        tables=[
            _volume_table(report),
            _zone_table(report),
            *_lobe_table(report),
            *(Table(*spec) for spec in anatomy_tables(report)),
            _lesion_table(report, top_lesions),
        ]  # issue 14
        + (
            [Table("COVID-19 assessment (features)", ["Feature", "Value"], assessment_rows(report))]
            if assessment_rows(report)
            else []
        ),
        images=images,
        notes=[str(n) for n in report.get("notes") or []],
        compare_tables=_compare_tables(compare),
        disclaimer=str(report.get("disclaimer") or DISCLAIMER),
    )
