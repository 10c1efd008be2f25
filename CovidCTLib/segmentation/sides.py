"""Right / left lung split, shared by every lung segmenter (classical, networks, 2-D slices).

Direction-aware (patient right is -x in LPS): components take the side of their centroid relative to the body
midline; where the lungs touch (anterior/posterior junction) the mask is eroded until both sides separate and
every voxel then takes the side of the nearest seed; if they never separate, the midline plane splits.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.errors import InputError
from CovidCTLib.imaging.grid import block_factors, block_mean, bounding_box, upsample_nearest
from CovidCTLib.imaging.orientation import left_axis, oriented_target, superior_axis
from CovidCTLib.labels import LEFT_LUNG, RIGHT_LUNG
from CovidCTLib.volume import CTVolume

#: grid (z, y, x mm) on which the split is computed; sides are transferred to full resolution by nearest label
SPLIT_GRID_MM = (2.5, 2.0, 2.0)


# ----------------------------------------------------------------------------------------------- helpers
class CanonicalView:
    """View arrays with the cranio-caudal axis first and index 0 the most superior slice."""

    def __init__(self, image) -> None:
        self.sup_axis, self.sup_sign = superior_axis(image)
        lr_axis, self.lr_sign = left_axis(image)
        order = [self.sup_axis] + [a for a in range(3) if a != self.sup_axis]
        self.lr_axis = order.index(lr_axis) if lr_axis != self.sup_axis else 2  # axis in canonical 3-D order
        self.order = order

    def to(self, a: np.ndarray) -> np.ndarray:
        c = np.moveaxis(a, self.sup_axis, 0)
        return c[::-1] if self.sup_sign > 0 else c

    def back(self, c: np.ndarray) -> np.ndarray:
        c = c[::-1] if self.sup_sign > 0 else c
        return np.moveaxis(c, 0, self.sup_axis)

    def spacing(self, spacing_zyx: tuple[float, ...]) -> tuple[float, float, float]:
        return tuple(float(spacing_zyx[a]) for a in self.order)  # type: ignore[return-value]


def body_midline(hu_c: np.ndarray, lr_axis: int) -> float:
    """Centre of the body along the right-left axis (canonical index units)."""
    body = hu_c > -500
    other = tuple(a for a in range(3) if a != lr_axis)
    profile = body.sum(axis=other).astype(float)
    if profile.sum() == 0:
        return (hu_c.shape[lr_axis] - 1) / 2.0
    return float((profile * np.arange(profile.size)).sum() / profile.sum())


def component_sides(
    lab: np.ndarray, n: int, coords: np.ndarray, midline: float, lr_sign: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per component (index 0 unused): size, side (RIGHT_LUNG / LEFT_LUNG by its centroid vs the midline)
    and the fraction of its voxels on the patient-left side of the midline."""
    idx = lab.ravel()
    sizes = np.bincount(idx, minlength=n + 1).astype(float)
    sizes[0] = 0
    towards_left = np.broadcast_to((coords - midline) * lr_sign, lab.shape).ravel()
    mean_pos = np.bincount(idx, weights=towards_left, minlength=n + 1) / np.maximum(sizes, 1)
    frac_left = np.bincount(idx, weights=towards_left > 0, minlength=n + 1) / np.maximum(sizes, 1)
    side = np.where(mean_pos > 0, LEFT_LUNG, RIGHT_LUNG).astype(np.uint8)
    side[0] = 0
    return sizes, side, frac_left


def split_mask(
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    midline: float,
    lr_axis: int,
    lr_sign: int,
    max_erosion_mm: float,
) -> np.ndarray:
    """Right (1) / left (2) labels for a binary lung mask (canonical array).

    Components are given the side of their centroid; while a large component straddles the midline
    (touching lungs) the mask is eroded deeper (Euclidean distance threshold). Voxels outside the seeds
    take the side of the nearest seed voxel; when no erosion separates the lungs, the midline plane splits.
    """
    out = np.zeros(mask.shape, dtype=np.uint8)
    if not mask.any():
        return out
    box = bounding_box(mask)
    m = mask[box]
    lr_mid = midline - box[lr_axis].start
    shape = [1, 1, 1]
    shape[lr_axis] = -1
    coords = np.arange(m.shape[lr_axis], dtype=np.float32).reshape(shape)
    seeds = None
    dist = None
    level = 0.0
    while level <= max_erosion_mm:
        core = m if dist is None else dist > level
        lab, n = ndimage.label(core)
        if n:
            sizes, side, frac_left = component_sides(lab, n, coords, lr_mid, lr_sign)
            total = sizes.sum()
            significant = sizes >= 0.02 * total
            vol_r = sizes[(side == RIGHT_LUNG) & significant].sum()
            vol_l = sizes[(side == LEFT_LUNG) & significant].sum()
            straddle = significant & (frac_left > 0.2) & (frac_left < 0.8) & (sizes > 0.2 * total)
            if vol_r >= 0.1 * total and vol_l >= 0.1 * total and not straddle.any():
                seeds = np.where(significant[lab], side[lab], 0).astype(np.uint8)
                break
        if dist is None:
            dist = ndimage.distance_transform_edt(m, sampling=spacing)
        level += max(1.5 * min(spacing), 1.0)
    if seeds is None or not seeds.any():
        sub = np.where(m, np.where((coords - lr_mid) * lr_sign > 0, LEFT_LUNG, RIGHT_LUNG), 0)
        out[box] = sub
        return out
    if np.array_equal(seeds > 0, m):
        out[box] = seeds
        return out
    _, idx = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_indices=True)
    nearest = seeds[tuple(idx)]
    out[box] = np.where(m, nearest, 0)
    return out


