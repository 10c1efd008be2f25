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
from CovidCTLib.labels import CONSOLIDATION, GGO, LEFT_LUNG, RIGHT_LUNG
from CovidCTLib.volume import CTVolume

ZONES = ("upper", "middle", "lower")
SIDES = {RIGHT_LUNG: "right", LEFT_LUNG: "left"}
SEVERITY_BINS = (
    "0: no involvement (0 %)",
    "1: < 5 %",
    "2: 5-25 %",
    "3: > 25-50 %",
    "4: > 50-75 %",
    "5: > 75 %",
)


def severity_from_percent(percent: float) -> int:
    """Zone severity score 0-5 from the infected percentage of the zone (see module docstring)."""
    if percent <= 0.0:
        return 0
    if percent < 5.0:
        return 1
    if percent <= 25.0:
        return 2
    if percent <= 50.0:
        return 3
    if percent <= 75.0:
        return 4
    return 5


def _superior_coordinate(image: sitk.Image, flat_index: np.ndarray, shape: tuple[int, ...],
                         offset: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
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
    """Volumes, zones, severity score and lesion list (the numeric part of report.json).

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
    box = _bounding_box(lungs)
    offset = tuple(b.start for b in box)
    full_lungs = lungs
    lungs, infection = lungs[box], infection[box]
    shape = lungs.shape

    lung_flat = np.flatnonzero(lungs)
    lung_lab = lungs.ravel()[lung_flat].astype(np.int64)
    inf_lab = infection.ravel()[lung_flat].astype(np.int64)
    inf_lab[(inf_lab != GGO) & (inf_lab != CONSOLIDATION)] = 0

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
    code = ((lung_lab - 1) * 3 + zone) * 3 + inf_lab
    counts = np.bincount(code[valid], minlength=18).reshape(2, 3, 3).astype(float) * voxel_ml

    lung_ml = counts.sum(axis=(1, 2))  # per side
    ggo_ml = counts[:, :, GGO].sum(axis=1)
    con_ml = counts[:, :, CONSOLIDATION].sum(axis=1)
    inf_ml = ggo_ml + con_ml
    total_lung = float(lung_ml.sum())
    total_inf = float(inf_ml.sum())

    zones = []
    for s_idx, side in enumerate((RIGHT_LUNG, LEFT_LUNG)):
        for z_idx, zone_name in enumerate(ZONES):
            c = counts[s_idx, z_idx]
            z_lung = float(c.sum())
            z_inf = float(c[GGO] + c[CONSOLIDATION])
            percent = _pct(z_inf, z_lung)
            zones.append({
                "lung": SIDES[side],
                "zone": zone_name,
                "lung_ml": z_lung,
                "infection_ml": z_inf,
                "ggo_ml": float(c[GGO]),
                "consolidation_ml": float(c[CONSOLIDATION]),
                "percent": percent,
                "severity": severity_from_percent(percent),
            })
    per_zone = {f"{z['lung']}_{z['zone']}": z["severity"] for z in zones}

    return {
        "lungs": {
            "right_ml": float(lung_ml[0]),
            "left_ml": float(lung_ml[1]),
            "total_ml": total_lung,
        },
        "infection": {
            "total_ml": total_inf,
            "ggo_ml": float(ggo_ml.sum()),
            "consolidation_ml": float(con_ml.sum()),
            "percent_of_lungs": _pct(total_inf, total_lung),
            "right_ml": float(inf_ml[0]),
            "left_ml": float(inf_ml[1]),
            "right_percent": _pct(inf_ml[0], lung_ml[0]),
            "left_percent": _pct(inf_ml[1], lung_ml[1]),
            "right_ggo_ml": float(ggo_ml[0]),
            "right_consolidation_ml": float(con_ml[0]),
            "left_ggo_ml": float(ggo_ml[1]),
            "left_consolidation_ml": float(con_ml[1]),
            "ggo_percent_of_lungs": _pct(float(ggo_ml.sum()), total_lung),
            "consolidation_percent_of_lungs": _pct(float(con_ml.sum()), total_lung),
        },
        "zones": zones,
        "severity_score": {
            "total": int(sum(z["severity"] for z in zones)),
            "max": 30,
            "per_zone": per_zone,
            "bins": list(SEVERITY_BINS),
            "scale": "Per zone: 0 none, 1 < 5 %, 2 5-25 %, 3 26-50 %, 4 51-75 %, 5 > 75 % of the zone infected.",
            "description": (
                "Sum over 6 zones (right/left lung x upper/middle/lower thirds of each lung's cranio-caudal "
                "extent) of a 0-5 score of the infected percentage of the zone."
            ),
        },
        "lesions": _lesions(ct, lungs, infection, lung_flat, zone, min_lesion_ml, box) if full_lungs.any() else [],
        "voxel_volume_ml": voxel_ml,
    }


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of the non-zero voxels (the whole array when empty)."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, mask.shape[axis]))
    return tuple(box)  # type: ignore[return-value]


def _lesions(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    lung_flat: np.ndarray,
    lung_zone: np.ndarray,
    min_lesion_ml: float,
    box: tuple[slice, slice, slice],
) -> list[dict[str, Any]]:
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
        kind = "GGO" if frac_con < 0.10 else ("consolidation" if frac_con > 0.90 else "mixed")
        centre = (float(cz[k]), float(cy[k]), float(cx[k]))
        bb = boxes[k - 1]
        lesions.append({
            "type": kind,
            "volume_ml": float(count[k] * voxel_ml),
            "consolidation_fraction": frac_con,
            "mean_hu": float(hu_sum[k] / count[k]),
            "centroid_voxel": list(centre),
            "centroid_mm": list(ct.image.TransformContinuousIndexToPhysicalPoint(centre[::-1])),
            "bbox_voxel": [[b.start + o.start for b, o in zip(bb, box, strict=True)],
                           [b.stop - 1 + o.start for b, o in zip(bb, box, strict=True)]],
            "lung": SIDES.get(int(np.argmax(side_votes[k, 1:]) + 1), "right"),
            "zone": ZONES[int(np.argmax(zone_votes[k]))],
        })
    lesions.sort(key=lambda d: -d["volume_ml"])
    for i, lesion in enumerate(lesions, start=1):
        lesion["id"] = i
    return [{"id": d.pop("id"), **d} for d in lesions]
