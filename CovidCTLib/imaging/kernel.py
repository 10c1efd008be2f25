"""Reconstruction-kernel harmonisation: bring a sharp-kernel CT to the texture of a standard kernel.

One acquisition reconstructed with a sharp (lung, bone) kernel and with a soft (body) kernel must give the same
numbers (issue 13). A sharp kernel adds fine, high-frequency texture to the aerated lung; the networks, trained
mostly on standard-kernel images, read ground glass through that texture differently. The measure of it is the
**lung texture**: the median absolute difference between the CT and the CT smoothed in-plane with a 1 mm
Gaussian, over the voxels whose smoothed value is aerated lung (-950..-700 HU). Standard and soft kernels read
8-16 HU there (LIDC-IDRI, RICORD, Lung-PET-CT-Dx kernel B, the phantom); the sharp kernel L of the same
Lung-PET-CT-Dx scan reads 38 HU. Above ``trigger_hu`` the CT is smoothed in-plane with the smallest Gaussian
that brings the texture to ``target_hu``; below it the CT is left alone. Only HU volumes are harmonised.

The harmonised CT feeds every analysis stage; the outputs keep the original CT's geometry and the original
CT is what the result, the report pictures and Slicer show.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from CovidCTLib.volume import CTVolume

#: aerated-lung range (HU, after the 1 mm smoothing) over which the texture is measured
AERATED_LUNG_HU = (-950.0, -700.0)
#: the smoothing (mm) that separates texture from anatomy in the measure
TEXTURE_SCALE_MM = 1.0


@dataclass(frozen=True)
class KernelHarmonisation:
    """When and how far a sharp-kernel CT is smoothed (HU volumes only)."""

    enabled: bool = True
    trigger_hu: float = 20.0  # lung texture above which the kernel counts as sharp
    target_hu: float = 10.0  # texture the smoothing brings it to (soft / standard kernels: 8-16)
    sigmas_mm: tuple[float, ...] = tuple(round(0.2 * k, 1) for k in range(1, 16))  # 0.2 .. 3.0 mm
    max_slices: int = 8  # slices sampled for the measure
    min_voxels: int = 2000  # fewer aerated-lung voxels than this: no measure, no harmonisation


def _sample_slices(hu: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` evenly spread slices of the middle 60 % of the volume (where the lungs are)."""
    depth = hu.shape[0]
    lo, hi = int(depth * 0.2), max(int(depth * 0.8), int(depth * 0.2) + 1)
    index = np.unique(np.linspace(lo, hi - 1, num=min(count, hi - lo)).round().astype(int))
    return np.asarray(hu[index], dtype=np.float32)


def _in_plane(sigma_mm: float, spacing_xy: tuple[float, float]) -> tuple[float, float, float]:
    """Gaussian sigmas in voxels ``(z, y, x)`` for an in-plane smoothing of ``sigma_mm``."""
    return (0.0, sigma_mm / spacing_xy[1], sigma_mm / spacing_xy[0])


def lung_texture_hu(slices: np.ndarray, spacing_xy: tuple[float, float], min_voxels: int = 2000) -> float | None:
    """Median |CT - CT smoothed at 1 mm| over aerated lung, in HU; None when too little lung is sampled."""
    smooth = ndi.gaussian_filter(slices, _in_plane(TEXTURE_SCALE_MM, spacing_xy))
    lung = (smooth > AERATED_LUNG_HU[0]) & (smooth < AERATED_LUNG_HU[1])
    if int(np.count_nonzero(lung)) < min_voxels:
        return None
    return float(np.median(np.abs(slices - smooth)[lung]))


def choose_sigma(
    slices: np.ndarray, spacing_xy: tuple[float, float], params: KernelHarmonisation
) -> tuple[float, float | None]:
    """The smallest in-plane sigma (mm) that brings the lung texture to the target, and the texture it gives."""
    texture = None
    for sigma in params.sigmas_mm:
        smoothed = ndi.gaussian_filter(slices, _in_plane(sigma, spacing_xy))
        texture = lung_texture_hu(smoothed, spacing_xy, params.min_voxels)
        if texture is not None and texture <= params.target_hu:
            return sigma, texture
    return params.sigmas_mm[-1], texture


def harmonise_kernel(ct: CTVolume, params: KernelHarmonisation | None = None) -> tuple[CTVolume, dict[str, Any]]:
    """Return the CT to analyse (smoothed when its kernel is sharp) and what was measured and done.

    The summary (report.json ``kernel_harmonisation``) holds ``applied``, the measured ``lung_texture_hu``, the
    trigger and target, and when applied the ``sigma_mm`` and the texture after smoothing.
    """
    params = params or KernelHarmonisation()
    summary: dict[str, Any] = {
        "applied": False,
        "trigger_hu": params.trigger_hu,
        "target_hu": params.target_hu,
        "measure": "median |CT - CT smoothed in-plane at 1 mm| over aerated lung (-950..-700 HU)",
    }
    if not params.enabled or ct.intensity != "HU" or not ct.is_3d:
        summary["reason_not_applied"] = "disabled" if not params.enabled else "HU volumes only"
        return ct, summary
    spacing_xy = (float(ct.image.GetSpacing()[0]), float(ct.image.GetSpacing()[1]))
    slices = _sample_slices(sitk.GetArrayViewFromImage(ct.image), params.max_slices)
    texture = lung_texture_hu(slices, spacing_xy, params.min_voxels)
    summary["lung_texture_hu"] = None if texture is None else round(texture, 1)
    if texture is None or texture <= params.trigger_hu:
        summary["reason_not_applied"] = (
            "too little aerated lung to measure the kernel" if texture is None else "standard or soft kernel"
        )
        return ct, summary
    sigma, after = choose_sigma(slices, spacing_xy, params)
    smoothed = ndi.gaussian_filter(sitk.GetArrayFromImage(ct.image).astype(np.float32), _in_plane(sigma, spacing_xy))
    image = sitk.GetImageFromArray(smoothed)
    image.CopyInformation(ct.image)
    summary.update(applied=True, sigma_mm=sigma, lung_texture_after_hu=None if after is None else round(after, 1))
    return dataclasses.replace(ct, image=image), summary


def harmonisation_note(summary: dict[str, Any]) -> str | None:
    """The sentence the report and the console give when the CT was harmonised; None when it was not."""
    if not summary.get("applied"):
        return None
    return (
        f"Sharp reconstruction kernel detected (lung texture {summary['lung_texture_hu']:.0f} HU > "
        f"{summary['trigger_hu']:.0f}): the CT was smoothed in-plane (Gaussian sigma {summary['sigma_mm']:.1f} mm) "
        "before the analysis, so that sharp and soft kernels of one scan give the same numbers. "
        "The outputs overlay the original CT."
    )
