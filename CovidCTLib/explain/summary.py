"""The ``explanation`` section of report.json: top slices, hottest regions and the heat inside the infection.

Conventions (also in the README):

- ``top_slices``: the ``k`` lung slices with the highest calibrated slice score; ``index`` is the CT's slice
  index (ITK ``k``, the first axis of the ``(z, y, x)`` arrays), ``z_mm`` the LPS z of the slice's centre.
- ``hot_regions``: connected regions (3-D, 26-connected) where the heat is at least :data:`HOT_LEVEL` of its
  maximum, largest integrated heat first. ``lps_min_mm`` / ``lps_max_mm`` are the corners of the
  axis-aligned box in patient LPS millimetres that encloses the region's voxels (whole voxels, so an
  oblique grid gives the enclosing box); ``center_lps_mm`` and ``size_mm`` are that box's centre and edge
  lengths; ``index_min`` / ``index_max`` the inclusive ITK voxel indices ``(i, j, k)``; ``peak_lps_mm`` the
  centre of the hottest voxel.
- ``heat_in_infection``: sum of heat inside the segmented infection / sum of heat in the lungs. With heat
  spread evenly it would equal ``infection_share_of_lung``; ``heat_enrichment`` is their ratio (> 1: the
  heat concentrates on the segmented lesions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.models.runtime.gradcam import CAM_STAGE

#: number of top slices reported by default (``--top-slices``)
DEFAULT_TOP_K = 5
#: a voxel belongs to a hot region when its heat is at least this share of the maximum
HOT_LEVEL = 0.5
#: at most this many hot regions are reported
MAX_REGIONS = 3
METHOD = (
    f"Grad-CAM (Selvaraju et al. 2017) of the slice classifier's COVID logit on the output of EfficientNet-b0 "
    f"block stage {CAM_STAGE} (stride 16), computed in the classification's own forward pass, averaged "
    "with the left-right flip like the score, mapped back from each lung crop into its slice, restricted "
    "to the lungs and scaled to 0..1 by the scan's maximum"
)
#: the method of the 2.x classifier (segmentation-feature head): Grad-CAM on its infection network
METHOD_SEG_FEATURES = (
    "Grad-CAM (Selvaraju et al. 2017) of the slice classifier's COVID logit on the last decoder map of its "
    "infection network (80 x 80 over each slice's infection crop: the lung box with a 10 % margin), computed in "
    "the classification's own forward pass, mapped back from each crop into its slice, restricted to the lungs "
    "and scaled to 0..1 by the scan's maximum"
)
LIMITS_SEG_FEATURES = (
    "The map shows where the network's evidence for its COVID score lies, not where disease is: it is not a "
    "segmentation and not a diagnosis. It is relative (0..1 per scan, so a low-probability scan also has a "
    "hottest region), positive evidence only (ReLU), weighted by the gradient averaged over the crop, and "
    "computed per axial slice on the slices the classifier scored. The head also uses the lung network's "
    "features of the whole slice, which the map does not show. Grad-CAM can highlight image features unrelated "
    "to pathology (borders, vessels, the crop edge)."
)
LIMITS = (
    "The map shows where the network's evidence for its COVID score lies, not where disease is: it is not a "
    "segmentation and not a diagnosis. It is coarse (a 6 x 6 grid over each slice's lung box, about 1/6 of the "
    "lung width per cell, smoothed by bilinear interpolation), relative (0..1 per scan, so a low-probability "
    "scan also has a hottest region), positive evidence only (ReLU), and computed per axial slice on the "
    "slices the classifier scored. Grad-CAM can highlight image features unrelated to pathology (borders, "
    "vessels, the crop edge)."
)


@dataclass
class TopSlice:
    """One of the slices that drive the score."""

    index: int
    z_mm: float
    score: float
    heat_max: float


@dataclass
class HotRegion:
    """One hottest region (see the module docstring for the conventions)."""

    rank: int
    lps_min_mm: list[float]
    lps_max_mm: list[float]
    center_lps_mm: list[float]
    size_mm: list[float]
    index_min: list[int]
    index_max: list[int]
    peak_lps_mm: list[float]
    peak_heat: float
    volume_ml: float
    heat_share: float  # share of the scan's total heat inside the region
    heat_in_infection: float | None  # share of the region's heat inside the infection


@dataclass
class Explanation:
    """The ``explanation`` section of report.json."""

    top_slices: list[TopSlice]
    hot_regions: list[HotRegion]
    heat_in_infection: float | None
    infection_share_of_lung: float
    heat_enrichment: float | None
    n_slices: int
    top_k: int
    hot_level: float = HOT_LEVEL
    method: str = METHOD
    limits: str = LIMITS
    heatmap_file: str = "covid_heatmap.nii.gz"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def slice_z_mm(image: sitk.Image, k: int) -> float:
    """LPS z (mm) of the centre of slice ``k``."""
    size = image.GetSize()
    return float(image.TransformContinuousIndexToPhysicalPoint(((size[0] - 1) / 2, (size[1] - 1) / 2, float(k)))[2])


def top_slices(image: sitk.Image, heat: np.ndarray, slice_scores: dict[int, float], k: int) -> list[TopSlice]:
    """The ``k`` slices with the highest score (ties: lower index first)."""
    ranked = sorted(slice_scores.items(), key=lambda item: (-item[1], item[0]))[: max(0, k)]
    return [
        TopSlice(int(z), round(slice_z_mm(image, z), 2), round(float(p), 4), round(float(heat[z].max()), 4))
        for z, p in ranked
    ]


def _lps_box(image: sitk.Image, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS box enclosing the voxels ``lo..hi`` (inclusive ITK indices; whole voxels)."""
    corners = [
        image.TransformContinuousIndexToPhysicalPoint(
            tuple(
                float(v)
                for v in ((lo[0] - 0.5, hi[0] + 0.5)[a], (lo[1] - 0.5, hi[1] + 0.5)[b], (lo[2] - 0.5, hi[2] + 0.5)[c])
            )
        )
        for a in (0, 1)
        for b in (0, 1)
        for c in (0, 1)
    ]
    pts = np.asarray(corners)
    return pts.min(axis=0), pts.max(axis=0)


