"""Report text and table of the scan-level COVID assessment (``covid_assessment`` of report.json)."""

from __future__ import annotations

from typing import Any

FEATURE_LABELS: tuple[tuple[str, str], ...] = (
    ("burden_percent", "Burden (% of lungs)"),
    ("bilateral", "Bilateral"),
    ("peripheral_share", "Peripheral / subpleural share"),
    ("lower_zone_share", "Lower-zone share"),
    ("posterior_share", "Posterior share"),
    ("ggo_share", "Ground-glass share"),
    ("n_significant_lesions", "Significant lesions"),
    ("largest_lesion_share", "Largest lesion share"),
    ("classifier_probability", "Slice classifier probability"),
)


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.endswith("_share"):
        return f"{100 * float(value):.0f} %"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def assessment_paragraph(report: dict[str, Any]) -> str | None:
    """One paragraph: category, probability and reasons; None when the report has no assessment."""
    block = report.get("covid_assessment")
    if not isinstance(block, dict):
        return None
    text = (
        f"COVID-19 assessment: {block.get('category', '-')} appearance (RSNA consensus categories), "
        f"probability {float(block.get('probability', 0.0)):.2f}. "
        + " ".join(block.get("reasons") or [])
        + " The probability combines a rule-based category from the segmentation with the slice classifier; "
        "it is not a diagnosis and does not distinguish COVID-19 from other causes with a similar CT appearance."
    )
    floor = report.get("noise_floor")
    if isinstance(floor, dict) and floor.get("meaning"):
        text += f" Noise floor: {floor['meaning']}"
    return text


def assessment_rows(report: dict[str, Any]) -> list[list[str]]:
    """``[feature, value]`` rows of the assessment table (empty without an assessment)."""
    block = report.get("covid_assessment")
    if not isinstance(block, dict):
        return []
    features = block.get("features") or {}
    rows = [
        ["Category", str(block.get("category", "-"))],
        ["Probability", f"{float(block.get('probability', 0.0)):.2f}"],
    ]
    rows += [[label, _fmt(key, features.get(key))] for key, label in FEATURE_LABELS if key in features]
    return rows


def assessment_summary(report: dict[str, Any]) -> list[str]:
    """CLI summary lines of the assessment (empty without one)."""
    block = report.get("covid_assessment")
    if not isinstance(block, dict):
        return []
    lines = [
        f"COVID-19 assessment: {block.get('category', '-')} (RSNA category), probability "
        f"{float(block.get('probability', 0.0)):.2f}; " + " ".join(block.get("reasons") or [])
    ]
    floor = report.get("noise_floor")
    if isinstance(floor, dict) and floor.get("meaning"):
        lines.append(f"Noise floor: {floor['meaning']}")
    kernel = report.get("kernel_harmonisation")
    if isinstance(kernel, dict) and kernel.get("applied"):
        lines.append(
            f"Kernel: sharp (lung texture {kernel['lung_texture_hu']:.0f} HU); the CT was smoothed in-plane "
            f"(sigma {kernel['sigma_mm']:.1f} mm) before the analysis."
        )
    return lines
