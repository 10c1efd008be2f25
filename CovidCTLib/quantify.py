"""Numbers from the masks: lung and infection volumes, six lung zones, CT severity score, lesion list.

Definitions (also written into the report):

* Volumes are voxel counts times the voxel volume (mL). Infection is counted only inside the lungs.
* Zones: each lung is cut into thirds of its own cranio-caudal extent *in patient space* (the physical
  superior-inferior coordinate from the image direction, so flipped or oblique volumes are handled):
  upper, middle, lower.
* Severity score per zone (0-5) from the percentage of the zone's lung volume that is infected:
  0 = none (0 %), 1 = < 5 %, 2 = 5-25 %, 3 = > 25-50 %, 4 = > 50-75 %, 5 = > 75 %.
  The total (0-30) is the sum over the six zones (a 6-zone variant of the Chung/Pan CT severity scores).
* Lesions: 26-connected components of the infection mask of at least ``min_lesion_ml``; type by the share
  of consolidation voxels: < 10 % "GGO", > 90 % "consolidation", otherwise "mixed". Lung and zone of a
  lesion are those holding most of its voxels. Coordinates: ``centroid_voxel`` and ``bbox_voxel`` are array
  indices in ``(z, y, x)`` order (bbox inclusive), ``centroid_mm`` is the physical LPS point ``(x, y, z)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.errors import InputError
from CovidCTLib.imaging.grid import bounding_box
from CovidCTLib.labels import CONSOLIDATION, INFECTION_CLASSES, LEFT_LUNG, RIGHT_LUNG, lesion_type
from CovidCTLib.quantities import Lesion, Quantification, SeverityScore, ZoneStats
from CovidCTLib.severity import SEVERITY_SCALE
from CovidCTLib.volume import CTVolume

ZONES = ("upper", "middle", "lower")
SIDES = {RIGHT_LUNG: "right", LEFT_LUNG: "left"}
SEVERITY_BINS = tuple(SEVERITY_SCALE.bins())


def severity_from_percent(percent: float) -> int:
    """Zone severity score 0-5 from the infected percentage of the zone (:data:`SEVERITY_SCALE`)."""
    return SEVERITY_SCALE.score(percent)


def _superior_coordinate(
    image: sitk.Image, flat_index: np.ndarray, shape: tuple[int, ...], offset: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """Physical superior (LPS z) coordinate in mm of flat ``(z, y, x)`` indices into a box at ``offset``."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    row = direction[2] * spacing  # d(z_phys) / d(i, j, k)
    k, j, i = np.unravel_index(flat_index, shape)
    k, j, i = k + offset[0], j + offset[1], i + offset[2]
    coord = np.float64(image.GetOrigin()[2])
    out = np.full(flat_index.shape, coord, dtype=np.float64)
    for axis_coef, idx in ((row[0], i), (row[1], j), (row[2], k)):
        if axis_coef != 0.0:
            out += axis_coef * idx
    return out


def _pct(part: float, whole: float) -> float:
    return float(100.0 * part / whole) if whole > 0 else 0.0


def quantify(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    min_lesion_ml: float = 0.05,
) -> dict[str, Any]:
    """Volumes, zones, severity score and lesion list: the numeric part of report.json
    (:meth:`Quantification.to_dict` of :func:`quantify_scan`)."""
    return quantify_scan(ct, lungs, infection, min_lesion_ml).to_dict()


def quantify_scan(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    min_lesion_ml: float = 0.05,
) -> Quantification:
    """Volumes, zones, severity score and lesion list as a :class:`Quantification`.

    Args:
        ct: the CT (geometry and HU values).
        lungs: uint8 ``(z, y, x)`` 1 right / 2 left lung.
        infection: uint8 ``(z, y, x)`` 1 ground glass / 2 consolidation (voxels outside the lungs are ignored).
        min_lesion_ml: smallest connected component listed as a lesion.
    """
    lungs = np.asarray(lungs)
    infection = np.asarray(infection)
    if lungs.shape != ct.shape or infection.shape != ct.shape:
        raise InputError(
            f"mask shapes {lungs.shape} / {infection.shape} do not match the CT {ct.shape} (z, y, x); "
            "masks must be computed on this CT."
        )
    voxel_ml = ct.voxel_volume_ml
    # work inside the bounding box of the lungs (infection outside the lungs is ignored anyway)
    box = bounding_box(lungs) or tuple(slice(0, n) for n in np.shape(lungs))  # the whole array when empty
    offset = tuple(b.start for b in box)
    full_lungs = lungs
    lungs, infection = lungs[box], infection[box]
    shape = lungs.shape

    lung_flat = np.flatnonzero(lungs)
    lung_lab = lungs.ravel()[lung_flat].astype(np.int64)
    inf_lab = infection.ravel()[lung_flat].astype(np.int64)
    n_class = max(c.label for c in INFECTION_CLASSES) + 1
    inf_lab[(inf_lab < 0) | (inf_lab >= n_class)] = 0

    # zone (0 upper, 1 middle, 2 lower) of every lung voxel, per lung, in patient space
    zone = np.zeros(lung_flat.shape, dtype=np.int64)
    sup = _superior_coordinate(ct.image, lung_flat, shape, offset) if lung_flat.size else np.zeros(0)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        sel = lung_lab == side
        if not sel.any():
            continue
        top, bottom = sup[sel].max(), sup[sel].min()
        extent = max(top - bottom, 1e-6)
        zone[sel] = np.minimum(((top - sup[sel]) / extent * 3.0).astype(np.int64), 2)

    # one bincount for every (side, zone, class) combination
    valid = (lung_lab == RIGHT_LUNG) | (lung_lab == LEFT_LUNG)
    code = ((lung_lab - 1) * 3 + zone) * n_class + inf_lab
    counts = np.bincount(code[valid], minlength=6 * n_class).reshape(2, 3, n_class).astype(float) * voxel_ml

    sides = ((0, RIGHT_LUNG), (1, LEFT_LUNG))
    zones = []
    for s_idx, side in sides:
        for z_idx, zone_name in enumerate(ZONES):
            c = counts[s_idx, z_idx]
            class_ml = {k.key: float(c[k.label]) for k in INFECTION_CLASSES}
            percent = _pct(sum(class_ml.values()), float(c.sum()))
            zones.append(
                ZoneStats(SIDES[side], zone_name, float(c.sum()), class_ml, percent, severity_from_percent(percent))
            )
    return Quantification(
        lung_ml={SIDES[side]: float(counts[s_idx].sum()) for s_idx, side in sides},
        class_ml={
            SIDES[side]: {k.key: float(counts[s_idx, :, k.label].sum()) for k in INFECTION_CLASSES}
            for s_idx, side in sides
        },
        zones=zones,
        severity=SeverityScore({f"{z.lung}_{z.zone}": z.severity for z in zones}),
        lesions=_lesions(ct, lungs, infection, lung_flat, zone, min_lesion_ml, box) if full_lungs.any() else [],
        voxel_volume_ml=voxel_ml,
    )


