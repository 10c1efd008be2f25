"""Post-processing shared by every lung segmenter: gas under the lungs, solid organs, 3-D hole filling, specks.

Arrays are LPS-oriented ``(z, y, x)`` (z grows to the head) where the function says so.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from CovidCTLib.imaging.grid import bounding_box, label_counts

SOLID_COMPONENT_HU = -200.0


GAS_HU = -600.0


GAS_MAX_SHARE = 0.25


def components_by_size(mask: np.ndarray) -> tuple[sitk.Image, np.ndarray]:
    """Face-connected components of a 3-D mask numbered by size (1 = largest; SimpleITK's order for equal
    sizes) as a SimpleITK label image, and their voxel counts in that order (int64)."""
    labelled = sitk.ConnectedComponent(sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8)), False)
    relabel = sitk.RelabelComponentImageFilter()
    relabel.SortByObjectSizeOn()
    ordered = relabel.Execute(labelled)
    return ordered, np.asarray(relabel.GetSizeOfObjectsInPixels(), dtype=np.int64)


def drop_gas_below_lungs(mask: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Remove air pockets under the lungs (stomach / bowel gas below the diaphragm) from a lung mask.

    ``mask`` and ``hu`` are LPS-oriented ``(z, y, x)`` arrays (z grows to the head). The air of the mask
    (< ``GAS_HU``) is split into 3-D components; the lungs are those of at least ``GAS_MAX_SHARE`` of the
    largest. A smaller component with most of its voxels below the lowest slice of the lungs' air is gas
    under the diaphragm: it is removed with a 2-voxel in-plane rim (the stomach or bowel wall).
    """
    air = mask & (hu < GAS_HU)
    labelled, sizes = components_by_size(air)
    del air
    n = len(sizes)
    if n < 2:
        return mask
    lab = sitk.GetArrayFromImage(labelled)
    del labelled
    boxes = ndi.find_objects(lab)
    lungs = sizes >= GAS_MAX_SHARE * sizes[0]  # sizes are sorted: the lungs are the first labels
    floor = min(boxes[i][0].start for i in np.nonzero(lungs)[0])
    below = label_counts(lab[:floor], n + 1)[1:] / np.maximum(sizes, 1)
    gas = np.nonzero(~lungs & (below > 0.5))[0]
    if len(gas) == 0:
        return mask
    out = mask.copy()
    ring = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool)
    for i in gas:
        box = (boxes[i][0], *(slice(max(b.start - 2, 0), b.stop + 2) for b in boxes[i][1:]))  # room for the rim
        rim = ndi.binary_dilation(lab[box] == i + 1, structure=ring, iterations=2)
        out[box] &= ~rim
    return out


def fill_holes_3d(mask: np.ndarray | sitk.Image) -> np.ndarray:
    """Fill the background pockets of ``mask`` (face-connected) that do not reach the volume's border.

    SimpleITK's hole filling (morphological reconstruction from the border): the pockets a labelling of the
    background finds, without a label volume. ``mask``: a numpy mask or a 0/1 SimpleITK image.
    """
    image = mask if isinstance(mask, sitk.Image) else sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(image, False, 1)).astype(bool)


def clean_lung_mask(mask: np.ndarray, hu: np.ndarray | None = None) -> np.ndarray:
    """Post-process a 3-D lung mask.

    With HU: remove gas under the lungs (:func:`drop_gas_below_lungs`), then drop per-slice 2-D components
    whose median is above ``SOLID_COMPONENT_HU`` (solid organs such as liver or spleen; lung, even with
    consolidation, contains aerated parts). Then keep the large 3-D components (>= 10 % of the largest,
    at most 2) and fill their holes in 3-D: a dense lesion enclosed by lung stays in, while the dome of
    the liver or spleen, enclosed by lung in its top slices but joined to the abdomen below, stays out.
    Works inside the mask's bounding box (one voxel of margin), which gives the same result faster.
    """
    found = bounding_box(mask)
    if found is None:
        return np.zeros(mask.shape, bool)
    box = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, dim)) for b, dim in zip(found, mask.shape, strict=True))
    out = np.zeros(mask.shape, bool)
    out[box] = _clean_lung_mask_in_box(mask[box], None if hu is None else hu[box])
    return out


