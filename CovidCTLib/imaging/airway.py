"""One step of slice-to-slice airway tracking, shared by the classical lung segmentation and the landmarks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_STRUCT_2D = np.ones((3, 3), dtype=bool)


def continue_airway(
    labels: np.ndarray, areas: np.ndarray, previous: np.ndarray, hu: np.ndarray, lumen_hu: float, limit: float
) -> np.ndarray:
    """The airway on this slice: every air region overlapping ``previous`` while it stays airway-sized.

    ``labels`` / ``areas`` are this slice's labelled air regions and their voxel counts. A region larger than
    ``limit`` voxels (an airway touching a lung through partial volume) contributes only its lumen part below
    ``lumen_hu``, each lumen piece that overlaps ``previous`` and is itself at most ``limit``.
    """
    current = np.zeros_like(previous)
    for k in np.unique(labels[previous]):
        if k == 0:
            continue
        component = labels == k
        if areas[k] <= limit:
            current |= component
            continue
        lumen, count = ndimage.label(component & (hu < lumen_hu), structure=_STRUCT_2D)
        lumen_areas = np.bincount(lumen.ravel(), minlength=count + 1)
        for j in np.unique(lumen[previous]):
            if j and lumen_areas[j] <= limit:
                current |= lumen == j
    return current
