"""Can this input be a chest CT (3-D) or a CT slice (2-D)? Refuse what cannot, before any analysis.

The networks and the classical method always produce *something*; on an all-zero volume, a labelmap or a
blank picture they invent lungs, lesions and a confident COVID probability. :func:`check_plausible`
refuses such inputs with one :class:`~CovidCTLib.errors.NotCTError` line saying what is wrong and what to do.

Rules (measured on a voxel subsample of large volumes; thresholds are module constants):

* every value finite (no NaN / inf), not constant, more than :data:`MAX_LABEL_VALUES` distinct values
  (a labelmap or mask has a handful of integer labels);
* Hounsfield units: at least :data:`MIN_AIR_SHARE` of the voxels below :data:`AIR_HU` (outside air and
  lungs) and at least :data:`MIN_SOFT_SHARE` around soft tissue (:data:`SOFT_HU`);
* 8-bit images: a dynamic range (1st to 99th percentile) of at least :data:`MIN_RANGE_8BIT`, a dark share
  (lungs, air) and a bright share (body, bone) relative to the image's own range (paper figures are
  windowed very differently), at least :data:`MIN_SIDE_PX` pixels a side;
* physical extent (HU images and volumes, whose spacing is known): every in-plane side at least
  :data:`MIN_INPLANE_MM`; 3-D volumes also at least :data:`MIN_CRANIOCAUDAL_MM` along the slices.

The real data this project uses (RICORD and Lung-PET-CT-Dx DICOM, LIDC NIfTI, COVID-CT figures,
COVID-19-CT-Seg and MedSeg PNG/JPG, SBU DICOM slices) and the synthetic phantom all pass with wide margins.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from CovidCTLib.errors import NotCTError
from CovidCTLib.volume import CTVolume

#: a labelmap / mask has at most this many distinct values; a CT has hundreds.
MAX_LABEL_VALUES = 16
#: HU below which a voxel is air or lung.
AIR_HU = -500.0
#: smallest share of air/lung voxels in a chest CT (real scans: about 60-70 %).
MIN_AIR_SHARE = 0.05
#: HU window of soft tissue (fat, muscle, blood, organs).
SOFT_HU = (-250.0, 250.0)
#: smallest share of soft-tissue voxels in a chest CT (real scans: about 25-35 %).
MIN_SOFT_SHARE = 0.05
#: smallest in-plane side in mm (an adult chest is about 300 mm wide; small fields of view and children
#: stay above this, a toy or a cropped patch does not).
MIN_INPLANE_MM = 100.0
#: smallest cranio-caudal extent in mm for 3-D work (the lungs span about 200-300 mm).
MIN_CRANIOCAUDAL_MM = 30.0
#: 8-bit images: smallest 1st-99th percentile range (real CT figures: 122 or more).
MIN_RANGE_8BIT = 48.0
#: 8-bit images: smallest share of pixels in the darker 40 % of the image's range (real: 6.7 % or more).
MIN_DARK_SHARE = 0.02
#: 8-bit images: smallest share of pixels in the brighter 40 % of the image's range (real: 3.3 % or more).
MIN_BRIGHT_SHARE = 0.01
#: smallest side of a 2-D image in pixels (real figures: 26 or more).
MIN_SIDE_PX = 16
#: most voxels used for the value statistics (a regular subsample of larger volumes).
SAMPLE_VOXELS = 2_000_000

_WHAT_TO_DO = {
    "3d": "Load the original chest CT (DICOM series, or a NIfTI/NRRD/MHA volume in Hounsfield units).",
    "2d": "Give an axial chest CT slice (DICOM in HU, or a PNG/JPG in a lung or mediastinal window).",
}


def _sample(array: np.ndarray) -> np.ndarray:
    """A regular subsample of at most about :data:`SAMPLE_VOXELS` values (flattened)."""
    step = max(1, int(np.ceil((array.size / SAMPLE_VOXELS) ** (1.0 / max(array.ndim, 1)))))
    sub = array[tuple(slice(None, None, step) for _ in range(array.ndim))]
    return np.asarray(sub, dtype=np.float32).ravel()


def problems(ct: CTVolume) -> list[str]:
    """Why ``ct`` cannot be a chest CT (volume) or CT slice (2-D); empty when it is plausible."""
    array = ct.array
    found: list[str] = []
    finite = np.isfinite(array) if array.dtype.kind == "f" else None
    if finite is not None and not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        return [f"{bad:,} of {array.size:,} voxels are NaN or infinite (not image data)"]
    values = _sample(array)
    lo, hi = float(values.min()), float(values.max())
    if lo == hi and float(array.min()) == float(array.max()):
        return [f"every voxel has the same value ({lo:g}); the image is blank"]
    distinct = np.unique(values)
    if distinct.size <= MAX_LABEL_VALUES and np.allclose(distinct, np.round(distinct)):
        shown = ", ".join(f"{v:g}" for v in distinct[:8]) + (" ..." if distinct.size > 8 else "")
        return [f"it holds only {distinct.size} distinct values ({shown}): a labelmap or mask, not a CT image"]
    found += _extent_problems(ct)
    found += _hu_problems(values) if ct.intensity == "HU" else _display_problems(values)
    return found


def _extent_problems(ct: CTVolume) -> list[str]:
    """Too small a field of view (mm) for a chest; 8-bit 2-D images (spacing unknown) by pixels."""
    size = ct.image.GetSize()
    if ct.intensity != "HU" and not ct.is_3d:
        if min(size[0], size[1]) < MIN_SIDE_PX:
            return [f"it is only {size[0]} x {size[1]} pixels (at least {MIN_SIDE_PX} a side is needed)"]
        return []
    spacing = ct.image.GetSpacing()
    extent = [n * s for n, s in zip(size, spacing, strict=False)]
    found = []
    if min(extent[0], extent[1]) < MIN_INPLANE_MM:
        found.append(
            f"its field of view is only {extent[0]:.0f} x {extent[1]:.0f} mm in-plane (a chest CT is at least "
            f"{MIN_INPLANE_MM:.0f} mm across)"
        )
    if ct.is_3d and len(extent) > 2 and extent[2] < MIN_CRANIOCAUDAL_MM:
        found.append(f"it covers only {extent[2]:.0f} mm cranio-caudally (at least {MIN_CRANIOCAUDAL_MM:.0f} mm)")
    return found


def _hu_problems(values: np.ndarray) -> list[str]:
    """A chest CT in HU holds air/lung and soft tissue."""
    air = float(np.mean(values < AIR_HU))
    soft = float(np.mean((values > SOFT_HU[0]) & (values < SOFT_HU[1])))
    found = []
    if air < MIN_AIR_SHARE:
        found.append(
            f"only {100 * air:.1f} % of its voxels are air or lung (below {AIR_HU:g} HU; a chest CT has at least "
            f"{100 * MIN_AIR_SHARE:.0f} %)"
        )
    if soft < MIN_SOFT_SHARE:
        found.append(
            f"only {100 * soft:.1f} % of its voxels are soft tissue ({SOFT_HU[0]:g}..{SOFT_HU[1]:g} HU; a chest CT "
            f"has at least {100 * MIN_SOFT_SHARE:.0f} %)"
        )
    return found


def _display_problems(values: np.ndarray) -> list[str]:
    """An 8-bit CT picture has contrast, dark lungs/air and bright body/bone (relative to its window)."""
    p1, p99 = (float(v) for v in np.percentile(values, [1, 99]))
    span = p99 - p1
    if span < MIN_RANGE_8BIT:
        return [
            f"its contrast is too low (1st-99th percentile {p1:g}..{p99:g}, a range of {span:g}; a CT picture "
            f"spans at least {MIN_RANGE_8BIT:g} grey levels)"
        ]
    dark = float(np.mean(values <= p1 + 0.4 * span))
    bright = float(np.mean(values >= p1 + 0.6 * span))
    found = []
    if dark < MIN_DARK_SHARE:
        found.append(f"it has almost no dark area for lungs or air ({100 * dark:.1f} % of pixels)")
    if bright < MIN_BRIGHT_SHARE:
        found.append(f"it has almost no bright area for body or bone ({100 * bright:.1f} % of pixels)")
    return found


def check_plausible(ct: CTVolume) -> CTVolume:
    """Return ``ct`` when it can be a chest CT (3-D) or CT slice (2-D); else raise :class:`NotCTError`."""
    found = problems(ct)
    if found:
        kind = "3d" if ct.is_3d else "2d"
        what = "a chest CT volume" if kind == "3d" else "a CT slice"
        raise NotCTError(f"{ct.source} does not look like {what}: {'; '.join(found)}. {_WHAT_TO_DO[kind]}")
    return ct


def check_finite(image: sitk.Image, label: str) -> None:
    """Refuse float images holding NaN or infinite values (checked at load, before any type conversion)."""
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64):
        return
    array = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise NotCTError(
            f"{label} does not look like a CT image: {bad:,} of {array.size:,} values are NaN or infinite (not "
            "image data). Re-export the CT, or replace those values (e.g. by -1024 HU outside the scan) first."
        )
