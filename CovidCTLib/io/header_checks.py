"""Header fields that volumes in mL and Hounsfield units depend on: refuse or state what is missing.

* DICOM CT without RescaleSlope / RescaleIntercept (issue 12.4): :func:`stored_values_to_hu` applies the
  rule the volume-file reader uses (:func:`CovidCTLib.io.images.decide_intensity`, rule 5): stored values
  with no negative value are raw CT numbers stored as HU + 1024 (the usual intercept -1024) and are shifted;
  signed values are taken as HU. Either way a note says so.
* DICOM without PixelSpacing (0028,0030), which is Type 1 for CT images (issue 12.5):
  :func:`require_pixel_spacing` refuses it instead of assuming 1 mm.
* NIfTI with a zero, negative or non-finite voxel size in ``pixdim`` (issue 12.5): :func:`check_nifti_pixdim`
  refuses it (ITK silently reads it as 1 mm).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import SimpleITK as sitk

from CovidCTLib.errors import GeometryError

#: the usual CT RescaleIntercept; raw CT numbers without rescale tags are HU minus this value.
CT_NUMBER_OFFSET = 1024


def stored_values_to_hu(image: sitk.Image, label: str) -> tuple[sitk.Image, str]:
    """HU image and note for DICOM CT pixels read without RescaleSlope / RescaleIntercept."""
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    lo, hi = stats.GetMinimum(), stats.GetMaximum()
    if lo < 0:
        return image, (
            f"intensity: Hounsfield units ({label} has no RescaleSlope/RescaleIntercept; stored values "
            f"{lo:g}..{hi:g} are signed and taken as HU)."
        )
    shifted = sitk.Cast(image, sitk.sitkInt32) - CT_NUMBER_OFFSET
    if lo - CT_NUMBER_OFFSET >= -32768 and hi - CT_NUMBER_OFFSET <= 32767:
        shifted = sitk.Cast(shifted, sitk.sitkInt16)
    return shifted, (
        f"intensity: Hounsfield units; {label} has no RescaleSlope/RescaleIntercept and no negative stored "
        f"value ({lo:g}..{hi:g}): taken as raw CT numbers stored as HU + {CT_NUMBER_OFFSET} and shifted by "
        f"-{CT_NUMBER_OFFSET}, as the volume-file reader does. If this is wrong, export the series with its "
        "rescale tags."
    )


def require_pixel_spacing(spacing: tuple[float, float] | None, label: str) -> tuple[float, float]:
    """The (row, column) PixelSpacing in mm; refuse a missing, zero or negative one."""
    if spacing is None or not all(math.isfinite(s) and s > 0 for s in spacing):
        given = "is missing" if spacing is None else f"is {spacing[0]:g} \\ {spacing[1]:g}"
        raise GeometryError(
            f"{label}: PixelSpacing (0028,0030) {given}, so the size of a voxel is unknown and volumes in mL "
            "would be wrong. Export the original CT images from the scanner or PACS (PixelSpacing is required "
            "for CT), or convert the series to NIfTI with the correct voxel size."
        )
    return spacing


def _nifti_pixdim(head: bytes) -> tuple[int, list[float]] | None:
    """(number of spatial dimensions, their pixdim) from the first 540 bytes of a NIfTI-1/2 file."""
    if len(head) < 348:
        return None
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr == 348:
            ndim = struct.unpack(endian + "h", head[40:42])[0]
            pixdim = list(struct.unpack(endian + "8f", head[76:108]))
            break
        if sizeof_hdr == 540 and len(head) >= 540:
            ndim = struct.unpack(endian + "q", head[16:24])[0]
            pixdim = list(struct.unpack(endian + "8d", head[104:168]))
            break
    else:
        return None
    return max(0, min(int(ndim), 3)), pixdim[1:4]


def check_nifti_pixdim(path: Path, label: str) -> None:
    """Refuse a NIfTI whose header gives a zero, negative or non-finite voxel size."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            parsed = _nifti_pixdim(fh.read(540))
    except (OSError, EOFError, zlib.error):
        return  # the completeness check reports unreadable files
    if parsed is None:
        return
    ndim, pixdim = parsed
    sizes = pixdim[:ndim]
    if not all(math.isfinite(s) and s > 0 for s in sizes):
        shown = " x ".join(f"{s:g}" for s in sizes)
        raise GeometryError(
            f"{label}: the NIfTI header gives a voxel size (pixdim) of {shown} mm, so the size of a voxel is "
            "unknown and volumes in mL would be wrong. Re-save the file with its real voxel size (e.g. from the "
            "original DICOM with dcm2niix, or set the spacing in 3D Slicer)."
        )
