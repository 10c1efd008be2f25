"""DICOM CT series: find series in a folder, choose one, check its geometry, read it.

Headers come from pydicom (``stop_before_pixels``, fast); pixel data from SimpleITK's GDCM reader, which
decodes compressed transfer syntaxes (JPEG lossless included). The geometry of the returned image is
computed here from ImagePositionPatient / ImageOrientationPatient / PixelSpacing, after checks that the
slices form one regular, untilted stack.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from CovidCTLib.errors import GeometryError, InputError, NotCTError
from CovidCTLib.io.checks import check_size, check_slices
from CovidCTLib.io.header_checks import require_pixel_spacing, stored_values_to_hu
from CovidCTLib.io.notices import unreadable_files_warning
from CovidCTLib.progress import Reporter
from CovidCTLib.volume import CTVolume

#: relative deviation of one slice gap from the median gap that is tolerated (jitter); above: refused.
SPACING_TOLERANCE = 0.10
#: in-plane offset of slice positions from the slice normal, in pixels, above which the stack is tilted.
TILT_TOLERANCE_PIXELS = 0.5
#: modalities that are images but not CT (refused with NotCTError).
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}


@dataclass
class SliceHeader:
    """The header fields of one DICOM image file that the loader needs."""

    path: Path
    ds: pydicom.Dataset
    series_uid: str
    modality: str
    image_type: tuple[str, ...]
    rows: int
    columns: int
    frames: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    instance: int

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    @property
    def normal(self) -> np.ndarray | None:
        if self.orientation is None:
            return None
        return np.cross(self.orientation[:3], self.orientation[3:])


@dataclass
class Scan:
    """Result of scanning files: readable image headers and files that looked like DICOM but failed."""

    headers: list[SliceHeader] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    non_image: int = 0


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.size == n else None


def read_header(path: Path) -> SliceHeader | None:
    """Parse one file's header; None when it is a DICOM object without pixel data (SR, RTSTRUCT...).

    Raises InvalidDicomError for non-DICOM files and other exceptions for corrupt ones.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    modality = str(ds.get("Modality", "") or "").upper()
    if "Rows" not in ds or "Columns" not in ds or modality in NON_IMAGE_MODALITIES:
        return None
    spacing = _floats(ds.get("PixelSpacing"), 2) if "PixelSpacing" in ds else None
    image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or ()))
    return SliceHeader(
        path=path,
        ds=ds,
        series_uid=str(ds.get("SeriesInstanceUID", "") or f"no-series-uid:{path.parent}"),
        modality=modality,
        image_type=image_type,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        position=_floats(ds.get("ImagePositionPatient"), 3) if "ImagePositionPatient" in ds else None,
        orientation=_floats(ds.get("ImageOrientationPatient"), 6) if "ImageOrientationPatient" in ds else None,
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing is not None else None,
        instance=int(ds.get("InstanceNumber", 0) or 0),
    )


def scan_files(files: Iterable[Path], reporter: Reporter | None = None, total: int = 0) -> Scan:
    """Read the headers of ``files``; non-DICOM files are ignored unless they carry a DICOM suffix."""
    scan = Scan()
    for i, path in enumerate(files):
        if reporter is not None and total and i % 50 == 0:
            reporter.update("load", 0.3 * i / total, f"reading DICOM headers ({i}/{total})")
        if path.name.upper() == "DICOMDIR":
            continue
        try:
            header = read_header(path)
        except InvalidDicomError as exc:
            if path.suffix.lower() in DICOM_SUFFIXES:
                scan.unreadable.append((path, f"not a valid DICOM file ({exc})"))
            continue
        except Exception as exc:  # pydicom raises many types on truncated/garbled files
            scan.unreadable.append((path, f"{type(exc).__name__}: {exc}"))
            continue
        if header is None:
            scan.non_image += 1
        else:
            scan.headers.append(header)
    return scan


def group_series(headers: Sequence[SliceHeader]) -> dict[str, list[SliceHeader]]:
    """Group headers by SeriesInstanceUID (insertion order kept)."""
    groups: dict[str, list[SliceHeader]] = {}
    for h in headers:
        groups.setdefault(h.series_uid, []).append(h)
    return groups


