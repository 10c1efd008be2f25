"""Airway and hilar landmarks for the anatomical zones: the carina and the inferior-pulmonary-vein level.

Both are found on a canonical coarse grid (:class:`CovidCTLib.lobes.frame.Frame`: slices from foot to head,
about ``grid_mm`` in-plane) of a HU volume, from the CT and the lung mask:

* **Carina**: the trachea is the compact, trachea-sized air region near the body midline below the lung
  apices (not lung); it is followed slice by slice towards the feet (each slice: the air regions overlapping
  the airway of the slice above, at most 2.5 x the trachea's area; where an airway touches the lung only its
  lumen below -950 HU). The carina is the last slice above the first one where the airway has split into
  two branches (each at least ``min_branch_mm2``) that stay split over ``min_split_mm``.
* **Inferior pulmonary vein (IPV) level**, a measurable proxy: the inferior pulmonary veins are the lowest
  large vessels of the hilum, running from each lung's medial surface into the left atrium. Per lung and
  slice, the *hilar vessel area* is the soft tissue (above -300 HU) at least ``vessel_radius_mm`` away from
  aerated lung (so thick: a vessel of at least twice that diameter), inside the lung's filled outline and
  within ``medial_band_mm`` of the mediastinum. The hilar run is the stretch of slices, starting within
  ``start_window_mm`` below the carina and allowing gaps of at most ``max_gap_mm``, where that area is at
  least ``min_vessel_mm2``; its lowest slice is the lung's IPV level, and the IPV level is the mean of the
  lungs that have one.

Positions are reported as the physical superior coordinate (LPS z, mm) of the slice's centre point.
Research software, not a diagnosis; the landmarks are heuristics, not validated against expert marks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.imaging.airway import continue_airway
from CovidCTLib.labels import LEFT_LUNG, RIGHT_LUNG
from CovidCTLib.lobes.frame import Frame
from CovidCTLib.volume import CTVolume

_STRUCT_2D = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class LandmarkParameters:
    """Settings of the landmark search (defaults for adult chest CT)."""

    grid_mm: float = 1.5
    air_hu: float = -850.0
    lumen_hu: float = -950.0
    trachea_area_mm2: tuple[float, float] = (60.0, 900.0)
    midline_fraction: float = 0.12  # trachea centre within this share of the body width of the midline
    min_branch_mm2: float = 8.0
    min_split_mm: float = 4.0
    min_lobar_mm2: float = 15.0
    min_lobar_drop_mm: float = 25.0
    max_lobar_drop_mm: float = 90.0


@dataclass
class Landmarks:
    """What the search found: physical z (mm) of the carina and IPV level, or None, with notes."""

    carina_z_mm: float | None = None
    ipv_z_mm: float | None = None
    ipv_z_mm_per_lung: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report.json ``landmarks`` block."""
        return {
            "carina_z_mm": None if self.carina_z_mm is None else round(self.carina_z_mm, 1),
            "ipv_z_mm": None if self.ipv_z_mm is None else round(self.ipv_z_mm, 1),
            "ipv_z_mm_per_lung": {k: None if v is None else round(v, 1) for k, v in self.ipv_z_mm_per_lung.items()},
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _Grid:
    hu: np.ndarray  # canonical coarse HU (s, p, l), s increasing towards the head
    lungs: np.ndarray  # canonical coarse lung labels
    spacing: tuple[float, float, float]  # mm along (s, p, l)
    factors: tuple[int, int, int]
    frame: Frame


def _in_plane_mean(canon: np.ndarray, f: int, dtype=np.float32) -> np.ndarray:
    """Mean over ``f x f`` in-plane blocks of a canonical array (edge blocks: the voxels they have), by
    summing ``f * f`` strided views (much faster than a reshape-mean of a transposed view)."""
    ns, ny, nx = canon.shape
    cy, cx = -(-ny // f), -(-nx // f)
    total = np.zeros((ns, cy, cx), dtype=dtype)
    count = np.zeros((1, cy, cx), dtype=dtype)
    for dy in range(f):
        for dx in range(f):
            part = canon[:, dy::f, dx::f]
            total[:, : part.shape[1], : part.shape[2]] += part
            count[:, : part.shape[1], : part.shape[2]] += 1
    return total / count


def _grid(ct: CTVolume, lungs: np.ndarray, params: LandmarkParameters) -> _Grid:
    frame = Frame.of(ct.image)
    sp = frame.spacing(ct.spacing_zyx)
    f = max(1, int(round(params.grid_mm / max(min(sp[1], sp[2]), 1e-3))))
    hu_c = _in_plane_mean(frame.to(sitk.GetArrayViewFromImage(ct.image)), f)
    lab = frame.to(np.asarray(lungs))
    right = _in_plane_mean(lab == RIGHT_LUNG, f) >= 0.5
    left = _in_plane_mean(lab == LEFT_LUNG, f) >= 0.5
    lungs_c = np.where(right, RIGHT_LUNG, np.where(left, LEFT_LUNG, 0)).astype(np.uint8)
    return _Grid(hu_c, lungs_c, (sp[0], sp[1] * f, sp[2] * f), (1, f, f), frame)


def _physical_z(ct: CTVolume, grid: _Grid, s_index: float) -> float:
    """Physical superior coordinate (mm) of the centre of canonical coarse slice ``s_index``."""
    centre_c = [s_index, (grid.hu.shape[1] - 1) / 2.0 * grid.factors[1], (grid.hu.shape[2] - 1) / 2.0 * grid.factors[2]]
    # canonical fine index -> image (z, y, x) index
    idx = [0.0, 0.0, 0.0]
    shape = ct.shape
    for canon_axis, (axis, sign) in enumerate(zip(grid.frame.axes, grid.frame.signs, strict=True)):
        v = float(centre_c[canon_axis])
        idx[axis] = v if sign > 0 else (shape[axis] - 1) - v
    point = ct.image.TransformContinuousIndexToPhysicalPoint((float(idx[2]), float(idx[1]), float(idx[0])))
    return float(point[2])


def _inside_air(air: np.ndarray) -> np.ndarray:
    """Air that does not touch the in-plane border of its slice (outside air removed)."""
    out = np.zeros_like(air)
    for s in range(air.shape[0]):
        lab, n = ndimage.label(air[s], structure=_STRUCT_2D)
        if n == 0:
            continue
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        keep = np.ones(n + 1, dtype=bool)
        keep[border] = False
        keep[0] = False
        out[s] = keep[lab]
    return out


def _midline(hu: np.ndarray) -> float:
    profile = (hu > -500).sum(axis=(0, 1)).astype(float)
    if profile.sum() == 0:
        return (hu.shape[2] - 1) / 2.0
    return float((profile * np.arange(profile.size)).sum() / profile.sum())


@dataclass
class _AirwayTrack:
    """Per tracked slice (foot-most last): canonical slice index and the branches' (area mm^2, column)."""

    slices: list[int] = field(default_factory=list)
    branches: list[list[tuple[float, float]]] = field(default_factory=list)
    midline: float = 0.0
    note: str = ""


def track_airway(grid: _Grid, params: LandmarkParameters) -> _AirwayTrack:
    """Follow the trachea and its branches from above the lung apices towards the feet (see module doc)."""
    sp = grid.spacing
    px_mm2 = sp[1] * sp[2]
    track = _AirwayTrack()
    lung_slices = np.flatnonzero(grid.lungs.any(axis=(1, 2)))
    if lung_slices.size == 0:
        track.note = "no lung"
        return track
    top, bottom = int(lung_slices[-1]), int(lung_slices[0])
    air = _inside_air(grid.hu < params.air_hu)
    track.midline = midline = _midline(grid.hu)
    body_width = float(np.count_nonzero((grid.hu > -500).any(axis=(0, 1))))
    lo, hi = params.trachea_area_mm2
    search_end = top - int(0.45 * (top - bottom))
    columns = np.broadcast_to(np.arange(grid.hu.shape[2])[None, :], grid.hu.shape[1:]).ravel()
    prev: np.ndarray | None = None
    areas_tracked: list[float] = []
    for s in range(min(grid.hu.shape[0] - 1, top + int(round(20.0 / sp[0]))), bottom, -1):
        lab, n = ndimage.label(air[s], structure=_STRUCT_2D)
        areas = np.bincount(lab.ravel(), minlength=n + 1)
        if prev is None:
            if s < search_end:
                track.note = "no trachea found near the midline below the lung apices"
                return track
            cx = np.bincount(lab.ravel(), weights=columns, minlength=n + 1) / np.maximum(areas, 1)
            in_lung = np.bincount(lab.ravel(), weights=(grid.lungs[s] > 0).ravel(), minlength=n + 1)
            best, best_d = 0, np.inf
            for k in range(1, n + 1):
                d = abs(cx[k] - midline)
                if (
                    lo <= areas[k] * px_mm2 <= hi
                    and d < params.midline_fraction * body_width
                    and in_lung[k] < 0.5 * areas[k]
                    and d < best_d
                ):
                    best, best_d = k, d
            if best:
                prev = lab == best
                areas_tracked.append(float(areas[best]))
            continue
        limit = 2.5 * float(np.median(areas_tracked[:5]))
        cur = continue_airway(lab, areas, prev, grid.hu[s], params.lumen_hu, limit)
        if not cur.any():
            break
        branches, nb = ndimage.label(cur, structure=_STRUCT_2D)
        b_areas = np.bincount(branches.ravel(), minlength=nb + 1)
        b_cols = np.bincount(branches.ravel(), weights=columns, minlength=nb + 1) / np.maximum(b_areas, 1)
        track.slices.append(s)
        track.branches.append([(float(b_areas[k] * px_mm2), float(b_cols[k])) for k in range(1, nb + 1)])
        if nb == 1 and len(track.slices) < 8:
            areas_tracked.append(float(b_areas[1]))
        prev = cur
    if not track.slices:
        track.note = "no trachea found near the midline below the lung apices"
    return track


def _first_run(flags: list[bool], min_len: int, start: int = 0) -> int | None:
    """Index of the first position at or after ``start`` that begins ``min_len`` consecutive True flags."""
    run = 0
    for i in range(start, len(flags)):
        run = run + 1 if flags[i] else 0
        if run >= min_len:
            return i - min_len + 1
    return None


def find_carina(grid: _Grid, params: LandmarkParameters, track: _AirwayTrack | None = None) -> tuple[float | None, str]:
    """Canonical coarse slice index of the carina (None when not found) and a note."""
    track = track or track_airway(grid, params)
    if not track.slices:
        return None, track.note
    n_split = max(1, int(np.ceil(params.min_split_mm / grid.spacing[0])))
    split = [sum(a >= params.min_branch_mm2 for a, _ in b) >= 2 for b in track.branches]
    i = _first_run(split, n_split)
    if i is None:
        return None, "the trachea was followed but no bifurcation into two main bronchi was seen"
    return float(track.slices[i] + 0.5), "carina: between the last slice of one tracheal lumen and the first of two"


def find_bronchus_ends(
    grid: _Grid, params: LandmarkParameters, track: _AirwayTrack, carina: float
) -> dict[int, float | None]:
    """Per lung: canonical slice index where that side's tracked bronchus ends, or None.

    Each main bronchus is followed below the carina (the branches on that side of the tracheal centre
    column); its end is the lowest slice, between ``min_lobar_drop_mm`` and ``max_lobar_drop_mm`` below the
    carina, that still holds a lumen of at least ``min_lobar_mm2``: below it the lower-lobe bronchus has
    divided into basal segmental bronchi too small to follow, which happens at about the level of the
    inferior pulmonary vein. None when the bronchus is lost before ``min_lobar_drop_mm``.
    """
    sp = grid.spacing
    below = [i for i, s in enumerate(track.slices) if s < carina]
    out: dict[int, float | None] = {RIGHT_LUNG: None, LEFT_LUNG: None}
    if not below:
        return out
    i0 = below[0]
    centre = float(np.mean([c for _, c in track.branches[max(0, i0 - 1)]]))
    for side, sign in ((RIGHT_LUNG, -1.0), (LEFT_LUNG, 1.0)):  # canonical l increases towards the patient's left
        lowest = None
        for i in range(i0, len(track.slices)):
            drop = (carina - track.slices[i]) * sp[0]
            if drop > params.max_lobar_drop_mm:
                break
            if not any(a >= params.min_lobar_mm2 and (c - centre) * sign > 0 for a, c in track.branches[i]):
                if drop < params.min_lobar_drop_mm:
                    continue
                break
            if drop >= params.min_lobar_drop_mm:
                lowest = float(track.slices[i])
        out[side] = lowest
    return out


def find_landmarks(ct: CTVolume, lungs: np.ndarray, params: LandmarkParameters | None = None) -> Landmarks:
    """The carina and IPV levels of a HU chest CT with its lung mask (1 right / 2 left)."""
    params = params or LandmarkParameters()
    found = Landmarks()
    if ct.intensity != "HU":
        found.notes.append("Landmarks need a CT in Hounsfield units.")
        return found
    grid = _grid(ct, lungs, params)
    track = track_airway(grid, params)
    carina, note = find_carina(grid, params, track)
    found.notes.append(note)
    if carina is None:
        return found
    found.carina_z_mm = _physical_z(ct, grid, carina)
    per_lung = find_bronchus_ends(grid, params, track, carina)
    names = {RIGHT_LUNG: "right", LEFT_LUNG: "left"}
    found.ipv_z_mm_per_lung = {names[k]: None if v is None else _physical_z(ct, grid, v) for k, v in per_lung.items()}
    values = [v for v in found.ipv_z_mm_per_lung.values() if v is not None]
    if values:
        found.ipv_z_mm = float(np.mean(values))
        sides = ", ".join(k for k, v in found.ipv_z_mm_per_lung.items() if v is not None)
        found.notes.append(f"IPV level: where the tracked lower-lobe bronchus divides below the carina ({sides}).")
    else:
        found.notes.append("No main bronchus could be followed below the carina: the IPV level was not found.")
    return found
