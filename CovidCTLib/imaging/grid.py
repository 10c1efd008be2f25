"""Block down-sampling and nearest up-sampling used to run heavy morphology on a coarse grid; label counts and
bounding boxes."""

from __future__ import annotations

import numpy as np


def block_factors(
    spacing_zyx: tuple[float, float, float],
    target_mm: tuple[float, float, float],
    shape: tuple[int, int, int] | None = None,
    max_voxels: int = 4_000_000,
) -> tuple[int, ...]:
    """Integer block sizes so that ``spacing * factor`` is close to the target spacing; with ``shape`` the
    in-plane factors grow until the coarse grid has at most ``max_voxels`` voxels."""
    f = [max(1, int(round(t / s))) for s, t in zip(spacing_zyx, target_mm, strict=True)]
    if shape is not None:

        def count() -> int:
            return int(np.prod([-(-n // k) for n, k in zip(shape, f, strict=True)]))

        while count() > max_voxels and max(f[1], f[2]) < 16:
            f[1] += 1
            f[2] += 1
    return tuple(f)


def block_mean(array: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Mean over ``factors``-sized blocks (edge-padded), as float32.

    Masks and integer volumes (HU) are summed exactly in int32 along one axis at a time (strided views, about
    three times faster than a 6-D mean; the same float32 values: the float32 sums of these integers are
    exact too); other dtypes take the mean in float32.
    """
    if all(f == 1 for f in factors):
        return np.asarray(array, dtype=np.float32)
    pads = [(0, (-n) % f) for n, f in zip(array.shape, factors, strict=True)]
    a = np.pad(array, pads, mode="edge") if any(p[1] for p in pads) else array
    if a.dtype.kind in "bu" or (a.dtype.kind == "i" and a.dtype.itemsize <= 2):
        return _block_sum_int32(a, factors).astype(np.float32) / np.float32(np.prod(factors))
    nz, ny, nx = (n // f for n, f in zip(a.shape, factors, strict=True))
    fz, fy, fx = factors
    return a.reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5), dtype=np.float32)


def _block_sum_int32(a: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Block sums of a small-integer 3-D array whose shape is a multiple of ``factors`` (int32)."""
    total = a
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        step = [slice(None)] * 3
        step[axis] = slice(0, None, f)
        acc = np.array(total[tuple(step)], dtype=np.int32)
        for offset in range(1, f):
            step[axis] = slice(offset, None, f)
            acc += total[tuple(step)]
        total = acc
    return np.asarray(total, dtype=np.int32)


def block_max(mask: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Logical OR over blocks (a coarse voxel is set when any fine voxel is)."""
    if all(f == 1 for f in factors):
        return mask.astype(bool, copy=True)
    pads = [(0, (-n) % f) for n, f in zip(mask.shape, factors, strict=True)]
    a = np.pad(mask, pads) if any(p[1] for p in pads) else mask
    nz, ny, nx = (n // f for n, f in zip(a.shape, factors, strict=True))
    fz, fy, fx = factors
    return a.reshape(nz, fz, ny, fy, nx, fx).any(axis=(1, 3, 5))


def upsample_nearest(
    coarse: np.ndarray,
    factors: tuple[int, ...],
    fine_shape: tuple[int, ...],
    fine_box: tuple[slice, ...] | None = None,
) -> np.ndarray:
    """Repeat each coarse voxel ``factors`` times; optionally return only the fine-grid box ``fine_box``."""
    box = fine_box or tuple(slice(0, n) for n in fine_shape)
    out = coarse
    for axis, (f, s) in enumerate(zip(factors, box, strict=True)):
        idx = np.arange(s.start, s.stop) // f
        out = np.take(out, idx, axis=axis)
    return out


def fine_box_of(coarse_box: tuple[slice, ...], factors: tuple[int, ...], fine_shape: tuple[int, ...]) -> tuple:
    """The fine-grid box covered by a coarse-grid box."""
    return tuple(
        slice(s.start * f, min(s.stop * f, n)) for s, f, n in zip(coarse_box, factors, fine_shape, strict=True)
    )


#: slices counted at a time by :func:`label_counts` (bounds the 8-byte copy ``np.bincount`` makes)
COUNT_SLAB = 8


def label_counts(labels: np.ndarray, minlength: int) -> np.ndarray:
    """``np.bincount`` of a label volume (int64 counts), slab by slab: no 8-byte copy of the whole volume."""
    counts = np.zeros(minlength, np.int64)
    for start in range(0, labels.shape[0], COUNT_SLAB):
        part = np.bincount(labels[start : start + COUNT_SLAB].ravel(), minlength=minlength)
        if part.size > counts.size:
            counts = np.concatenate([counts, np.zeros(part.size - counts.size, np.int64)])
        counts[: part.size] += part
    return counts


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the non-zero voxels of ``mask`` (as ``ndimage.find_objects``, from the projections:
    cheaper than labelling), None when it is empty."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def occupied_box(mask: np.ndarray) -> tuple[slice, ...]:
    """:func:`bounding_box` of a mask the caller knows is not empty (ValueError if it is)."""
    box = bounding_box(mask)
    if box is None:
        raise ValueError("occupied_box of an empty mask")
    return box
