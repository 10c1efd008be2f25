"""A quick HU-threshold lung and infection segmentation for 2-D slices (and quick 3-D masks).

Used by ``compare`` for single HU slices (the 3-D classical segmenter needs a volume) and by tests that need
a lung mask quickly. Method (documented thresholds):

* lungs: voxels below ``-400 HU``; connected air regions touching the in-plane image border (outside air,
  table gaps) are removed; components smaller than 2 % of the largest (trachea, bowel gas) are dropped;
  each lung is closed (5 mm) and its holes filled so that dense lesions inside the lung are kept; the
  result is split into right (label 1) and left (label 2) at the lungs' mid-line along the patient's
  left-right axis (LPS +x is the patient's left);
* infection, inside the lungs: ground-glass ``-750 <= HU < -300`` (label 1), consolidation
  ``-300 <= HU <= +50`` (label 2, the classical ranges) on the smoothed HU, without the 2 mm rim along the lung wall
  (partial volume), opened with a 2 / 2.5 mm disk to remove vessels, regions under 10 mm^2 dropped (per slice).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.classical.infection import InfectionThresholds
from CovidCTLib.segmentation.sides import split_at_midline

LUNG_MAX_HU = -400.0
#: air regions whose median is below this are pure gas (bowel, outside air), not aerated lung parenchyma
GAS_MEDIAN_HU = -930.0
BODY_MIN_HU = -500.0
#: the classical method's HU classes (one definition: :class:`CovidCTLib.classical.infection.InfectionThresholds`)
GGO_RANGE = (InfectionThresholds.ggo_min_hu, InfectionThresholds.ggo_max_hu)
CONSOLIDATION_RANGE = (InfectionThresholds.consolidation_min_hu, InfectionThresholds.consolidation_max_hu)


def _in_plane_border_labels(labels: np.ndarray) -> set[int]:
    border = set(np.unique(labels[..., 0, :])) | set(np.unique(labels[..., -1, :]))
    border |= set(np.unique(labels[..., :, 0])) | set(np.unique(labels[..., :, -1]))
    return border - {0}


def quick_lungs(ct: sitk.Image) -> np.ndarray:
    """Lung labelmap (z, y, x) uint8, 1 right / 2 left, for a HU image (a 1-slice volume works too)."""
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    squeeze = hu.ndim == 2
    if squeeze:
        hu = hu[None]
    spacing = np.array(ct.GetSpacing()[::-1] if not squeeze else (1.0, *ct.GetSpacing()[::-1]), float)
    if len(spacing) == 3 and hu.shape[0] == 1:
        spacing[0] = max(spacing[0], 1.0)
    air = hu < LUNG_MAX_HU
    structure = ndimage.generate_binary_structure(3, 1)
    labels, count = ndimage.label(air, structure)
    lungs = np.zeros(hu.shape, bool)
    if count:
        drop = _in_plane_border_labels(labels)
        sizes = ndimage.sum_labels(air, labels, np.arange(1, count + 1))
        keep = [i + 1 for i in range(count) if (i + 1) not in drop]
        if keep:
            medians = ndimage.median(hu, labels, keep)
            keep = [k for k, m in zip(keep, np.atleast_1d(medians), strict=True) if m >= GAS_MEDIAN_HU]
        if keep:
            largest = max(sizes[k - 1] for k in keep)
            keep = [k for k in keep if sizes[k - 1] >= 0.02 * largest]
            lungs = np.isin(labels, keep)
    if lungs.any():
        radius = np.maximum(1, np.round(5.0 / spacing)).astype(int)
        if hu.shape[0] == 1:
            radius[0] = 0
        ball = np.ones(tuple(2 * r + 1 for r in radius), bool)
        lungs = ndimage.binary_closing(np.pad(lungs, [(r, r) for r in radius]), ball)
        lungs = lungs[tuple(slice(r, s - r) for r, s in zip(radius, lungs.shape, strict=True))]
        for z in range(lungs.shape[0]):
            lungs[z] = ndimage.binary_fill_holes(lungs[z])
    out = split_at_midline(lungs, ct)
    return out[0] if squeeze else out


def _disk(radius_mm: float, spacing_yx: tuple[float, float]) -> np.ndarray:
    ry, rx = (max(1, int(round(radius_mm / s))) for s in spacing_yx)
    yy, xx = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    return (yy * spacing_yx[0]) ** 2 + (xx * spacing_yx[1]) ** 2 <= radius_mm**2


def quick_infection(ct: sitk.Image, lungs: np.ndarray) -> np.ndarray:
    """Infection labelmap inside ``lungs`` (same shape), 1 ground-glass / 2 consolidation (HU thresholds).

    Slice by slice: HU smoothed (Gaussian, 1 mm), classes by :data:`GGO_RANGE` / :data:`CONSOLIDATION_RANGE`
    inside the lung minus a 2 mm rim, then each class mask is opened with a disk (ground glass 2 mm,
    consolidation 2.5 mm radius) so that vessels (thin, bright, with a ground-glass partial-volume rim) are
    removed, and regions under 10 mm^2 are dropped.
    """
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    squeeze = hu.ndim == 2
    if squeeze:
        hu, lungs = hu[None], np.asarray(lungs)[None]
    spacing_yx = (ct.GetSpacing()[1], ct.GetSpacing()[0])
    out = np.zeros(hu.shape, np.uint8)
    rim = max(1, int(round(2.0 / spacing_yx[1])))
    min_pixels = 10.0 / (spacing_yx[0] * spacing_yx[1])
    for z in range(hu.shape[0]):
        inside = lungs[z] > 0
        if not inside.any():
            continue
        core = ndimage.binary_erosion(inside, iterations=rim)
        smooth = ndimage.gaussian_filter(hu[z], sigma=[1.0 / s for s in spacing_yx])
        ggo = core & (smooth >= GGO_RANGE[0]) & (smooth < GGO_RANGE[1])
        con = core & (smooth >= CONSOLIDATION_RANGE[0]) & (smooth <= CONSOLIDATION_RANGE[1])
        ggo = ndimage.binary_opening(ggo, _disk(2.0, spacing_yx))
        con = ndimage.binary_opening(con, _disk(2.5, spacing_yx))
        label = np.zeros(inside.shape, np.uint8)
        label[ggo] = 1
        label[con] = 2
        labels, count = ndimage.label(label > 0)
        if count:
            sizes = ndimage.sum_labels(label > 0, labels, np.arange(1, count + 1))
            label[np.isin(labels, np.nonzero(sizes < min_pixels)[0] + 1)] = 0
        out[z] = label
    return out[0] if squeeze else out


def quick_body(ct: sitk.Image) -> np.ndarray:
    """Body mask (same shape as the image array): the largest region above -500 HU, holes filled per slice."""
    hu = sitk.GetArrayFromImage(ct)
    body = hu > BODY_MIN_HU
    labels, count = ndimage.label(body)
    if count == 0:
        return body.astype(np.uint8)
    sizes = ndimage.sum_labels(body, labels, np.arange(1, count + 1))
    body = labels == (int(np.argmax(sizes)) + 1)
    if body.ndim == 2:
        return ndimage.binary_fill_holes(body).astype(np.uint8)
    return np.stack([ndimage.binary_fill_holes(s) for s in body]).astype(np.uint8)
