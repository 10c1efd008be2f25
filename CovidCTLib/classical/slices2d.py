"""Classical 2-D segmentation of 8-bit axial CT slices (lung-window PNG/JPEG, no Hounsfield units).

Used by ``covidct segment-slices`` when no trained 2-D model is installed. Intensities of such images are
display values (windowed, often contrast-equalised), so only relative rules are possible:

* ``lung``: Otsu threshold of the smoothed slice; dark regions touching the image border are outside air
  (unless no sizeable inner region is left and no dark region touches all four sides, as in crops of the
  lung region); the largest one or two remaining
  dark regions (each at least 10 % of the largest and 0.5 % of the image) are the lungs; holes are filled
  and each lung is closed with a disk (about 4 % of the image size) so that vessels and lesions inside
  and at the lung edge are included.
* ``infection``: inside that lung mask, pixels of the smoothed slice brighter than an Otsu threshold of the
  lung pixels (and at least 15 % of the lung-to-soft-tissue intensity step above the lung median) form
  candidate opacities; thin structures (vessels) are removed by an opening, small specks dropped.
* ``lesion-type``: infection pixels brighter than half-way between the lung median and the soft-tissue
  median are consolidation (2), the others ground glass (1).

These rules are approximate (no HU); use the trained models for real work. Research software, not a diagnosis.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from CovidCTLib.errors import InputError

TASKS = ("lung", "infection", "lesion-type")


def _as_gray(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].mean(axis=-1)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise InputError(f"expected one 2-D slice (H x W or H x W x RGB), got an array of shape {a.shape}")
    return a.astype(np.float32)


def _border_labels(lab: np.ndarray) -> np.ndarray:
    b = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    return b[b > 0]


def lung_mask_2d(image: np.ndarray) -> np.ndarray:
    """Binary lung mask (bool) of one 8-bit slice (see module docstring)."""
    a = _as_gray(image)
    size = max(a.shape)
    smooth = ndimage.gaussian_filter(a, sigma=max(1.0, size / 256.0))
    if float(smooth.max() - smooth.min()) < 1e-3:
        return np.zeros(a.shape, dtype=bool)
    dark = smooth < threshold_otsu(smooth)
    dark = ndimage.binary_opening(dark, structure=disk(max(1, size // 256)))
    lab, n = ndimage.label(dark)
    if n == 0:
        return np.zeros(a.shape, dtype=bool)
    border = _border_labels(lab)
    sizes = np.bincount(lab.ravel()).astype(float)
    sizes[0] = 0
    inner = sizes.copy()
    inner[border] = 0
    largest_border = int(np.argmax(np.where(np.isin(np.arange(sizes.size), border), sizes, 0)))
    sides_touched = sum(bool(np.any(edge == largest_border)) for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]))
    if inner.max() >= 0.02 * a.size or largest_border == 0 or sides_touched == 4:
        sizes = inner
    # else: a crop of the lung region (lungs cut by the image border, no air all around): keep border regions
    if sizes.max() < 0.005 * a.size:
        return np.zeros(a.shape, dtype=bool)
    order = np.argsort(sizes)[::-1][:2]
    keep = [k for k in order if sizes[k] >= max(0.1 * sizes[order[0]], 0.005 * a.size)]
    radius = max(2, int(round(0.04 * size)))
    out = np.zeros(a.shape, dtype=bool)
    for k in keep:
        lung = ndimage.binary_fill_holes(lab == k)
        padded = np.pad(lung, radius + 1)
        closed = ndimage.binary_closing(padded, structure=disk(radius))[
            radius + 1 : -radius - 1, radius + 1 : -radius - 1
        ]
        out |= ndimage.binary_fill_holes(closed)
    return out


def _infection_2d(a: np.ndarray, lung: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Infection mask plus the smoothed slice and the lung / soft-tissue reference intensities."""
    size = max(a.shape)
    smooth = ndimage.gaussian_filter(a, sigma=max(1.5, 1.5 * size / 256.0))
    empty = np.zeros(a.shape, dtype=bool)
    if np.count_nonzero(lung) < 50:
        return empty, smooth, 0.0, 0.0
    lung_values = smooth[lung]
    lung_median = float(np.median(lung_values))
    body = ndimage.binary_fill_holes(smooth >= threshold_otsu(smooth)) & ~lung
    tissue = smooth[body] if np.count_nonzero(body) > 50 else smooth[~lung]
    tissue_median = float(np.median(tissue))
    step = max(tissue_median - lung_median, 1.0)
    threshold = max(float(threshold_otsu(lung_values)), lung_median + 0.15 * step)
    candidate = lung & (smooth > threshold)
    candidate = ndimage.binary_opening(candidate, structure=disk(max(1, int(round(2 * size / 256)))))
    lab, n = ndimage.label(candidate)
    if n:
        sizes = np.bincount(lab.ravel())
        small = sizes < max(20, int(0.0003 * a.size))
        small[0] = False
        candidate[small[lab]] = False
    return candidate, smooth, lung_median, tissue_median


def segment_slice_classical(image_uint8: np.ndarray, task: str) -> np.ndarray:
    """Classical 2-D segmentation of one 8-bit slice.

    Args:
        image_uint8: ``H x W`` (or ``H x W x 3``) display-range slice (lung window).
        task: ``"lung"`` (0/1), ``"infection"`` (0/1) or ``"lesion-type"`` (0 none, 1 ground glass,
            2 consolidation).

    Returns:
        uint8 ``H x W`` mask.
    """
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    a = _as_gray(image_uint8)
    lung = lung_mask_2d(a)
    if task == "lung":
        return lung.astype(np.uint8)
    infection, smooth, lung_median, tissue_median = _infection_2d(a, lung)
    if task == "infection":
        return infection.astype(np.uint8)
    out = np.zeros(a.shape, dtype=np.uint8)
    out[infection] = 1
    out[infection & (smooth >= lung_median + 0.5 * (tissue_median - lung_median))] = 2
    return out
