"""Wording of the explanation for the console, the HTML/PDF report and the Slicer panel."""

from __future__ import annotations

from typing import Any

#: the caption of the report picture (HTML and PDF)
EXPLANATION_CAPTION = (
    "Top slices of the COVID score (CT slice index, z in mm, calibrated slice score) in the radiological view "
    "(patient right on the image left, anterior at the top). Colour: Grad-CAM heat of the slice classifier "
    "(0..1 per scan, shown from 0.1), i.e. where the network's evidence for its score lies. Cyan: the "
    "segmented infection. Boxes: the hottest regions (heat >= 0.5) that cross the slice, numbered as in "
    "report.json. The map is coarse (about 1/6 of the lung width per cell), shows positive evidence only, is "
    "not a segmentation of disease and not a diagnosis."
)


def heat_fraction_text(explanation: dict[str, Any] | None) -> str:
    """``'12.3 % of the heat (infection is 4.0 % of the lungs)'``, or why there is no number."""
    if not explanation:
        return "n/a (no classifier explanation)"
    inside = explanation.get("heat_in_infection")
    if inside is None:
        return "n/a (the heatmap is zero everywhere)"
    share = float(explanation.get("infection_share_of_lung") or 0.0)
    return f"{100 * float(inside):.1f} % of the heat (infection is {100 * share:.1f} % of the lungs)"


def top_slices_text(explanation: dict[str, Any] | None, limit: int = 5) -> str:
    """``'55 (z -248.6 mm, 0.25), 53 (...)'``: the top slices with their z and score."""
    slices = (explanation or {}).get("top_slices") or []
    return ", ".join(f"{s['index']} (z {s['z_mm']:.1f} mm, {s['score']:.2f})" for s in slices[:limit]) or "none"


def explanation_summary(report: dict[str, Any]) -> list[str]:
    """The CLI summary lines of the explanation (none when it was not computed)."""
    explanation = report.get("explanation")
    if not explanation:
        return []
    return [
        f"Top slices (index, z, slice score): {top_slices_text(explanation)}",
        f"Heat in infection (Grad-CAM of the classifier): {heat_fraction_text(explanation)}",
    ]
