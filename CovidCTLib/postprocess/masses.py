"""Mass-like lesions: a compact solid lesion is a mass, a nodule or a lobar consolidation, not the ground-glass /
consolidation pattern whose burden the analysis measures.

The infection network marks every opacity, and a tumour is an opacity: on Lung-PET-CT-Dx A0001 an
adenocarcinoma of the left upper lobe was 88 mL of "infection" (1.6 % of the lungs, the scan's whole burden
but 0.4 %). A thoracic radiologist reads it as a mass, reports it separately and does not score it as
pneumonia. The rule keeps the scan honest both ways: the mass is taken out of the infection burden, the
severity scores and the lesion list, and it is listed in report.json (``infection_gating.mass_like_lesions``),
named in the assessment's reasons and in the report's notes, so it is never hidden.

A connected lesion is mass-like when its largest **solid core** (in-plane 3x3 mean HU above ``core_hu``,
26-connected) holds at least ``min_core_ml`` and ``min_core_share`` of the lesion, the core is **compact**
(the shortest / longest axis of its moment ellipsoid at least ``min_axis_ratio``, and it fills at least
``min_ellipsoid_fill`` of that ellipsoid) and the rest of the lesion is a **narrow rim**: 90 % of it within
``max_rim_mm`` of the core. Pneumonia fails at least one of these: its consolidation is patchy or follows
the lobe's shape (low fill), comes as bands (low axis ratio) or lies in a wide ground-glass halo (wide rim).

Measured (``infection-unet`` MODEL_CARD, gate 1.3.0, lung-attunet 1.2.0): the A0001 tumour core 40-43 mL, core
share 0.45-0.46, axis ratio 0.70-0.76, fill 0.45-0.48, rim 15 mm (both kernels; with lung-attunet 1.3.0: 42-43 mL,
0.46-0.47, 0.77-0.78, 0.51, 15 mm; lung networks that cut more of the tumour out of the lung dropped the fill to
0.39, below the rule); the nodule the LIDC readers marked on
LIDC-IDRI-0001: core 3.8 mL, 0.42, 0.73, 0.93, 4 mm; every RICORD COVID-19 lesion fails, also with every threshold
loosened (the largest: core share 0.32, fill 0.30, rim 52 mm). One tumour and one COVID-19 scan were in view when
these round values were set: a check, not a fit and not an independent test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

#: 26-connectivity: the lesions of the HU gate and the solid cores of this rule
CONNECT_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class MassRule:
    """Parameters of the mass-like lesion rule (see the module docstring)."""

    enabled: bool = True
    core_hu: float = -100.0
    min_core_ml: float = 2.0
    min_core_share: float = 0.4
    min_axis_ratio: float = 0.5
    min_ellipsoid_fill: float = 0.4
    max_rim_mm: float = 20.0

    def as_dict(self) -> dict[str, Any]:
        """The parameters as a plain dictionary (for report.json)."""
        return asdict(self)


def core_shape(core: np.ndarray, spacing_zyx: tuple[float, ...]) -> tuple[float, float, float]:
    """``(axis_ratio, ellipsoid_fill, longest_diameter_mm)`` of a binary core from its second moments.

    The moment ellipsoid of a uniform solid ellipsoid is the ellipsoid itself (semi-axes sqrt(5 * variance));
    ``ellipsoid_fill`` is the core's volume over that ellipsoid's (1 for an ellipsoid, less when lobulated or
    branched)."""
    points = np.argwhere(core) * np.asarray(spacing_zyx, dtype=float)
    if len(points) < 4:
        return 0.0, 0.0, 0.0
    variances = np.clip(np.linalg.eigvalsh(np.cov(points.T)), 0.0, None)
    semi_axes = np.sqrt(5.0 * variances)
    if semi_axes.max() <= 0:
        return 0.0, 0.0, 0.0
    ellipsoid_mm3 = 4.0 / 3.0 * np.pi * float(np.prod(semi_axes))
    core_mm3 = len(points) * float(np.prod(spacing_zyx))
    fill = core_mm3 / ellipsoid_mm3 if ellipsoid_mm3 > 0 else 0.0
    return float(semi_axes.min() / semi_axes.max()), float(fill), float(2.0 * semi_axes.max())


def describe_lesion(
    lesion: np.ndarray, hu: np.ndarray, spacing_zyx: tuple[float, ...], rule: MassRule
) -> dict[str, float] | None:
    """Core share, shape and rim width of one lesion (a crop around it), or None without a core of
    ``min_core_ml``."""
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    smooth = ndimage.uniform_filter(hu.astype(np.float32), size=(1, 3, 3))
    core_lab, n = ndimage.label(lesion & (smooth > rule.core_hu), structure=CONNECT_26)
    if not n:
        return None
    counts = np.bincount(core_lab.ravel(), minlength=n + 1)
    counts[0] = 0
    core = core_lab == int(np.argmax(counts))
    core_ml = float(counts.max()) * voxel_ml
    if core_ml < rule.min_core_ml:
        return None
    axis_ratio, fill, diameter = core_shape(core, spacing_zyx)
    lesion_ml = float(np.count_nonzero(lesion)) * voxel_ml
    description = {
        "volume_ml": lesion_ml,
        "solid_core_ml": core_ml,
        "core_share": core_ml / lesion_ml,
        "axis_ratio": axis_ratio,
        "ellipsoid_fill": fill,
        "core_diameter_mm": diameter,
        "rim_p90_mm": float("inf"),  # measured only for a compact core (the distance map is the costly part)
        "mean_hu": float(np.asarray(hu)[lesion].mean()),
    }
    if compact_core(description, rule):
        rim = lesion & ~core
        rim_mm = 0.0
        if rim.any():
            distance = ndimage.distance_transform_edt(~core, sampling=spacing_zyx)
            rim_mm = float(np.percentile(distance[rim], 90))
        description["rim_p90_mm"] = rim_mm
    return description


def compact_core(description: dict[str, float], rule: MassRule) -> bool:
    """Whether the solid core is large enough a share of the lesion and compact (the rule without the rim)."""
    return (
        description["core_share"] >= rule.min_core_share
        and description["axis_ratio"] >= rule.min_axis_ratio
        and description["ellipsoid_fill"] >= rule.min_ellipsoid_fill
    )


def is_mass_like(description: dict[str, float] | None, rule: MassRule) -> bool:
    """Whether a lesion's description meets every part of the rule."""
    return description is not None and compact_core(description, rule) and description["rim_p90_mm"] <= rule.max_rim_mm


