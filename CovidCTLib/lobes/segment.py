"""Lobe segmentation of a HU chest CT from its lung mask: fissure detection + anatomical priors.

Entry points: :func:`segment_lobes` (labelmap only) and :func:`segment_lobes_detailed` (with diagnostics).

Method (on a canonical grid of about 1.4 x 1.5 x 1.5 mm, block means of the CT, at most 10 M voxels; see
:mod:`.frame`, :mod:`.fissures`, :mod:`.surfaces`):

1. Per lung, prior fissure surfaces: a tilted plane for the oblique fissure and a level plane for the right
   horizontal fissure, placed so that the lobes take published volume shares.
2. Hessian sheet enhancement in the lung interior (at least ``pleura_margin_mm`` from the lung surface);
   responses next to vessels (bright voxels) and small isolated pieces are removed (fissures are vessel-free
   surfaces).
3. Each fissure surface is refined to the detected fissure points (robust fit + local detail, falling back
   to the prior where no fissure is seen): the oblique fissure first, then the horizontal one above it.
4. Labels: right lung: RLL below the oblique surface, RML between the oblique and horizontal surfaces, RUL
   above both; left lung: LLL below, LUL above. The labels are computed at full resolution by comparing
   each lung voxel's height with the (interpolated) surfaces, so the lobes partition each lung mask exactly.

Limits: the fissures are height maps over the axial plane (one crossing per cranio-caudal line); the airway
tree is not used yet (vessels only to suppress false fissure responses); the left lingula is part of LUL;
with slices thicker than about 3 mm, or a lobe consolidated along its fissure, the fissure is mostly not seen
and the prior (lobe shares of a normal adult) decides (``fissures[...]["coverage"]`` says how much of each
fissure was seen); an accessory fissure or an absent one is not modelled; a lung mask that misses a
consolidated region shifts the shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.errors import InputError
from CovidCTLib.imaging.grid import block_mean, bounding_box
from CovidCTLib.labels import LEFT_LUNG, LLL, LUL, RIGHT_LUNG, RLL, RML, RUL
from CovidCTLib.lobes.fissures import sheet_response
from CovidCTLib.lobes.frame import Frame, coarse_factors, coarse_labels
from CovidCTLib.lobes.surfaces import (
    PRIOR_SHARES,
    LungBox,
    Surface,
    prior_horizontal,
    prior_oblique,
    refine_surface,
)
from CovidCTLib.progress import Reporter
from CovidCTLib.volume import CTVolume

METHOD_VERSION = "lobes-fissure-prior 0.1.0"


@dataclass
class LobeParameters:
    """Settings of the lobe segmentation (defaults suit adult chest CT)."""

    coarse_spacing_mm: tuple[float, float, float] = (1.4, 1.5, 1.5)
    max_coarse_voxels: int = 10_000_000
    sigma_mm: float = 1.5
    pleura_margin_mm: float = 4.0
    threshold: float = 8.0
    keep_debug: bool = False  # keep the coarse arrays (response, surfaces) in ``LobeSegmentation.debug``


@dataclass
class LobeSegmentation:
    """The lobe labelmap (image order, uint8) and per-fissure diagnostics."""

    lobes: np.ndarray
    fissures: dict[str, dict[str, Any]] = field(default_factory=dict)
    method: str = METHOD_VERSION
    debug: dict[str, Any] = field(default_factory=dict)


def _surface_info(s: Surface) -> dict[str, Any]:
    return {"coverage": round(s.coverage, 3), "points": s.points}


def _label_side(
    lung_c: np.ndarray,
    factors: tuple[int, ...],
    box: tuple[slice, ...],
    surfaces: list[np.ndarray],
    labels: tuple[int, ...],
) -> np.ndarray:
    """Full-resolution labels of one lung (canonical view) from coarse height maps.

    ``surfaces`` (coarse z index) are compared with each fine voxel's height; ``labels`` are
    (below the first, between first and second, above both) or (below, above) for one surface.
    """
    out = np.zeros(lung_c.shape, dtype=np.uint8)
    sub = lung_c[box]
    if not sub.any():
        return out
    fz = factors[0]
    zf = np.arange(box[0].start, box[0].stop, dtype=np.float32)
    zc = ((zf - (fz - 1) / 2.0) / fz)[:, None, None]  # fine height in coarse index units
    pf = np.arange(box[1].start, box[1].stop)
    lf = np.arange(box[2].start, box[2].stop)
    pc = (pf - (factors[1] - 1) / 2.0) / factors[1]
    lc = (lf - (factors[2] - 1) / 2.0) / factors[2]
    grid = np.meshgrid(pc, lc, indexing="ij")
    fine_heights = [
        ndimage.map_coordinates(h.astype(np.float32), grid, order=1, mode="nearest")[None] for h in surfaces
    ]
    lab8 = [np.uint8(v) for v in labels]  # uint8 scalars keep every full-resolution temporary at one byte
    below_first = zc < fine_heights[0]
    if len(surfaces) == 1:
        lab = np.where(below_first, lab8[0], lab8[1])
    else:
        below_second = zc < fine_heights[1]
        lab = np.where(below_first, lab8[0], np.where(below_second, lab8[1], lab8[2]))
        del below_second
    del below_first
    out[box] = np.where(sub, lab, np.uint8(0))
    return out


def segment_lobes_detailed(
    ct: CTVolume, lungs: np.ndarray, reporter: Reporter | None = None, params: LobeParameters | None = None
) -> LobeSegmentation:
    """Segment the five lobes; ``lungs`` is the lung labelmap (1 right, 2 left) on the CT's grid."""
    params = params or LobeParameters()
    if ct.intensity != "HU" or not ct.is_3d:
        raise InputError(f"{ct.source}: the lobe segmentation needs a 3-D CT volume in Hounsfield units.")
    lungs = np.asarray(lungs)
    if lungs.shape != ct.shape:
        raise InputError(f"lung labelmap shape {lungs.shape} does not match the CT {ct.shape} (z, y, x)")
    frame = Frame.of(ct.image)
    hu_c = frame.to(sitk.GetArrayViewFromImage(ct.image))
    lungs_c = frame.to(lungs)
    spacing_c = frame.spacing(ct.spacing_zyx)
    out_c = np.zeros(lungs_c.shape, dtype=np.uint8)
    result = LobeSegmentation(lobes=np.zeros(lungs.shape, dtype=np.uint8))
    if not lungs_c.any():
        return result
    step = "lobes"
    if reporter:
        reporter.update(step, 0.0, "Lobes: enhancing the fissures")
    fine_box = bounding_box(lungs_c > 0)
    factors = coarse_factors(spacing_c, lungs_c[fine_box].shape, params.coarse_spacing_mm, params.max_coarse_voxels)
    rel_lungs = np.asarray(lungs_c[fine_box])  # coarse voxel k covers box-relative fine k*f .. k*f+f-1
    hu_lr = block_mean(np.asarray(hu_c[fine_box]), factors)
    lungs_lr = coarse_labels(rel_lungs, factors)
    sp_lr = tuple(s * f for s, f in zip(spacing_c, factors, strict=True))
    steps = max(1, int(round(params.pleura_margin_mm / min(sp_lr))))
    interior = ndimage.binary_erosion(lungs_lr > 0, iterations=steps)
    resp = sheet_response(hu_lr, interior, sp_lr, sigma_mm=params.sigma_mm)
    if params.keep_debug:
        result.debug.update(response=resp, factors=factors, box=fine_box, hu=hu_lr, lungs=lungs_lr, frame=frame)
    if reporter:
        reporter.update(step, 0.5, "Lobes: fitting the fissure surfaces")
    sides = ((RIGHT_LUNG, "right", (RLL, RML, RUL)), (LEFT_LUNG, "left", (LLL, LUL)))
    view = out_c[fine_box]
    for value, name, labels in sides:
        fine_side = rel_lungs == value
        if not fine_side.any():
            continue
        lung_full = lungs_lr == value
        if np.count_nonzero(lung_full) < 50:
            view[fine_side] = labels[-1]
            result.fissures[f"{name}_oblique"] = {"coverage": 0.0, "points": 0, "note": "lung too small"}
            continue
        cb = bounding_box(lung_full)
        lung = lung_full[cb]
        box = LungBox.of(lung)
        prior = prior_oblique(lung, box, PRIOR_SHARES[f"{name}_lower"])
        oblique = refine_surface(resp.oblique[cb], lung, prior, sp_lr, threshold=params.threshold)
        result.fissures[f"{name}_oblique"] = _surface_info(oblique)
        heights = [oblique.height]
        if value == RIGHT_LUNG:
            upper = lung & (np.arange(lung.shape[0])[:, None, None] > oblique.height[None] + 1.0)
            prior_h = prior_horizontal(lung, oblique.height, PRIOR_SHARES["right_middle"])
            horizontal = refine_surface(
                resp.horizontal[cb], upper, prior_h, sp_lr, bands_mm=(25.0, 15.0, 8.0), threshold=params.threshold
            )
            result.fissures["right_horizontal"] = _surface_info(horizontal)
            heights.append(horizontal.height)
        # back to the whole coarse (p, l) plane and coarse z index
        pads = ((cb[1].start, lungs_lr.shape[1] - cb[1].stop), (cb[2].start, lungs_lr.shape[2] - cb[2].stop))
        heights = [np.pad(h + cb[0].start, pads, mode="edge") for h in heights]
        if params.keep_debug:
            result.debug[f"{name}_heights"] = heights
            result.debug[f"{name}_prior"] = np.pad(prior + cb[0].start, pads, mode="edge")
        lab = _label_side(fine_side, factors, bounding_box(fine_side), heights, labels)
        view[fine_side] = lab[fine_side]
    result.lobes = frame.back(out_c)
    if reporter:
        reporter.update(step, 1.0, "Lobes: done")
    return result


def segment_lobes(ct: CTVolume, lungs: np.ndarray, reporter: Reporter | None = None) -> np.ndarray:
    """Lobe labelmap, uint8 ``(z, y, x)`` on the CT's grid: 1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL.

    Every right-lung voxel of ``lungs`` gets 1-3 and every left-lung voxel 4-5; nothing else is labelled.
    """
    return segment_lobes_detailed(ct, lungs, reporter).lobes