def describe_series(slices: Sequence[SliceHeader]) -> str:
    ds = slices[0].ds
    desc = str(ds.get("SeriesDescription", "") or "").strip()
    number = ds.get("SeriesNumber", "")
    label = f"series {number}" if number not in ("", None) else "series"
    if desc:
        label += f" '{desc}'"
    return f"{label} ({slices[0].modality or 'no modality'}, {len(slices)} image(s), UID {slices[0].series_uid})"


def _n_images(slices: Sequence[SliceHeader]) -> int:
    return sum(s.frames for s in slices)


def choose_series(groups: dict[str, list[SliceHeader]], where: str) -> tuple[list[SliceHeader], list[str]]:
    """Pick the CT series with the most images; return it and notes about every series skipped."""
    candidates: list[list[SliceHeader]] = []
    rejected: list[tuple[list[SliceHeader], str]] = []
    for slices in groups.values():
        modality = slices[0].modality
        if modality not in ("CT", "", "OT"):
            rejected.append((slices, f"modality {modality}, not CT"))
        elif all(s.is_localizer for s in slices):
            rejected.append((slices, "scout/localizer images"))
        else:
            candidates.append(slices)
    if not candidates:
        reasons = "; ".join(f"{describe_series(s)}: {why}" for s, why in rejected)
        if any("localizer" in why for _, why in rejected) and all("localizer" in why for _, why in rejected):
            raise NotCTError(
                f"{where} holds only scout/localizer images ({reasons}); load the axial CT series instead."
            )
        raise NotCTError(
            f"{where} holds no CT series ({reasons}); CovidCT analyses chest CT only - select a CT series."
        )
    candidates = [[s for s in c if not s.is_localizer] for c in candidates]
    candidates.sort(key=_n_images, reverse=True)
    chosen = candidates[0]
    notes = [f"skipped {describe_series(s)}: {why}" for s, why in rejected]
    n_scouts = sum(s.is_localizer for s in groups[chosen[0].series_uid])
    if n_scouts:
        notes.append(f"left out {n_scouts} scout/localizer image(s) found inside the chosen series")
    notes += [
        f"skipped {describe_series(s)}: fewer images than the chosen series ({_n_images(chosen)})"
        for s in candidates[1:]
    ]
    return chosen, notes


@dataclass
class StackGeometry:
    """Sorted slices of one series and the geometry they define."""

    slices: list[SliceHeader]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]


def _check_consistent(slices: Sequence[SliceHeader], label: str) -> None:
    """Refuse a series whose slices differ in size, pixel spacing or orientation."""
    first = slices[0]
    for s in slices[1:]:
        problem = None
        if (s.rows, s.columns) != (first.rows, first.columns):
            problem = f"image sizes {first.columns}x{first.rows} and {s.columns}x{s.rows}"
        elif (s.orientation is None) != (first.orientation is None) or (
            s.orientation is not None and not np.allclose(s.orientation, first.orientation, atol=1e-4)
        ):
            problem = "different ImageOrientationPatient"
        elif s.pixel_spacing != first.pixel_spacing and (
            s.pixel_spacing is None
            or first.pixel_spacing is None
            or not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4)
        ):
            problem = f"pixel spacings {first.pixel_spacing} and {s.pixel_spacing}"
        if problem:
            raise GeometryError(
                f"{label} mixes images with {problem} ({first.path.name} vs {s.path.name}); it is not one "
                "volume. Export each reconstruction/orientation as its own series (or folder) and load one."
            )


