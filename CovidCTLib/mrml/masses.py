"""A point list of the mass-like lesions the HU gate took out of the infection (report.json
``infection_gating.mass_like_lesions``): the reader sees where the tumour / nodule / mass-like consolidation is
that the burden does not count, and clicks through to it."""

from __future__ import annotations

from typing import Any

import slicer

#: colour of the points (orange: a finding to review, not infection)
MASS_COLOR = (1.0, 0.55, 0.0)


def listed_masses(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The mass-like lesions listed in a report.json (empty when none or when the gate did not run)."""
    gating = report.get("infection_gating") or {}
    return [m for m in gating.get("mass_like_lesions") or [] if len(m.get("centroid_mm") or []) == 3]


def point_label(mass: dict[str, Any]) -> str:
    """Short control-point label, e.g. ``mass-like 89 mL (left lung)``."""
    return f"mass-like {float(mass.get('volume_ml', 0.0)):.0f} mL ({mass.get('lung', '?')} lung)"


def point_description(mass: dict[str, Any]) -> str:
    """What the point stands for, with the numbers the report gives."""
    return (
        f"Not counted as infection (HU gate): {float(mass.get('volume_ml', 0.0)):.1f} mL, solid core "
        f"{float(mass.get('solid_core_ml', 0.0)):.1f} mL, about {float(mass.get('core_diameter_mm', 0.0)):.0f} mm. "
        "Review it. Research software, not a diagnosis."
    )


def add_mass_markups(scene: slicer.vtkMRMLScene, report: dict[str, Any], name: str) -> Any | None:
    """A locked point list with one control point (RAS) per mass-like lesion, or None when there is none."""
    masses = listed_masses(report)
    if not masses:
        return None
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.CreateDefaultDisplayNodes()
    for mass in masses:
        x, y, z = (float(v) for v in mass["centroid_mm"])
        index = node.AddControlPoint([-x, -y, z], point_label(mass))  # LPS (report) -> RAS (Slicer)
        node.SetNthControlPointDescription(index, point_description(mass))
    node.SetLocked(True)
    node.GetDisplayNode().SetSelectedColor(*MASS_COLOR)
    node.GetDisplayNode().SetColor(*MASS_COLOR)
    node.SetAttribute("CovidCT.Role", "mass-like lesions")
    return node