def mass_like_lesions(
    lab: np.ndarray,
    counts: np.ndarray,
    boxes: list[tuple[slice, ...] | None],
    hu: np.ndarray,
    spacing_zyx: tuple[float, ...],
    rule: MassRule,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Per label ``0 .. n`` of ``lab``: True for a mass-like lesion; and their descriptions (with ``label``
    and ``bbox_voxel`` in ``lab``'s grid). ``counts``: voxels per label (``n + 1``; 0 for a removed lesion);
    ``boxes``: ``ndimage.find_objects(lab)`` (the caller's, kept while it removes lesions)."""
    n = len(counts) - 1
    flagged = np.zeros(n + 1, dtype=bool)
    found: list[dict[str, Any]] = []
    if not rule.enabled or not n:
        return flagged, found
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    for label, box in enumerate(boxes[:n], start=1):
        if box is None or not counts[label] or counts[label] * voxel_ml < rule.min_core_ml:
            continue
        description = describe_lesion(lab[box] == label, np.asarray(hu)[box], spacing_zyx, rule)
        if is_mass_like(description, rule):
            flagged[label] = True
            entry: dict[str, Any] = {k: round(v, 3) for k, v in (description or {}).items()}
            entry["label"] = label
            entry["bbox_voxel"] = [[int(s.start) for s in box], [int(s.stop - 1) for s in box]]
            found.append(entry)
    return flagged, found


def mass_note(masses: list[dict[str, Any]]) -> str:
    """The report note naming the mass-like lesions that were not counted as infection."""
    parts = [
        f"{m['lung']} lung, {float(m['volume_ml']):.0f} mL (solid core {float(m['solid_core_ml']):.0f} mL, "
        f"about {float(m['core_diameter_mm']):.0f} mm)"
        for m in masses
    ]
    return (
        "Mass-like lesion(s) not counted as infection: "
        + "; ".join(parts)
        + ". A compact solid lesion is a tumour, a nodule or a lobar consolidation, not the COVID-19 pattern; "
        "review it (report.json infection_gating.mass_like_lesions)."
    )