def _lesions(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    lung_flat: np.ndarray,
    lung_zone: np.ndarray,
    min_lesion_ml: float,
    box: tuple[slice, slice, slice],
) -> list[Lesion]:
    """Connected infection components with type, size, density, position, lung and zone (masks cut to ``box``)."""
    inf = (infection > 0) & (lungs > 0)
    if not inf.any():
        return []
    lab, n = ndimage.label(inf, structure=np.ones((3, 3, 3), dtype=bool))
    voxel_ml = ct.voxel_volume_ml
    flat = np.flatnonzero(lab)
    ids = lab.ravel()[flat]
    count = np.bincount(ids, minlength=n + 1).astype(float)
    keep = count * voxel_ml >= min_lesion_ml
    keep[0] = False
    if not keep.any():
        return []
    cls = infection.ravel()[flat]
    n_con = np.bincount(ids, weights=(cls == CONSOLIDATION), minlength=n + 1)
    hu = sitk.GetArrayViewFromImage(ct.image)[box].ravel()[flat].astype(np.float64)
    hu_sum = np.bincount(ids, weights=hu, minlength=n + 1)
    zz, yy, xx = np.unravel_index(flat, lab.shape)
    zz, yy, xx = zz + box[0].start, yy + box[1].start, xx + box[2].start
    cz = np.bincount(ids, weights=zz, minlength=n + 1) / np.maximum(count, 1)
    cy = np.bincount(ids, weights=yy, minlength=n + 1) / np.maximum(count, 1)
    cx = np.bincount(ids, weights=xx, minlength=n + 1) / np.maximum(count, 1)
    side = lungs.ravel()[flat].astype(np.int64)
    side_votes = np.bincount(ids * 3 + np.clip(side, 0, 2), minlength=(n + 1) * 3).reshape(n + 1, 3)
    # zone of each infection voxel: look it up among the lung voxels (both sorted flat indices)
    pos = np.searchsorted(lung_flat, flat)
    pos = np.clip(pos, 0, max(lung_flat.size - 1, 0))
    zone = lung_zone[pos] if lung_flat.size else np.zeros_like(flat)
    zone_votes = np.bincount(ids * 3 + zone, minlength=(n + 1) * 3).reshape(n + 1, 3)
    boxes = ndimage.find_objects(lab)

    lesions = []
    for k in np.flatnonzero(keep):
        frac_con = float(n_con[k] / count[k])
        centre = (float(cz[k]), float(cy[k]), float(cx[k]))
        bb = boxes[k - 1]
        lesions.append(
            Lesion(
                id=0,
                type=lesion_type(frac_con),
                volume_ml=float(count[k] * voxel_ml),
                consolidation_fraction=frac_con,
                mean_hu=float(hu_sum[k] / count[k]),
                centroid_voxel=list(centre),
                centroid_mm=list(ct.image.TransformContinuousIndexToPhysicalPoint(centre[::-1])),
                bbox_voxel=[
                    [b.start + o.start for b, o in zip(bb, box, strict=True)],
                    [b.stop - 1 + o.start for b, o in zip(bb, box, strict=True)],
                ],
                lung=SIDES.get(int(np.argmax(side_votes[k, 1:]) + 1), "right"),
                zone=ZONES[int(np.argmax(zone_votes[k]))],
            )
        )
    lesions.sort(key=lambda lesion: -lesion.volume_ml)
    for i, lesion in enumerate(lesions, start=1):
        lesion.id = i
    return lesions