def fine_offset(fine_box: tuple[slice, ...], box_lr: tuple[slice, ...], factors: tuple[int, ...]) -> tuple[slice, ...]:
    """Fine box expressed relative to the start of the coarse box (for upsampling a cropped coarse array)."""
    return tuple(
        slice(fb.start - cb.start * f, fb.stop - cb.start * f)
        for fb, cb, f in zip(fine_box, box_lr, factors, strict=True)
    )


def split_right_left(lung_mask: np.ndarray, ct: CTVolume, max_erosion_mm: float = 30.0) -> np.ndarray:
    """Split a binary lung mask (any non-zero = lung) into 1 = right / 2 = left using the image direction.

    Used by the trained-model path. Works on a coarse grid (about 2.5 x 2 x 2 mm) and transfers the sides
    to every full-resolution voxel by the nearest coarse label.
    """
    mask = np.asarray(lung_mask) > 0
    if mask.shape != ct.shape:
        raise InputError(f"lung mask shape {mask.shape} does not match the CT {ct.shape} (z, y, x)")
    out = np.zeros(mask.shape, dtype=np.uint8)
    if not mask.any():
        return out
    import SimpleITK as sitk

    factors = block_factors(ct.spacing_zyx, oriented_target(ct.image, SPLIT_GRID_MM), ct.shape)
    share = block_mean(mask, factors)
    mask_lr = share >= 0.5
    if not mask_lr.any():
        mask_lr = share > 0
    del share
    spacing_lr = tuple(s * f for s, f in zip(ct.spacing_zyx, factors, strict=True))
    canon = CanonicalView(ct.image)
    hu = sitk.GetArrayViewFromImage(ct.image) if ct.intensity == "HU" else None
    if hu is not None:
        midline = body_midline(canon.to(block_mean(hu, factors)), canon.lr_axis)
    else:
        m_c = canon.to(mask_lr)
        other = tuple(a for a in range(3) if a != canon.lr_axis)
        profile = m_c.sum(axis=other).astype(float)
        midline = float((profile * np.arange(profile.size)).sum() / max(profile.sum(), 1.0))
    sides_c = split_mask(
        canon.to(mask_lr), canon.spacing(spacing_lr), midline, canon.lr_axis, canon.lr_sign, max_erosion_mm
    )
    sides_lr = np.ascontiguousarray(canon.back(sides_c))
    if all(f == 1 for f in factors):
        if np.array_equal(sides_lr > 0, mask):
            return sides_lr
        _, idx = ndimage.distance_transform_edt(sides_lr == 0, return_indices=True)
        return np.where(mask, sides_lr[tuple(idx)], 0).astype(np.uint8)
    box = bounding_box(mask)
    box_lr = tuple(slice(s.start // f, -(-s.stop // f)) for s, f in zip(box, factors, strict=True))
    # every seed lies in the coarse box of the mask, so the nearest seed of a box voxel is found in the box
    coarse = sides_lr[box_lr]
    _, idx = ndimage.distance_transform_edt(coarse == 0, sampling=spacing_lr, return_indices=True)
    nearest = coarse[tuple(idx)]
    fine = upsample_nearest(nearest, factors, mask.shape, fine_offset(box, box_lr, factors))
    out[box] = np.where(mask[box], fine, 0)
    return out


def split_at_midline(lungs: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Right (1) / left (2) for the lungs of single slices ``(z, y, x)`` (z may be 1): the plane half-way
    between the 2nd and 98th percentile of the lung along the patient's left-right axis (LPS +x is left).

    For one slice there is no 3-D context to separate touching lungs; :func:`split_right_left` is the 3-D split.
    """
    lungs = np.asarray(lungs) > 0
    out = np.zeros(lungs.shape, np.uint8)
    if not lungs.any():
        return out
    dim = image.GetDimension()
    direction = np.array(image.GetDirection()).reshape(dim, dim)
    axis_xyz = int(np.argmax(np.abs(direction[0])))
    sign = np.sign(direction[0, axis_xyz]) or 1.0
    array_axis = 2 - axis_xyz if dim == 3 else (2 if axis_xyz == 0 else 1)
    coords = np.nonzero(lungs)[array_axis].astype(float)
    mid = 0.5 * (np.percentile(coords, 2) + np.percentile(coords, 98))
    index = np.arange(lungs.shape[array_axis]).reshape([-1 if a == array_axis else 1 for a in range(3)])
    left = (index - mid) * sign > 0
    out[lungs & ~left] = RIGHT_LUNG
    out[lungs & left] = LEFT_LUNG
    return out
