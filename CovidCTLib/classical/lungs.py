"""Classical lung segmentation on HU volumes: threshold, outside-air removal, airway removal, right/left split,
filling of dense lesions, and refinement at full resolution.

Method (all heavy morphology on a coarse grid of about 2.5 x 2 x 2 mm, then refined at full resolution):

1. Block-mean down-sampling; air-like voxels ``HU < threshold_hu`` (default -320 HU).
2. Outside air: 2-D components touching the in-plane image border (every axial slice) and 3-D components
   touching the in-plane border are removed; lung candidates are the remaining 3-D components that are
   not pure gas (on average at most 60 % of voxels below -950 HU) and at least ``min_component_fraction``
   of the largest one. Pure-gas pockets wrapped in soft tissue (stomach, bowel), which partial volume
   across a thin diaphragm can join to a lung, are cut away.
3. Airways: the trachea is found in the upper slices as a small air region near the midline and tracked
   slice by slice towards the feet; at the carina it splits into the main bronchi, each followed until it
   merges with a large lung region (where it touches a lung through a thin wall only its lumen, below
   -950 HU, is followed). The lumen is then followed a little further (15 mm) into the lung; the airway
   (dilated by one coarse voxel) is removed.
4. Right/left split: components are assigned to a side by their centroid relative to the body midline
   (direction-aware: patient right is -x in LPS). When the lungs touch (anterior/posterior junction) the
   mask is eroded (Euclidean distance threshold) until both sides separate, and every voxel then takes the
   side of the nearest seed. If they never separate, the body midline plane is used.
5. Lesion filling, per lung: 3-D hole filling, then per axial slice: 2-D hole filling, and a convex-hull
   completion that accepts only hull regions that are dense soft tissue (mean -300..+150 HU, little fat)
   and not on the mediastinal side (this recovers consolidation lying against the pleura, which a threshold
   cuts out, without filling the heart or aortic concavities), then a small closing.
6. Full resolution: the coarse interior is kept, and the boundary band is re-decided by the threshold at the
   original resolution; the coarse airway mask is removed again.

Known limits: a lung that is almost entirely consolidated (no aerated part in a slice) cannot be recovered;
the horizontal stretch of a main bronchus that merges with the lung in the same slice stays in the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image, disk

from CovidCTLib.errors import AnalysisError, InputError
from CovidCTLib.imaging.airway import continue_airway
from CovidCTLib.imaging.grid import block_factors, block_mean, fine_box_of, occupied_box, upsample_nearest
from CovidCTLib.imaging.orientation import oriented_target
from CovidCTLib.labels import LEFT_LUNG, RIGHT_LUNG
from CovidCTLib.progress import Reporter
from CovidCTLib.segmentation.sides import CanonicalView, body_midline, fine_offset, split_mask
from CovidCTLib.volume import CTVolume

_STRUCT_2D = np.ones((3, 3), dtype=bool)


@dataclass
class LungParameters:
    """Tunable settings of the classical lung segmentation (defaults suit adult chest CT).

    Attributes:
        threshold_hu: voxels below this are air-like (lung, airways, outside air).
        coarse_spacing_mm: target spacing ``(z, y, x)`` of the coarse grid used for morphology.
        min_component_fraction: lung candidates must be at least this fraction of the largest lung-like
            air component.
        gas_fraction: air components in which, on average, more than this fraction of the full-resolution
            voxels is below ``lumen_hu`` are gas (stomach, bowel), not lung (lung parenchyma: a few %).
        min_lung_ml: below this total the result is refused (no lung found).
        trachea_area_mm2: plausible trachea cross-section range.
        hull_medial_fraction: a convex-hull region is accepted only if its centroid is at least this fraction
            of the lung centroid's distance away from the midline (rejects heart/aorta concavities).
        max_hull_fraction: a hull region larger than this fraction of the aerated lung in the slice is not
            taken (the diaphragm dome under a thin basal crescent of lung).
        wall_midline_ratio: only hull pixels whose distance to the chest wall (outside the joint hull of
            both lungs) is below this fraction of their distance to the midline can be lesion.
        closing_radius_mm: final per-slice closing radius.
        max_split_erosion_mm: deepest erosion tried to separate touching lungs.
        lumen_hu / lumen_reach_mm: after tracking, the bronchial lumen (below ``lumen_hu``) is followed for at
            most ``lumen_reach_mm`` to remove the bronchi where they enter the lung.
        gas_pocket_ml: pure-gas regions at least this big that are wrapped in soft tissue (stomach, bowel,
            trachea) are cut away even when partial volume joins them to the lungs; "wrapped" means at least
            ``gas_wall_fraction`` of a ring 1-3 coarse voxels around them is soft tissue (a bulla: about 0).
    """

    threshold_hu: float = -320.0
    coarse_spacing_mm: tuple[float, float, float] = (2.5, 2.0, 2.0)
    min_component_fraction: float = 0.03
    gas_fraction: float = 0.6
    min_lung_ml: float = 20.0
    trachea_area_mm2: tuple[float, float] = (40.0, 900.0)
    hull_medial_fraction: float = 0.7
    max_hull_fraction: float = 0.6
    wall_midline_ratio: float = 0.6
    closing_radius_mm: float = 3.0
    max_split_erosion_mm: float = 30.0
    lumen_hu: float = -950.0
    lumen_reach_mm: float = 15.0
    gas_pocket_ml: float = 5.0
    gas_wall_fraction: float = 0.3


def _remove_outside_air(air: np.ndarray) -> np.ndarray:
    """Drop air touching the in-plane border (canonical array: axis 0 = slices), per slice and in 3-D."""
    inside = air.copy()
    for z in range(air.shape[0]):
        sl = inside[z]
        if not sl.any():
            continue
        lab, n = ndimage.label(sl)
        if n == 0:
            continue
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        border = border[border > 0]
        if border.size:
            sl[np.isin(lab, border)] = False
    lab, n = ndimage.label(inside)
    if n:
        faces = np.concatenate([lab[:, 0].ravel(), lab[:, -1].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])
        border = np.unique(faces)
        border = border[border > 0]
        if border.size:
            inside[np.isin(lab, border)] = False
    return inside


def _lung_candidates(inside: np.ndarray, gas_frac: np.ndarray, params: LungParameters, voxel_ml: float) -> np.ndarray:
    """Air components inside the body that look like lung: large, and not pure gas (stomach, bowel)."""
    lab, n = ndimage.label(inside)
    if n == 0:
        raise AnalysisError(
            "No air-filled lung region was found inside the body. Check that the input is a chest CT in "
            "Hounsfield units covering the lungs."
        )
    idx = lab.ravel()
    sizes = np.bincount(idx, minlength=n + 1).astype(float)
    sizes[0] = 0
    mean_gas = np.bincount(idx, weights=gas_frac.ravel(), minlength=n + 1) / np.maximum(sizes, 1)
    # lung parenchyma contains vessels and interstitium: few of its voxels are as dark as pure gas
    lung_like = mean_gas <= params.gas_fraction
    lung_like[0] = False
    if not lung_like.any() or sizes[lung_like].max() * voxel_ml < params.min_lung_ml:
        largest = sizes.max() * voxel_ml
        raise AnalysisError(
            f"No lung-like air region was found (largest air region inside the body: {largest:.1f} mL). "
            "Check that the input is a chest CT in Hounsfield units covering the lungs."
        )
    largest = sizes[lung_like].max()
    keep = lung_like & (sizes >= params.min_component_fraction * largest)
    return keep[lab]


def _gas_pockets(
    candidates: np.ndarray, hu: np.ndarray, gas_frac: np.ndarray, spacing: tuple[float, ...], params: LungParameters
) -> np.ndarray:
    """Pure-gas regions wrapped in soft tissue (stomach, bowel, trachea) joined to the lungs by partial volume.

    Gas components (coarse voxels at least half of whose fine voxels are below ``lumen_hu``) of at least
    ``gas_pocket_ml`` are removed when a ring around them is mostly soft tissue; emphysematous bullae are
    wrapped in lung and are kept.
    """
    gas = candidates & (gas_frac >= 0.5)
    out = np.zeros_like(candidates)
    lab, n = ndimage.label(gas)
    if n == 0:
        return out
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(lab.ravel())
    for k in np.flatnonzero(sizes * voxel_ml >= params.gas_pocket_ml):
        if k == 0:
            continue
        box = occupied_box(lab == k)
        box = tuple(slice(max(0, b.start - 4), min(n_, b.stop + 4)) for b, n_ in zip(box, lab.shape, strict=True))
        comp = lab[box] == k
        # a ring a few millimetres out: beyond the blurred gas edge, where the wall or lung lies
        near = ndimage.binary_dilation(comp, iterations=1)
        shell = ndimage.binary_dilation(near, iterations=2) & ~near
        tissue = np.count_nonzero(shell & (hu[box] >= params.threshold_hu))
        if tissue >= params.gas_wall_fraction * max(np.count_nonzero(shell), 1):
            out[box] |= comp
    return out


def _track_airways(
    mask: np.ndarray,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    midline: float,
    lr_axis: int,
    params: LungParameters,
) -> np.ndarray:
    """Trachea + main bronchi by slice-to-slice tracking from the top (canonical array).

    Start: the first slice (in the upper 35 % of the air region) holding a compact air region of trachea
    size near the midline. Then, slice by slice, every air region overlapping the airway of the slice above
    is taken while it stays airway-sized (at most 2.5 x the trachea area); where the airway touches a lung
    in the slice (partial volume across a thin wall), only the lumen part (below ``lumen_hu``) is taken.
    Tracking ends when nothing airway-sized continues.
    """
    px_mm2 = spacing[1] * spacing[2]
    lo, hi = params.trachea_area_mm2
    airway = np.zeros_like(mask)
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return airway
    z_first, z_last = int(zs[0]), int(zs[-1])
    search_end = z_first + max(3, int(0.35 * (z_last - z_first + 1)))
    lr_in_plane = lr_axis - 1
    body_half_width = mask.shape[lr_axis] / 2.0
    tracked_areas: list[int] = []
    prev = None
    for z in range(z_first, z_last + 1):
        sl = mask[z]
        lab, n = ndimage.label(sl, structure=_STRUCT_2D)
        if n == 0:
            if prev is not None:
                break
            continue
        areas = np.bincount(lab.ravel())
        if prev is None:
            if z > search_end:
                break
            coords = np.indices(sl.shape)[lr_in_plane]
            cx = np.bincount(lab.ravel(), weights=coords.ravel()) / np.maximum(areas, 1)
            best, best_d = 0, np.inf
            for k in range(1, n + 1):
                area_mm2 = areas[k] * px_mm2
                d = abs(cx[k] - midline)
                if lo <= area_mm2 <= hi and d < 0.15 * body_half_width * 2 and d < best_d:
                    best, best_d = k, d
            if best:
                prev = lab == best
                tracked_areas.append(int(areas[best]))
                airway[z] = prev
            continue
        limit = 2.5 * float(np.median(tracked_areas[:5]))
        cur = continue_airway(lab, areas, prev, hu[z], params.lumen_hu, limit)
        if not cur.any():
            break
        tracked_areas.append(int(np.count_nonzero(cur)))
        airway[z] = cur
        prev = cur
    # a plausible trachea runs over several slices; a one-slice hit is noise
    if np.count_nonzero(airway.any(axis=(1, 2))) * spacing[0] < 10.0:
        airway[:] = False
    return airway


def _grow_airways(
    airway: np.ndarray, hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...], lumen_hu: float, reach_mm: float
) -> np.ndarray:
    """Follow the bronchial lumen (very low HU) from the tracked airway for at most ``reach_mm``."""
    if not airway.any():
        return airway
    box = occupied_box(airway)
    steps = max(1, int(round(reach_mm / min(spacing))))
    box = tuple(slice(max(0, s.start - steps), min(n, s.stop + steps)) for s, n in zip(box, airway.shape, strict=True))
    allowed = mask[box] & (hu[box] < lumen_hu)
    grown = airway[box].copy()
    for _ in range(steps):
        nxt = ndimage.binary_dilation(grown) & (allowed | grown)
        if np.array_equal(nxt, grown):
            break
        grown = nxt
    out = airway.copy()
    out[box] |= grown
    return out


def _polar_cap(
    lung: np.ndarray, accepted: np.ndarray, hu: np.ndarray, spacing: tuple[float, ...], bins: int = 180
) -> np.ndarray:
    """Extend accepted pleural regions out to the interpolated pleura.

    The convex hull closes a pleural lesion with a straight chord; the real pleura bulges outwards. In
    polar coordinates around the lung centroid the outline radius is interpolated across the angular range
    of the lesion (cubic Hermite from the aerated outline's radius and slope on both sides, limited to
    0.8-1.3 x the end radii), and dense non-fat, non-bone tissue inside that radius is added.
    """
    yy, xx = np.nonzero(lung)
    if yy.size < 8:
        return np.zeros_like(lung)
    cy, cx = yy.mean(), xx.mean()
    gy, gx = np.indices(lung.shape)
    dy, dx = (gy - cy) * spacing[0], (gx - cx) * spacing[1]
    radius = np.hypot(dy, dx)
    angle_bin = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    r_out = np.zeros(bins)
    np.maximum.at(r_out, angle_bin[lung], radius[lung])
    lab, n = ndimage.label(accepted, structure=_STRUCT_2D)
    cap = np.zeros_like(lung)
    for k in range(1, n + 1):
        occupied = np.zeros(bins, dtype=bool)
        occupied[np.unique(angle_bin[lab == k])] = True
        if occupied.all() or occupied.sum() > bins // 2:
            continue
        # the arc is the complement of the largest circular gap of unoccupied bins
        rolled = np.roll(occupied, -int(np.argmax(occupied)))  # starts with an occupied bin
        free = np.flatnonzero(~rolled)
        if free.size == 0:
            continue
        runs = np.split(free, np.flatnonzero(np.diff(free) > 1) + 1)
        gap = max(runs, key=len)
        shift = int(np.argmax(occupied))
        start = (gap[-1] + 1 + shift) % bins  # first occupied bin after the gap
        length = bins - len(gap)
        before, after = (start - 1) % bins, (start + length) % bins
        r1, r2 = r_out[before], r_out[after]
        if r1 <= 0 or r2 <= 0:
            continue
        arc = (np.arange(length + 2) + start - 1) % bins
        # cubic Hermite across the gap, with the outline's slope on both sides (a pleura keeps curving)
        k = 3
        m1 = (r1 - r_out[(before - k) % bins]) / k if r_out[(before - k) % bins] > 0 else 0.0
        m2 = (r_out[(after + k) % bins] - r2) / k if r_out[(after + k) % bins] > 0 else 0.0
        t = np.linspace(0.0, 1.0, length + 2)
        span = length + 1
        h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
        h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
        curve = h00 * r1 + h10 * span * m1 + h01 * r2 + h11 * span * m2
        lo_r, hi_r = min(r1, r2), max(r1, r2)
        r_interp = np.zeros(bins)
        r_interp[arc] = np.clip(curve, 0.8 * lo_r, 1.3 * hi_r)
        in_arc = np.zeros(bins, dtype=bool)
        in_arc[arc] = True
        cap |= in_arc[angle_bin] & (radius <= r_interp[angle_bin]) & (hu > -300) & (hu < 150)
    return cap & ~lung


def _pleural_lesions(
    filled: np.ndarray,
    hu: np.ndarray,
    mid: float,
    lr_in_plane: int,
    spacing: tuple[float, ...],
    params: LungParameters,
    outside_joint: np.ndarray,
) -> np.ndarray:
    """Dense regions between one lung slice and its convex hull that look like pleural lesions.

    Only hull pixels closer to the chest wall than ``wall_midline_ratio`` x their distance to the midline
    are considered. A hull region is accepted when it is soft-tissue dense (mean -300..+150 HU, at most 40 % fat-like
    -200..-40 HU voxels, a share that partial-volume edges alone reach), does
    not lie towards the mediastinum (direction from the lung centroid within 60 degrees of medial, or
    centroid closer to the midline than ``hull_medial_fraction`` of the lung's distance: heart, aorta and
    diaphragm-dome concavities), faces the chest wall (most of the pixels just beyond its hull chord lie
    outside the convex hull of *both* lungs: a concavity facing the mediastinum, like the heart, is inside
    that joint hull), and is then extended out to the interpolated pleura.
    """
    ly, lx = (float(c.mean()) for c in np.nonzero(filled))
    if not filled[int(round(ly)), int(round(lx))]:
        # crescent-shaped slice (lung base around the diaphragm dome): the hull would take the dome
        return np.zeros_like(filled)
    hull = convex_hull_image(filled)
    added = hull & ~filled
    if not added.any():
        return added
    # keep the pixels nearer the chest wall (outside of the joint hull) than the midline: this splits a
    # posterior lesion from the heart concavity when the hull joins them
    d_wall = ndimage.distance_transform_edt(~outside_joint, sampling=spacing)
    coords = np.indices(added.shape)[lr_in_plane].astype(float)
    d_mid = np.abs(coords - mid) * spacing[lr_in_plane]
    added &= d_wall < params.wall_midline_ratio * d_mid
    # separate regions that only touch at a hull vertex (e.g. the heart concavity and a posterior lesion)
    core = ndimage.binary_opening(added)
    lab, n = ndimage.label(core)
    if n == 0:
        return np.zeros_like(added)
    idx = lab.ravel()
    area = np.bincount(idx, minlength=n + 1).astype(float)
    mean_hu = np.bincount(idx, weights=hu.ravel(), minlength=n + 1) / np.maximum(area, 1)
    fat = np.bincount(idx, weights=((hu > -200) & (hu < -40)).ravel(), minlength=n + 1)
    gy, gx = np.indices(added.shape)
    cy = np.bincount(idx, weights=gy.ravel(), minlength=n + 1) / np.maximum(area, 1)
    cx = np.bincount(idx, weights=gx.ravel(), minlength=n + 1) / np.maximum(area, 1)
    d = np.stack([(cy - ly) * spacing[0], (cx - lx) * spacing[1]], axis=1)
    lung_c = (ly, lx)[lr_in_plane]
    medial = np.zeros(2)
    medial[lr_in_plane] = 1.0 if mid > lung_c else -1.0
    cos_medial = (d @ medial) / np.maximum(np.linalg.norm(d, axis=1), 1e-6)
    comp_c = (cy, cx)[lr_in_plane]
    ok = (
        (cos_medial <= 0.5)
        & (np.abs(comp_c - mid) >= params.hull_medial_fraction * abs(lung_c - mid))
        & (mean_hu > -300)
        & (mean_hu < 150)
        & (fat <= 0.4 * area)
        & (area <= params.max_hull_fraction * np.count_nonzero(filled))
    )
    ok[0] = False
    if ok.any():
        beyond = ndimage.grey_dilation(lab, size=(5, 5)) * ~hull
        edge = np.bincount(beyond.ravel(), minlength=n + 1).astype(float)
        facing_wall = np.bincount(beyond.ravel(), weights=outside_joint.ravel(), minlength=n + 1)
        ok &= facing_wall >= 0.5 * np.maximum(edge, 1)
    if not ok.any():
        return np.zeros_like(added)
    accepted = ndimage.binary_dilation(ok[lab], structure=_STRUCT_2D) & added
    return accepted | _polar_cap(filled, accepted, hu, spacing)


def _fill_lung(
    lung: np.ndarray,
    hu: np.ndarray,
    midline: float,
    lr_axis: int,
    spacing: tuple[float, ...],
    params: LungParameters,
    joint_hull: np.ndarray,
) -> np.ndarray:
    """Fill holes and pleural dense lesions of one lung (canonical arrays)."""
    if not lung.any():
        return lung
    box = occupied_box(lung)
    # margin in-plane so that the hull and the closing have room
    pad = 6
    box = (box[0],) + tuple(
        slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box[1:], lung.shape[1:], strict=True)
    )
    sub = ndimage.binary_fill_holes(lung[box])
    h = hu[box]
    outside_joint = ~joint_hull[box]
    lr_in_plane = lr_axis - 1
    mid = midline - box[lr_axis].start
    radius = max(1, int(round(params.closing_radius_mm / min(spacing[1], spacing[2]))))
    selem = disk(radius)
    for z in range(sub.shape[0]):
        sl = sub[z]
        if not sl.any():
            continue
        filled = ndimage.binary_fill_holes(sl)
        if np.count_nonzero(filled) >= 8:
            filled |= _pleural_lesions(filled, h[z], mid, lr_in_plane, spacing[1:], params, outside_joint[z])
        closed = ndimage.binary_closing(np.pad(filled, radius + 1), structure=selem)[
            radius + 1 : -radius - 1, radius + 1 : -radius - 1
        ]
        sub[z] = ndimage.binary_fill_holes(closed)
    out = np.zeros_like(lung)
    out[box] = sub
    return out


# ----------------------------------------------------------------------------------------------- public API
def _check_hu(ct: CTVolume) -> None:
    if ct.intensity != "HU":
        raise InputError(
            f"{ct.source} is not in Hounsfield units; the classical lung segmentation needs a CT volume in HU "
            "(DICOM series, NIfTI or NRRD). Use a trained model for 8-bit images."
        )
    if not ct.is_3d:
        raise InputError(f"{ct.source} is a single slice; the classical 3-D lung segmentation needs a volume.")


def _coarse(ct: CTVolume, params: LungParameters) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    import SimpleITK as sitk

    hu = sitk.GetArrayViewFromImage(ct.image)
    factors = block_factors(ct.spacing_zyx, oriented_target(ct.image, params.coarse_spacing_mm), ct.shape)
    return hu, block_mean(hu, factors), factors


def segment_lungs_classical(
    ct: CTVolume, reporter: Reporter | None = None, params: LungParameters | None = None
) -> np.ndarray:
    """Segment the lungs of a HU chest CT: uint8 ``(z, y, x)`` with 1 = right lung, 2 = left lung.

    The mask includes intrapulmonary vessels and lesions (also dense consolidation against the pleura) and
    excludes the trachea and main bronchi. Raises :class:`AnalysisError` when no lung is found.
    """
    params = params or LungParameters()
    _check_hu(ct)
    step = "lungs"
    if reporter:
        reporter.update(step, 0.0, "Lung segmentation: thresholding")
    hu, hu_lr, factors = _coarse(ct, params)
    spacing_lr = tuple(s * f for s, f in zip(ct.spacing_zyx, factors, strict=True))
    canon = CanonicalView(ct.image)
    hu_c = canon.to(hu_lr)
    gas_c = canon.to(block_mean(hu < params.lumen_hu, factors))
    sp_c = canon.spacing(spacing_lr)
    voxel_ml_lr = float(np.prod(spacing_lr)) / 1000.0

    inside = _remove_outside_air(hu_c < params.threshold_hu)
    candidates = _lung_candidates(inside, gas_c, params, voxel_ml_lr)
    midline = body_midline(hu_c, canon.lr_axis)
    if reporter:
        reporter.update(step, 0.25, "Lung segmentation: removing the airways")
    airway = _track_airways(candidates, hu_c, sp_c, midline, canon.lr_axis, params)
    airway = _grow_airways(airway, hu_c, candidates, sp_c, params.lumen_hu, params.lumen_reach_mm)
    airway_block = ndimage.binary_dilation(airway, iterations=1) if airway.any() else airway
    gas = _gas_pockets(candidates & ~airway_block, hu_c, gas_c, sp_c, params)
    if gas.any():
        gas_block = ndimage.binary_dilation(gas, iterations=2)  # with the partial-volume rim
        airway_block = airway_block | gas_block
        candidates = _lung_candidates(candidates & ~gas_block, gas_c, params, voxel_ml_lr)
    lungs_air = candidates & ~airway_block
    lab, n = ndimage.label(lungs_air)
    if n:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        lungs_air = (sizes >= 0.005 * sizes.sum())[lab]
    if reporter:
        reporter.update(step, 0.45, "Lung segmentation: separating right and left")
    sides = split_mask(lungs_air, sp_c, midline, canon.lr_axis, canon.lr_sign, params.max_split_erosion_mm)
    if reporter:
        reporter.update(step, 0.6, "Lung segmentation: filling lesions")
    labels_c = np.zeros(sides.shape, dtype=np.uint8)
    joint_hull = np.zeros_like(lungs_air)
    for z in np.flatnonzero(sides.any(axis=(1, 2))):
        joint_hull[z] = convex_hull_image(sides[z] > 0)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        filled = _fill_lung(sides == value, hu_c, midline, canon.lr_axis, sp_c, params, joint_hull)
        labels_c[filled & (labels_c == 0)] = value
    labels_c[airway_block] = 0
    if reporter:
        reporter.update(step, 0.85, "Lung segmentation: refining at full resolution")
    labels_lr = np.ascontiguousarray(canon.back(labels_c))
    airway_lr = np.ascontiguousarray(canon.back(airway_block))
    result = _refine_full_resolution(hu, labels_lr, hu_lr, airway_lr, factors, params.threshold_hu)
    total_ml = np.count_nonzero(result) * ct.voxel_volume_ml
    if total_ml < params.min_lung_ml:
        raise AnalysisError(
            f"Only {total_ml:.1f} mL of lung was found; the scan may not cover the chest or may not be in HU."
        )
    if reporter:
        reporter.update(step, 1.0, f"Lungs: {total_ml:.0f} mL")
    return result


def _refine_full_resolution(
    hu: np.ndarray,
    labels_lr: np.ndarray,
    hu_lr: np.ndarray,
    airway_lr: np.ndarray,
    factors: tuple[int, ...],
    threshold_hu: float,
) -> np.ndarray:
    """Full-resolution labels from the coarse result.

    Kept: the coarse interior (eroded by one coarse voxel), every coarse voxel that was added by filling
    (dense lesions: not air-like on the coarse grid), and in the one-coarse-voxel band around the lungs
    the fine voxels below the threshold. The coarse airway mask is removed.
    """
    out = np.zeros(hu.shape, dtype=np.uint8)
    any_lung = labels_lr > 0
    if not any_lung.any():
        return out
    core = ndimage.binary_erosion(any_lung) | (any_lung & (hu_lr >= threshold_hu))
    grown = ndimage.grey_dilation(labels_lr, size=(3, 3, 3))
    extended = np.where(any_lung, labels_lr, grown).astype(np.uint8)
    if all(f == 1 for f in factors):
        keep = core | ((np.asarray(hu) < threshold_hu) & (extended > 0))
        keep &= ~airway_lr
        out[keep] = extended[keep]
        return out
    box_lr = occupied_box(extended > 0)
    fine_box = fine_box_of(box_lr, factors, hu.shape)
    rel = fine_offset(fine_box, box_lr, factors)
    ext_f = upsample_nearest(extended[box_lr], factors, hu.shape, rel)
    core_f = upsample_nearest(core[box_lr], factors, hu.shape, rel)
    air_f = upsample_nearest(airway_lr[box_lr], factors, hu.shape, rel)
    keep = core_f | ((np.asarray(hu[fine_box]) < threshold_hu) & (ext_f > 0))
    keep &= ~air_f
    out[fine_box] = np.where(keep, ext_f, 0)
    return out