def _clean_lung_mask_in_box(mask: np.ndarray, hu: np.ndarray | None) -> np.ndarray:
    mask = mask.copy()
    if hu is not None:
        mask = drop_gas_below_lungs(mask, hu)
        mask &= ~_solid_slice_components(mask, hu)
    labelled, sizes = components_by_size(mask)
    if len(sizes) == 0:
        return mask
    del mask
    kept = int(np.count_nonzero(sizes[:2] >= 0.1 * sizes[0]))  # the largest, and the second if >= 10 % of it
    return fill_holes_3d(sitk.BinaryThreshold(labelled, 1, kept, 1, 0))  # labels 1..kept: no label volume in numpy


#: in-plane 4-connectivity only: one 3-D labelling gives every slice its own 2-D components
_PLANAR = np.array([np.zeros((3, 3)), ndi.generate_binary_structure(2, 1), np.zeros((3, 3))], bool)


#: slices whose 2-D components are labelled together (bounds the label volume of the solid-component test)
SOLID_SLAB = 16


def _solid_slice_components(mask: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """The 2-D components of every slice of ``mask`` whose median HU is above ``SOLID_COMPONENT_HU``.

    Same components as labelling each slice on its own (4-connected), a slab of :data:`SOLID_SLAB` slices
    per labelling pass.
    """
    out = np.zeros(mask.shape, bool)
    for start in range(0, mask.shape[0], SOLID_SLAB):
        slab = slice(start, start + SOLID_SLAB)
        out[slab] = _solid_components_of_slab(mask[slab], hu[slab])
    return out


def _solid_components_of_slab(mask: np.ndarray, hu: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask, structure=_PLANAR)
    if n == 0:
        return np.zeros(mask.shape, bool)
    labels = lab[mask]
    values = hu[mask]
    counts = np.bincount(labels, minlength=n + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sorted_values = _sorted_by_component(labels, values)
    # median as ndimage.median: the middle value, or the mean of the two middle values
    low = sorted_values[starts + (counts - 1) // 2]
    high = sorted_values[starts + counts // 2]
    solid = np.zeros(n + 1, bool)
    solid[1:] = (low + high) / 2.0 > SOLID_COMPONENT_HU
    return solid[lab]


def _sorted_by_component(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (float64) ordered by component label, then by value.

    Integer HU within 16 bits are sorted as one int64 key (label, HU), which is faster than a two-key
    lexsort and gives the same order of values; other values use the lexsort.
    """
    if values.dtype.kind in "iu" and values.size and int(values.min()) >= -(2**15) and int(values.max()) < 2**15:
        key = (labels.astype(np.int64) << 16) | (values.astype(np.int64) + 2**15)
        key.sort()
        return ((key & 0xFFFF) - 2**15).astype(np.float64)
    return values[np.lexsort((values, labels))].astype(np.float64)


MAX_HOLE_SHARE_2D = 0.01


def clean_lung_mask_2d(mask: np.ndarray, max_hole_share: float = MAX_HOLE_SHARE_2D) -> np.ndarray:
    """Drop specks smaller than 2 % of the largest lung component; fill the holes of at most ``max_hole_share``
    of the lung's area.

    A small hole is a gap of the network (a vessel); a large enclosed region of one axial slice is usually an
    organ that bulges into the lung (the liver dome, the heart), which a slice alone cannot tell from an
    enclosed consolidation, and the network, trained to include consolidation, left it out. (Volumes fill
    their holes in 3-D, :func:`fill_holes_3d`, where such an organ is open below.)"""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum(mask, lab, range(1, n + 1))
    kept = np.isin(lab, [i + 1 for i in range(n) if sizes[i] >= 0.02 * sizes.max()])
    holes = ndi.binary_fill_holes(kept) & ~kept
    hole_lab, n_holes = ndi.label(holes)
    if n_holes == 0:
        return kept
    hole_sizes = np.bincount(hole_lab.ravel())
    small = np.flatnonzero(hole_sizes <= max_hole_share * np.count_nonzero(kept))
    return kept | np.isin(hole_lab, small[small > 0])