def stack_geometry(slices: Sequence[SliceHeader], label: str) -> StackGeometry:
    """Sort slices along the slice normal and check the stack: no tilt, no duplicates, even spacing."""
    _check_consistent(slices, label)
    first = slices[0]
    if first.orientation is None or any(s.position is None for s in slices):
        raise GeometryError(
            f"{label} has no ImagePositionPatient/ImageOrientationPatient, so its 3-D geometry is unknown; "
            "export the original CT images from the scanner or PACS (not secondary captures)."
        )
    row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise GeometryError(f"{label} has an invalid ImageOrientationPatient; re-export the series.")
    normal = normal / norm
    positions = np.array([s.position for s in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    sy, sx = require_pixel_spacing(first.pixel_spacing, label)  # issue 12.5 hook: no 1 mm guess
    n = len(slices)
    if n == 1:
        thickness = float(first.ds.get("SliceThickness", 0) or 0) or 1.0
        spacing_z = float(first.ds.get("SpacingBetweenSlices", 0) or 0) or thickness
    else:
        gaps = np.diff(along)
        dup = np.nonzero(gaps < 1e-3)[0]
        if dup.size:
            raise GeometryError(
                f"{label} has {dup.size} repeated slice position(s) "
                f"(e.g. {slices[dup[0]].path.name} and {slices[dup[0] + 1].path.name} at "
                f"{along[dup[0]]:.2f} mm): it holds several acquisitions or phases in one series. Export one "
                "acquisition per series (or split the folder) and load that."
            )
        offsets = positions - positions[0]
        perpendicular = offsets - np.outer(offsets @ normal, normal)
        drift = float(np.linalg.norm(perpendicular, axis=1).max())
        if drift > TILT_TOLERANCE_PIXELS * min(sx, sy):
            span = float(along[-1] - along[0])
            angle = math.degrees(math.atan2(drift, abs(span))) if span else 90.0
            raise GeometryError(
                f"{label} is a gantry-tilted (or sheared) acquisition: slice positions drift {drift:.2f} mm "
                f"sideways over {span:.1f} mm (about {angle:.1f} degrees off the slice normal). CovidCT refuses "
                "tilted stacks because lesion volumes and overlays would be wrong; resample/untilt the series "
                "first (e.g. Slicer's DICOM loader with gantry tilt correction, or dcm2niix) and load the result."
            )
        median = float(np.median(gaps))
        deviation = np.abs(gaps - median) / median
        bad = np.nonzero(deviation > SPACING_TOLERANCE)[0]
        if bad.size:
            i = int(bad[np.argmax(deviation[bad])])
            raise GeometryError(
                f"{label} has non-uniform slice spacing: the gap between {slices[i].path.name} "
                f"(slice {i + 1}, at {along[i]:.2f} mm) and {slices[i + 1].path.name} (slice {i + 2}, at "
                f"{along[i + 1]:.2f} mm) is {gaps[i]:.2f} mm where the usual spacing is {median:.2f} mm "
                f"({bad.size} irregular gap(s)); slices are probably missing. Re-export the complete series "
                "or resample it to uniform spacing first."
            )
        spacing_z = float(along[-1] - along[0]) / (n - 1)
    direction = np.column_stack([row / np.linalg.norm(row), col / np.linalg.norm(col), normal])
    return StackGeometry(
        slices=list(slices),
        origin=tuple(float(v) for v in positions[0]),
        spacing=(float(sx), float(sy), float(spacing_z)),
        direction=tuple(float(v) for v in direction.ravel()),
    )


def _integral_rescale(slices: Sequence[SliceHeader]) -> bool:
    for s in slices:
        slope = float(s.ds.get("RescaleSlope", 1) or 1)
        intercept = float(s.ds.get("RescaleIntercept", 0) or 0)
        if slope != 1.0 or intercept != round(intercept):
            return False
    return True


def _find_bad_file(files: Sequence[str]) -> str | None:
    for f in files:
        try:
            sitk.ReadImage(f)
        except RuntimeError:
            return f
    return None


def read_pixels(files: Sequence[str], integral: bool, label: str) -> sitk.Image:
    """Read the pixel data of sorted slice files (rescale applied by GDCM) as int16 or float32."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.SetOutputPixelType(sitk.sitkInt32 if integral else sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        bad = _find_bad_file(files) if len(files) > 1 else files[0]
        where = f"{bad}" if bad else label
        raise InputError(
            f"Could not decode the pixel data of {where}: the file is truncated, corrupt or uses an "
            f"unsupported compression ({str(exc).strip().splitlines()[-1][:200]}). Re-export or re-copy the "
            "series from the source."
        ) from exc
    if integral:
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        if stats.GetMinimum() >= -32768 and stats.GetMaximum() <= 32767:
            image = sitk.Cast(image, sitk.sitkInt16)
    return image


def _date(ds: pydicom.Dataset) -> str | None:
    for key in ("AcquisitionDate", "SeriesDate", "StudyDate", "ContentDate"):
        value = str(ds.get(key, "") or "").strip()
        if value:
            return value[:8]
    return None


def _patient(ds: pydicom.Dataset) -> dict[str, str]:
    fields = {"name": "PatientName", "id": "PatientID", "birth_date": "PatientBirthDate", "sex": "PatientSex"}
    out = {}
    for key, tag in fields.items():
        value = str(ds.get(tag, "") or "").strip()
        if value:
            out[key] = value
    return out


def _uid(ds: pydicom.Dataset, key: str) -> str | None:
    value = str(ds.get(key, "") or "").strip()
    return value or None


def build_volume(
    slices: Sequence[SliceHeader],
    source: Path,
    label: str,
    notes: list[str],
    require_3d: bool,
    reporter: Reporter | None = None,
) -> CTVolume:
    """Check geometry of the chosen series, read its pixels and wrap everything as a CTVolume."""

    first = slices[0]
    if first.is_localizer:
        raise NotCTError(f"{label} is a scout/localizer image, not an axial CT; load the axial CT series.")
    multiframe = len(slices) == 1 and first.frames > 1
    n_images = first.frames if multiframe else len(slices)
    check_size(first.columns * first.rows * n_images, label)
    if require_3d:
        check_slices(n_images, label, single_from_ct=n_images == 1)
    notes = list(notes)
    if first.modality in ("", "OT"):
        notes.append(f"{label}: DICOM modality is '{first.modality or 'missing'}'; treated as CT.")
    ds = first.ds
    has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds
    bits = int(ds.get("BitsAllocated", 16) or 16)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    if reporter is not None:
        reporter.update("load", 0.35, f"reading pixel data of {n_images} image(s)")
    if not multiframe:  # enhanced multi-frame CT keeps PixelSpacing in its functional groups (GDCM reads it)
        require_pixel_spacing(first.pixel_spacing, label)  # issue 12.5 hook
    if multiframe or (len(slices) == 1 and (first.position is None or first.orientation is None)):
        geometry = None
        files = [str(first.path)]
        image = read_pixels(files, _integral_rescale(slices), label)
        if multiframe:
            notes.append(f"{label}: multi-frame DICOM; geometry taken from the GDCM reader.")
    else:
        geometry = stack_geometry(slices, label)
        files = [str(s.path) for s in geometry.slices]
        image = read_pixels(files, _integral_rescale(slices), label)
    if image.GetNumberOfComponentsPerPixel() > 1:
        image = sitk.Cast(
            sitk.VectorIndexSelectionCast(image, 0, sitk.sitkFloat32) * 0.299
            + sitk.VectorIndexSelectionCast(image, 1, sitk.sitkFloat32) * 0.587
            + sitk.VectorIndexSelectionCast(image, 2, sitk.sitkFloat32) * 0.114,
            sitk.sitkUInt8,
        )
        notes.append(f"{label}: colour ({photometric}) DICOM converted to greyscale.")
    if image.GetDimension() == 2:
        image = sitk.JoinSeries([image])
    if geometry is not None:
        image.SetOrigin(geometry.origin)
        image.SetSpacing(geometry.spacing)
        image.SetDirection(geometry.direction)
    if has_rescale:
        intensity = "HU"
        notes.append("intensity: Hounsfield units (DICOM CT with RescaleSlope/RescaleIntercept applied)")
    elif first.modality == "CT" and bits > 8 and image.GetNumberOfComponentsPerPixel() == 1:
        intensity = "HU"
        image, note = stored_values_to_hu(image, label)  # issue 12.4 hook: HU + 1024 detected and stated
        notes.append(note)
    else:
        intensity = "8bit"
        image = sitk.Cast(sitk.Clamp(image, lowerBound=0, upperBound=255), sitk.sitkUInt8)
        notes.append("intensity: 8-bit display values (DICOM without rescale to HU); not Hounsfield units.")
    padding = ds.get("PixelPaddingValue")
    metadata: dict[str, Any] = {
        "format": "DICOM",
        "transfer_syntax": str(getattr(ds.file_meta, "TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else "",
        "series_description": str(ds.get("SeriesDescription", "") or ""),
        "series_number": str(ds.get("SeriesNumber", "") or ""),
        "sop_instance_uids": [str(s.ds.get("SOPInstanceUID", "")) for s in (geometry.slices if geometry else slices)],
        "slice_thickness": float(ds.get("SliceThickness", 0) or 0) or None,
        "convolution_kernel": str(ds.get("ConvolutionKernel", "") or ""),
        "manufacturer": str(ds.get("Manufacturer", "") or ""),
    }
    if padding is not None and has_rescale:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        metadata["pixel_padding_hu"] = float(padding) * slope + intercept
        notes.append(
            f"voxels outside the scanner's field of view hold the DICOM padding value "
            f"{metadata['pixel_padding_hu']:g} HU (kept as is)."
        )
    return CTVolume(
        image=image,
        intensity=intensity,
        source=str(source),
        modality=first.modality or None,
        series_uid=_uid(ds, "SeriesInstanceUID"),
        study_uid=_uid(ds, "StudyInstanceUID"),
        frame_of_reference_uid=_uid(ds, "FrameOfReferenceUID"),
        acquisition_date=_date(ds),
        patient=_patient(ds),
        dicom_files=files,
        notes=notes,
        metadata=metadata,
    )


def _listing(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in pattern if p.is_file() and not p.name.startswith("."))


def unreadable_error(where: str, scan: Scan) -> InputError:
    path, why = scan.unreadable[0]
    return InputError(
        f"{where}: {len(scan.unreadable)} file(s) look like DICOM but cannot be read (e.g. {path.name}: "
        f"{why[:200]}); they are truncated or corrupt. Re-copy or re-export them from the source."
    )


def load_dicom_folder(folder: Path, require_3d: bool, reporter: Reporter | None = None) -> CTVolume:
    """Load the largest CT series found (recursively) under ``folder``."""
    files = _listing(folder, recursive=True)
    if not files:
        raise InputError(f"The folder {folder} is empty; point to a folder of DICOM CT images or a volume file.")
    scan = scan_files(files, reporter, total=len(files))
    if not scan.headers:
        if scan.unreadable:
            raise unreadable_error(str(folder), scan)
        from CovidCTLib.io.images import VOLUME_SUFFIXES, suffix_of

        volumes = [f for f in files if suffix_of(f) in VOLUME_SUFFIXES]
        hint = (
            f" It holds {len(volumes)} volume file(s) (e.g. {volumes[0].name}); pass the file itself."
            if volumes
            else ""
        )
        raise InputError(
            f"No readable DICOM images found in {folder} ({len(files)} file(s) checked, "
            f"{scan.non_image} non-image DICOM object(s)).{hint} Point to a folder of DICOM CT images, or a "
            "NIfTI/NRRD/MHA volume file."
        )
    chosen, notes = choose_series(group_series(scan.headers), str(folder))
    if scan.unreadable:
        notes.append(unreadable_files_warning(folder, scan.unreadable))  # issue 12.11 hook: a visible warning
    return build_volume(chosen, folder, describe_series(chosen), notes, require_3d, reporter)


def load_dicom_file(path: Path, require_3d: bool, reporter: Reporter | None = None) -> CTVolume:
    """Load one DICOM file, or the whole series it belongs to when its siblings are in the same folder."""
    try:
        header = read_header(path)
    except Exception as exc:
        raise InputError(
            f"{path} cannot be read as DICOM ({type(exc).__name__}: {str(exc)[:200]}); the file is corrupt, "
            "truncated or not DICOM. Re-copy or re-export it from the source."
        ) from exc
    if header is None:
        raise InputError(
            f"{path} is a DICOM object without image pixels (e.g. a report or structure set); load a CT image "
            "series instead."
        )
    label = describe_series([header])
    if header.modality not in ("CT", "", "OT"):
        raise NotCTError(
            f"{path} is modality {header.modality}, not CT; CovidCT analyses chest CT only - select a CT series."
        )
    if header.is_localizer:
        raise NotCTError(f"{path} is a scout/localizer image, not an axial CT; load the axial CT series.")
    notes: list[str] = []
    slices = [header]
    if header.frames == 1:
        siblings = [p for p in _listing(path.parent, recursive=False) if p != path]
        scan = scan_files(siblings, reporter, total=len(siblings))
        same = [h for h in scan.headers if h.series_uid == header.series_uid and not h.is_localizer]
        if same:
            slices = [header, *same]
            label = describe_series(slices)
            notes.append(f"{path.name} is one image of a series; loaded the whole series ({len(slices)} images).")
            if scan.unreadable:  # issue 12.11 hook
                notes.append(unreadable_files_warning(path.parent, scan.unreadable))
    return build_volume(slices, path, label, notes, require_3d, reporter)