def _round(values: Any, digits: int = 2) -> list[float]:
    return [round(float(v), digits) for v in values]


def _peak(heat: np.ndarray, labels: np.ndarray, label: int, box: tuple[slice, ...]) -> tuple[int, int, int]:
    """(z, y, x) of the hottest voxel of region ``label`` (searched inside its bounding box only)."""
    sub = np.where(labels[box] == label, heat[box], -1.0)
    local = np.unravel_index(int(np.argmax(sub)), sub.shape)
    return tuple(int(b.start + v) for b, v in zip(box, local, strict=True))  # type: ignore[return-value]


def hot_regions(
    image: sitk.Image,
    heat: np.ndarray,
    infection: np.ndarray,
    voxel_ml: float,
    level: float = HOT_LEVEL,
    limit: int = MAX_REGIONS,
) -> list[HotRegion]:
    """The ``limit`` connected regions of heat ``>= level`` with the most integrated heat."""
    total = float(heat.sum())
    if total <= 0:
        return []
    labels, n = ndimage.label(heat >= level, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return []
    hot = labels > 0
    ids, values, lesion = labels[hot], heat[hot], infection[hot] > 0
    sums = np.bincount(ids, weights=values, minlength=n + 1)[1:]
    inside = np.bincount(ids[lesion], weights=values[lesion], minlength=n + 1)[1:]
    counts = np.bincount(ids, minlength=n + 1)[1:]
    slices = ndimage.find_objects(labels)
    regions: list[HotRegion] = []
    for rank, i in enumerate(np.argsort(-sums, kind="stable")[:limit], start=1):
        zs, ys, xs = slices[i]
        lo = np.array([xs.start, ys.start, zs.start])  # ITK (i, j, k)
        hi = np.array([xs.stop - 1, ys.stop - 1, zs.stop - 1])
        box_min, box_max = _lps_box(image, lo, hi)
        pz, py, px = _peak(heat, labels, i + 1, slices[i])
        regions.append(
            HotRegion(
                rank=rank,
                lps_min_mm=_round(box_min),
                lps_max_mm=_round(box_max),
                center_lps_mm=_round((box_min + box_max) / 2),
                size_mm=_round(box_max - box_min),
                index_min=[int(v) for v in lo],
                index_max=[int(v) for v in hi],
                peak_lps_mm=_round(image.TransformIndexToPhysicalPoint((int(px), int(py), int(pz)))),
                peak_heat=round(float(heat[pz, py, px]), 4),
                volume_ml=round(float(counts[i]) * voxel_ml, 2),
                heat_share=round(float(sums[i]) / total, 4),
                heat_in_infection=round(float(inside[i] / sums[i]), 4) if sums[i] > 0 else None,
            )
        )
    return regions


def heat_in_mask(heat: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the heat inside ``mask`` (None when there is no heat at all)."""
    total = float(heat.sum(dtype=np.float64))
    if total <= 0:
        return None
    return float(heat[mask].sum(dtype=np.float64)) / total


def explain_scan(
    image: sitk.Image,
    lungs: np.ndarray,
    infection: np.ndarray,
    heat: np.ndarray,
    slice_scores: dict[int, float],
    voxel_ml: float,
    k: int = DEFAULT_TOP_K,
    seg_features: bool = False,
) -> Explanation:
    """The explanation of one scan from its heat volume, segmentation and slice scores.

    ``seg_features``: the maps come from the 2.x segmentation-feature classifier (its method and limits)."""
    lung, lesion = np.asarray(lungs) > 0, np.asarray(infection) > 0
    share = float(lesion.sum()) / max(1, int(lung.sum()))
    inside = heat_in_mask(heat, lesion)
    notes: list[str] = []
    if inside is None:
        notes.append("The Grad-CAM map is zero everywhere: no region adds positive evidence for COVID.")
    enrichment = None if inside is None or share == 0 else round(inside / share, 3)
    return Explanation(
        top_slices=top_slices(image, heat, slice_scores, k),
        hot_regions=hot_regions(image, heat, infection, voxel_ml),
        heat_in_infection=None if inside is None else round(inside, 4),
        infection_share_of_lung=round(share, 4),
        heat_enrichment=enrichment,
        n_slices=len(slice_scores),
        top_k=int(k),
        method=METHOD_SEG_FEATURES if seg_features else METHOD,
        limits=LIMITS_SEG_FEATURES if seg_features else LIMITS,
        notes=notes,
    )
