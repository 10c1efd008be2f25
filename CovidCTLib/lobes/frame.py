"""A canonical, coarse view of a CT for the lobe segmentation.

Canonical arrays are ``(s, p, l)``: axis 0 increases towards the patient's head (Superior), axis 1 towards
the back (Posterior), axis 2 towards the patient's Left, whatever the image direction (the array axis best
aligned with each patient axis is used, so oblique volumes are handled up to their obliquity). The coarse
grid is a block mean of the canonical full-resolution array, so coarse voxel ``k`` covers the fine canonical
indices ``k*f .. k*f + f - 1`` along each axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from CovidCTLib.errors import AnalysisError
from CovidCTLib.imaging.grid import block_factors
from CovidCTLib.imaging.orientation import patient_axis


@dataclass(frozen=True)
class Frame:
    """Axis permutation and flips between an image's ``(z, y, x)`` arrays and canonical ``(s, p, l)``."""

    axes: tuple[int, int, int]  # array axis holding superior, posterior, left
    signs: tuple[int, int, int]  # +1 when increasing that array index moves S / P / L

    @classmethod
    def of(cls, image: sitk.Image) -> Frame:
        """The frame of an image from its direction matrix."""
        pairs = [patient_axis(image, physical) for physical in (2, 1, 0)]
        axes = tuple(a for a, _ in pairs)
        if sorted(axes) != [0, 1, 2]:
            raise AnalysisError(
                "The image direction is too oblique to tell the patient's axes apart for the lobe segmentation; "
                "resample the CT to an axial orientation first."
            )
        return cls(axes, tuple(s for _, s in pairs))  # type: ignore[arg-type]

    def to(self, a: np.ndarray) -> np.ndarray:
        """Image-order array -> canonical view (no copy)."""
        c = np.transpose(a, self.axes)
        flips = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in self.signs)
        return c[flips]

    def back(self, c: np.ndarray) -> np.ndarray:
        """Canonical array -> image order (a contiguous copy)."""
        flips = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in self.signs)
        return np.ascontiguousarray(np.transpose(c[flips], np.argsort(self.axes)))

    def spacing(self, spacing_zyx: tuple[float, float, float]) -> tuple[float, float, float]:
        """Spacing in canonical axis order (mm)."""
        return tuple(float(spacing_zyx[a]) for a in self.axes)  # type: ignore[return-value]


def coarse_factors(
    spacing_spl: tuple[float, float, float],
    shape_spl: tuple[int, ...],
    target_mm: tuple[float, float, float],
    max_voxels: int,
) -> tuple[int, ...]:
    """Block sizes for the canonical array (target spacing: cranio-caudal, in-plane, in-plane)."""
    return block_factors(spacing_spl, target_mm, shape_spl, max_voxels=max_voxels)  # type: ignore[arg-type]


def coarse_labels(labels: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Coarse labelmap by sampling each block's centre voxel (same shape as ``block_mean``'s output)."""
    pads = [(0, (-n) % f) for n, f in zip(labels.shape, factors, strict=True)]
    a = np.pad(labels, pads, mode="edge") if any(p[1] for p in pads) else labels
    return np.ascontiguousarray(a[tuple(slice(f // 2, None, f) for f in factors)])
