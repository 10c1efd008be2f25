"""Volume files (NIfTI, NRRD, MetaImage) and 2-D images (PNG, JPEG, BMP, TIFF), with the HU / 8-bit rule.

Intensity rule for volume files (:func:`decide_intensity`), applied to the value range of the whole image:

1. unsigned 8-bit pixels -> ``"8bit"``;
2. minimum below -500 -> ``"HU"`` (air is about -1000 HU; display images never go that low);
3. all values within 0..255 -> ``"8bit"`` (a float image within 0..1 is scaled by 255 first);
4. negative values (minimum -500..0) and maximum above 255 -> ``"HU"`` (a signed CT without air, e.g. cropped);
5. no negative values and maximum above 255 -> raw CT numbers stored without rescale: taken as HU + 1024
   (the usual CT intercept) and shifted by -1024, with a note;
6. anything else (small negative values, maximum 255 or less) -> ``"HU"`` with a note that it is ambiguous.

Every decision is recorded in ``CTVolume.notes``.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CovidCTLib.errors import InputError, NotCTError
from CovidCTLib.io.checks import check_size, check_slices
from CovidCTLib.io.header_checks import check_nifti_pixdim
from CovidCTLib.io.plausibility import check_finite
from CovidCTLib.progress import Reporter
from CovidCTLib.volume import CTVolume

VOLUME_SUFFIXES = {".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
SEGMENT_SLICES_HINT = "use `covidct segment-slices` for 2-D images"


def suffix_of(path: Path) -> str:
    """Lower-case file suffix, with ``.nii.gz`` kept as one suffix."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _min_max(image: sitk.Image) -> tuple[float, float]:
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    return stats.GetMinimum(), stats.GetMaximum()


def _to_hu_type(image: sitk.Image, lo: float, hi: float) -> sitk.Image:
    """Integral HU images become int16 when they fit, everything else float32."""
    integral = image.GetPixelID() in (
        sitk.sitkInt8,
        sitk.sitkUInt8,
        sitk.sitkInt16,
        sitk.sitkUInt16,
        sitk.sitkInt32,
        sitk.sitkUInt32,
        sitk.sitkInt64,
        sitk.sitkUInt64,
    )
    if integral and lo >= -32768 and hi <= 32767:
        return image if image.GetPixelID() == sitk.sitkInt16 else sitk.Cast(image, sitk.sitkInt16)
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


def decide_intensity(image: sitk.Image, label: str) -> tuple[sitk.Image, str, str]:
    """Apply the module's HU / 8-bit rule; return (converted image, ``"HU"``/``"8bit"``, note)."""
    lo, hi = _min_max(image)
    pid = image.GetPixelID()
    rng = f"values {lo:g}..{hi:g}"
    if pid == sitk.sitkUInt8:
        return image, "8bit", f"intensity: 8-bit (unsigned 8-bit pixels, {rng}); not Hounsfield units."
    if lo < -500:
        return _to_hu_type(image, lo, hi), "HU", f"intensity: Hounsfield units ({rng}: air below -500)."
    if lo >= 0 and hi <= 255:
        if pid in (sitk.sitkFloat32, sitk.sitkFloat64) and hi <= 1.0:
            image = image * 255.0
            note = f"intensity: 8-bit ({rng}, normalised 0..1 floats scaled to 0..255); not Hounsfield units."
        else:
            note = f"intensity: 8-bit ({rng}, within 0..255); not Hounsfield units."
        image = sitk.Cast(
            sitk.Clamp(sitk.Round(sitk.Cast(image, sitk.sitkFloat32)), lowerBound=0, upperBound=255), sitk.sitkUInt8
        )
        return image, "8bit", note
    if lo < 0 and hi > 255:
        return _to_hu_type(image, lo, hi), "HU", f"intensity: Hounsfield units ({rng}: signed, wide range)."
    if lo >= 0:
        shifted = (
            sitk.Cast(image, sitk.sitkFloat32) - 1024.0
            if pid in (sitk.sitkFloat32, sitk.sitkFloat64)
            else sitk.Cast(image, sitk.sitkInt32) - 1024
        )
        return (
            _to_hu_type(shifted, lo - 1024, hi - 1024),
            "HU",
            f"intensity: {label} has no negative values ({rng}); taken as raw CT numbers stored as HU + 1024 "
            "and shifted by -1024. If this is wrong, convert the file to Hounsfield units first.",
        )
    return (
        _to_hu_type(image, lo, hi),
        "HU",
        f"intensity: ambiguous range ({rng}); assumed Hounsfield units. Check the result.",
    )


def _luminance(image: sitk.Image) -> sitk.Image:
    """Colour (RGB/RGBA) to one grey float channel (ITU-R 601 weights)."""
    channels = [sitk.VectorIndexSelectionCast(image, i, sitk.sitkFloat32) for i in range(3)]
    return channels[0] * 0.299 + channels[1] * 0.587 + channels[2] * 0.114


def _read_information(path: Path, label: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(
            f"{label} cannot be read: the file is corrupt, truncated or not a {suffix_of(path)} image "
            f"({_itk_reason(exc)}). Re-copy or re-export it."
        ) from exc
    return reader


def _itk_reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def _execute(reader: sitk.ImageFileReader, label: str) -> sitk.Image:
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(
            f"{label} cannot be read: its pixel data is corrupt or truncated ({_itk_reason(exc)}). "
            "Re-copy or re-export the file."
        ) from exc


def _nifti_expected_bytes(head: bytes) -> int | None:
    """Header size + voxel bytes a NIfTI-1/2 file must hold, from its first 540 bytes (None if unknown)."""
    if len(head) < 348:
        return None
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if sizeof_hdr == 540 and len(head) >= 540:
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            vox_offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        return None
    n = int(np.prod([max(int(d), 1) for d in dims[1 : 1 + max(0, min(int(dims[0]), 7))]]))
    return max(vox_offset, sizeof_hdr) + n * max(int(bitpix), 8) // 8


def check_nifti_complete(path: Path, label: str) -> None:
    """Refuse truncated NIfTI files (ITK's NIfTI reader silently pads missing voxel data)."""
    gz = suffix_of(path) == ".nii.gz"
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as fh:
            expected = _nifti_expected_bytes(fh.read(540))
            if expected is None:
                return  # not a NIfTI header we know; ITK's own check decides
            if gz:
                total = 540
                while chunk := fh.read(1 << 24):
                    total += len(chunk)
            else:
                total = path.stat().st_size
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(
            f"{label} cannot be read: the compressed data is truncated or corrupt ({exc}). Re-copy or "
            "re-export the file."
        ) from exc
    if total < expected:
        raise InputError(
            f"{label} is truncated: it holds {total:,} bytes of the {expected:,} its header announces "
            "(corrupt or incomplete copy). Re-copy or re-export the file."
        )


def _as_slice_volume(image: sitk.Image) -> sitk.Image:
    """A 2-D image as a 1-slice 3-D image (z spacing 1 mm)."""
    vol = sitk.JoinSeries([image])
    return vol


def load_volume_file(path: Path, require_3d: bool, reporter: Reporter | None = None) -> CTVolume:
    """Load a NIfTI, NRRD or MetaImage file as a CTVolume (HU or 8-bit by the module rule)."""

    label = str(path)
    reader = _read_information(path, label)
    size = reader.GetSize()
    dim = reader.GetDimension()
    if dim == 4 and size[3] == 1:
        size = size[:3]
    elif dim > 3:
        raise InputError(
            f"{label} is a {dim}-D image {size} (time series or multi-volume); extract one 3-D CT volume "
            "(e.g. in Slicer or with SimpleITK) and load that."
        )
    if reader.GetNumberOfComponents() > 1:
        raise InputError(
            f"{label} has {reader.GetNumberOfComponents()} components per voxel (colour or vector image); "
            "CovidCT needs a single-channel CT volume."
        )
    n_voxels = int(np.prod(size))
    check_size(n_voxels, label)
    n_slices = size[2] if len(size) == 3 else 1
    if require_3d:
        if n_slices == 1:
            raise NotCTError(f"{label} is a single 2-D slice; 3-D analysis needs a CT volume ({SEGMENT_SLICES_HINT}).")
        check_slices(n_slices, label)
    if reporter is not None:
        reporter.update("load", 0.3, f"reading {path.name}")
    if suffix_of(path) in (".nii", ".nii.gz"):
        check_nifti_complete(path, label)
        check_nifti_pixdim(path, label)  # issue 12.5 hook: a zero voxel size is refused, not read as 1 mm
    image = _execute(reader, label)
    check_finite(image, label)  # issue 12.1 hook: NaN / inf are refused before the intensity rule hides them
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    if image.GetDimension() == 2:
        image = _as_slice_volume(image)
    image, intensity, note = decide_intensity(image, label)
    fmt = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD"}.get(suffix_of(path), "MetaImage")
    return CTVolume(image=image, intensity=intensity, source=str(path), notes=[note], metadata={"format": fmt})


def load_2d_image(path: Path, require_3d: bool) -> CTVolume:
    """Load a PNG/JPEG/BMP/TIFF slice as an 8-bit greyscale 1-slice volume (slice-level work only)."""
    label = str(path)
    if require_3d:
        raise NotCTError(
            f"{label} is a 2-D image; the 3-D analysis needs a CT volume (DICOM series, NIfTI, NRRD or MHA). "
            f"To analyse single slices, {SEGMENT_SLICES_HINT}."
        )
    notes = []
    try:
        image = _execute(_read_information(path, label), label)
    except InputError:
        # issue 12.12 hook: valid files SimpleITK cannot decode (grey + alpha PNG) are read with Pillow
        from CovidCTLib.io.pillow_reader import read_with_pillow

        decoded = read_with_pillow(path)
        if decoded is None:
            raise
        image = decoded[0]
        notes += [decoded[1]] if decoded[1] else []
    check_finite(image, label)  # issue 12.1 hook
    if image.GetNumberOfComponentsPerPixel() >= 3:
        image = _luminance(image)
        notes.append("colour image converted to greyscale (luminance).")
    elif image.GetNumberOfComponentsPerPixel() == 2:  # grey + alpha
        image = sitk.VectorIndexSelectionCast(image, 0, sitk.sitkFloat32)
    if image.GetDimension() == 3:
        if image.GetSize()[2] != 1:
            raise InputError(
                f"{label} is a multi-page image ({image.GetSize()[2]} pages); save the pages as separate "
                "images or convert the stack to a NIfTI volume."
            )
        image = image[:, :, 0]
    if image.GetPixelID() != sitk.sitkUInt8:
        lo, hi = _min_max(image)
        if lo >= 0 and hi <= 255:
            image = sitk.Cast(sitk.Round(sitk.Cast(image, sitk.sitkFloat32)), sitk.sitkUInt8)
        else:
            image = sitk.Cast(sitk.RescaleIntensity(sitk.Cast(image, sitk.sitkFloat32), 0, 255), sitk.sitkUInt8)
            notes.append(f"values {lo:g}..{hi:g} rescaled linearly to 0..255.")
    image.SetSpacing((1.0, 1.0))
    image.SetOrigin((0.0, 0.0))
    image.SetDirection((1.0, 0.0, 0.0, 1.0))
    notes.append("intensity: 8-bit greyscale image (not Hounsfield units); pixel spacing unknown, 1 mm assumed.")
    return CTVolume(
        image=_as_slice_volume(image),
        intensity="8bit",
        source=str(path),
        notes=notes,
        metadata={"format": suffix_of(path).lstrip(".").upper()},
    )
