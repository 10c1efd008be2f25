"""DICOM Segmentation (SEG) export of the lungs, infection and lobes, referencing the source CT series.

A BINARY segmentation (Segmentation IOD, Explicit VR Little Endian) with four segments (right lung,
left lung, ground-glass, consolidation), then, when the analysis segmented the lobes, five more (right
upper, middle and lower lobe, left upper and lower lobe; :data:`CovidCTLib.labels.LOBE_SEGMENTS`).
Segments may overlap (infection and lobes lie inside the lungs), which DICOM SEG allows because each
segment has its own frames. The SEG:

* references every source CT slice and shares its Study Instance UID and Frame of Reference; by default
  it carries no patient or study identifier (:func:`CovidCTLib.privacy.strip_patient_and_study`: name, ID,
  birth date, sex, accession number, referring physician, study date ... are removed or left empty);
  with ``include_identifiers`` it copies the source's patient and study modules (for PACS storage);
* codes each segment with :data:`CovidCTLib.labels.SEGMENTS` / ``LOBE_SEGMENTS`` (category, type and, for
  the lungs, the laterality modifier; the lobes' SNOMED CT types carry their side), its display colour
  and algorithm identification (name ``CovidCT``, version, method and model versions);
* says in its series description and content description that it is research software, not a diagnosis.

3D Slicer loads it through the DICOM module with the QuantitativeReporting extension (DCMQI).
Only possible when the input was a DICOM series (``CTVolume.dicom_files`` lists its slice files).

The file is built with pydicom, its frames (per-frame functional groups and 1-bit pixel data) encoded
directly by :mod:`CovidCTLib.outputs.seg_frames` in the layout highdicom uses (highdicom took about
seven seconds for a 512 x 512 x 248 chest CT, mostly building and writing a Dataset per frame);
``Testing/test_dicom_seg.py`` compares the file with highdicom's element by element and reads it back
with highdicom.
"""

from __future__ import annotations

import datetime
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from CovidCTLib.atomic import check_writable, write_with
from CovidCTLib.errors import CovidCTError, InputError
from CovidCTLib.labels import LOBE_SEGMENTS, SEGMENTS, CodedTerm, SegmentSpec
from CovidCTLib.outputs import dicom_encoding as enc
from CovidCTLib.outputs.seg_frames import SourceSlice, encode_frames
from CovidCTLib.privacy import TYPE2_KEYWORDS, patient_and_study_keywords
from CovidCTLib.version import __version__

SERIES_DESCRIPTION = "CovidCT segmentation - research, not for diagnosis"
CONTENT_DESCRIPTION = "Research software output, not a diagnosis"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: Algorithm Family codes (DICOM CID 7162)
_FAMILY = {
    "model": CodedTerm("123110", "DCM", "Artificial Intelligence"),
    "classical": CodedTerm("123105", "DCM", "Histogram Analysis"),
}
_LUNG_REGION = CodedTerm("39607008", "SCT", "Lung")


def _code(term: CodedTerm) -> Dataset:
    item = Dataset()
    item.CodeValue = term.value
    item.CodingSchemeDesignator = term.scheme
    item.CodeMeaning = term.meaning
    return item


def _model_string(result) -> str:
    models = ";".join(f"{name}={version}" for name, version in sorted(result.model_versions.items()))
    return models or "none"


def cielab_dicom(rgb: tuple[float, float, float]) -> list[int]:
    """An sRGB colour (components 0..1) as DICOM CIELab (L*, a*, b* scaled to 0..65535; PS3.3 C.10.7.1.1).

    The colour is taken to 8 bits per component first (as it is shown), linearised, taken to CIE XYZ with
    the D65 white point and from there to CIE L*a*b*.
    """
    channels = (round(255 * float(v)) / 255 for v in rgb)
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    matrix = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = matrix @ np.array(linear) / np.array([0.9505, 1.0, 1.089])

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = (f(float(t)) for t in xyz)
    lab = (116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz))
    scaled = (lab[0] * 65535 / 100, (lab[1] + 128) * 65535 / 255, (lab[2] + 128) * 65535 / 255)
    return [int(round(min(max(v, 0.0), 65535.0))) for v in scaled]


def _algorithm(result) -> Dataset:
    algorithm = Dataset()
    algorithm.AlgorithmFamilyCodeSequence = [_code(_FAMILY.get(result.method, _FAMILY["classical"]))]
    algorithm.AlgorithmName = "CovidCT"
    algorithm.AlgorithmVersion = __version__
    algorithm.AlgorithmSource = "CovidCT research software (not for diagnosis)"
    algorithm.AlgorithmParameters = f"method={result.method},models={_model_string(result)}"
    return algorithm


def _segment_item(number: int, spec: SegmentSpec, result) -> Dataset:
    item = Dataset()
    item.SegmentNumber = number
    item.SegmentLabel = spec.name
    item.SegmentedPropertyCategoryCodeSequence = [_code(spec.category)]
    prop = _code(spec.type)
    if spec.modifier is not None:
        prop.SegmentedPropertyTypeModifierCodeSequence = [_code(spec.modifier)]
    item.SegmentedPropertyTypeCodeSequence = [prop]
    item.SegmentAlgorithmType = "AUTOMATIC"
    item.SegmentAlgorithmName = "CovidCT"
    item.SegmentationAlgorithmIdentificationSequence = [_algorithm(result)]
    item.TrackingID = f"CovidCT {spec.key}"
    item.TrackingUID = generate_uid()
    if spec.source == "infection":
        item.AnatomicRegionSequence = [_code(_LUNG_REGION)]
    item.RecommendedDisplayCIELabValue = cielab_dicom(spec.color)
    return item


def _slice_order(result, datasets: list[pydicom.Dataset]) -> list[int]:
    """For each z index of the volume, the position in ``datasets`` of the slice at that location."""
    image = result.ct.image
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    normal = direction[:, 2]
    origin = np.asarray(image.GetOrigin())
    spacing_z = image.GetSpacing()[2]
    size_z = image.GetSize()[2]
    order = [-1] * size_z
    for position, ds in enumerate(datasets):
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        k = (ipp - origin) @ normal / spacing_z
        index = int(round(k))
        if abs(k - index) > 0.05 or not 0 <= index < size_z or order[index] != -1:
            raise InputError(
                f"DICOM slice {getattr(ds, 'filename', position)} does not match the loaded volume geometry; "
                "the DICOM SEG cannot reference it. Re-run the analysis on the original DICOM folder."
            )
        order[index] = position
    if -1 in order:
        raise InputError("Some slices of the loaded volume have no DICOM file; the DICOM SEG cannot be made.")
    return order


def segment_sources(result) -> list[tuple[SegmentSpec, np.ndarray, int]]:
    """The segments of the SEG in order, each as ``(spec, labelmap, label)`` (the mask is ``labelmap == label``):
    lungs and infection, then the five lobes when ``result.lobes`` holds a lobe labelmap (segment numbers
    follow this order from 1)."""
    sources = {"lungs": np.asarray(result.lungs), "infection": np.asarray(result.infection)}
    specs = list(SEGMENTS)
    if getattr(result, "lobes", None) is not None:
        lobes = np.asarray(result.lobes)
        if lobes.shape != sources["lungs"].shape:
            raise InputError(f"lobe labelmap shape {lobes.shape} does not match the lungs {sources['lungs'].shape}")
        sources["lobes"] = lobes
        specs += LOBE_SEGMENTS
    return [(spec, sources[spec.source], spec.label) for spec in specs]


#: what the SEG needs of every source slice (the first slice is read whole)
_SLICE_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
)


def _read_sources(files: list[str], tags: tuple[str, ...] | None = _SLICE_TAGS) -> list[pydicom.Dataset]:
    try:
        return [pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags) for f in files]
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise InputError(
            f"Cannot re-read the source DICOM files for the DICOM SEG ({exc}); keep them in place."
        ) from exc


def _check_sources(sources: list[pydicom.Dataset], shape: tuple[int, int, int]) -> None:
    first = sources[0]
    for ds in sources:
        if (
            ds.get("ImageOrientationPatient") != first.get("ImageOrientationPatient")
            or ds.get("SeriesInstanceUID") != first.get("SeriesInstanceUID")
            or (int(ds.Rows), int(ds.Columns)) != shape[1:]
        ):
            raise InputError(
                f"DICOM slice {getattr(ds, 'filename', '')} differs from the series (orientation, series or size); "
                "the DICOM SEG cannot reference it. Re-run the analysis on the original DICOM folder."
            )


def _normal(first: pydicom.Dataset) -> np.ndarray:
    """The frame-order axis: column direction x row direction (highdicom's volume convention: the
    slice, row and column axes form a right-handed system; head first for a standard axial series)."""
    cosines = np.array([float(v) for v in first.ImageOrientationPatient])
    return np.cross(cosines[3:], cosines[:3])


def _raw(dataset: Dataset, tag: int, vr: str, value: bytes) -> None:
    """Put an already encoded value into ``dataset`` (pydicom writes it as it is)."""
    dataset[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _ds_text(value) -> str:
    """A DS value (single or multi) as the source file states it."""
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return "\\".join(str(v) for v in values)


def _slice_spacing(distances: list[float]) -> float | None:
    """The spacing of regularly spaced slices (mm), or None when the gaps differ."""
    ordered = np.sort(np.asarray(distances, dtype=float))
    if ordered.size < 2:
        return None
    gaps = np.diff(ordered)
    return float(gaps.mean()) if np.allclose(gaps, gaps.mean(), rtol=1e-3, atol=1e-3) and gaps.mean() > 0 else None


def _ds_number(value: float) -> str:
    """A decimal string of at most 16 characters for ``value``."""
    for digits in range(14, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.0f}"


def _copy_patient_and_study(seg: Dataset, first: pydicom.Dataset, include_identifiers: bool) -> None:
    for keyword in TYPE2_KEYWORDS:
        setattr(seg, keyword, "")
    if include_identifiers:  # the source's patient and study modules, as a PACS expects them
        for keyword in sorted(patient_and_study_keywords(SEGMENTATION_STORAGE)):
            if keyword in first and keyword != "StudyInstanceUID":
                seg[keyword] = first[keyword]
    seg.StudyInstanceUID = first.StudyInstanceUID


def build_dicom_seg(result, include_identifiers: bool = False) -> Dataset:
    """The DICOM SEG (a pydicom Dataset) of an AnalysisResult loaded from DICOM (no patient identifiers
    unless ``include_identifiers``)."""
    files = list(result.ct.dicom_files)
    if not files:
        raise CovidCTError(
            "A DICOM SEG needs a DICOM input series; this scan was not loaded from DICOM. "
            "Use the .seg.nrrd or labelmap outputs instead."
        )
    datasets = _read_sources(files)
    order = _slice_order(result, datasets)
    sources = [datasets[i] for i in order]
    segments = segment_sources(result)
    shape = segments[0][1].shape
    _check_sources(sources, shape)
    first = _read_sources([sources[0].filename], None)[0]  # patient, study, frame of reference, measures
    normal = _normal(first)
    slices = [
        SourceSlice(
            str(ds.SOPClassUID),
            str(ds.SOPInstanceUID),
            _ds_text(ds.ImagePositionPatient),
            float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal),
        )
        for ds in sources
    ]
    frames = encode_frames([(labelmap, label) for _, labelmap, label in segments], slices)

    now = datetime.datetime.now()
    seg = Dataset()
    seg.file_meta = FileMetaDataset()
    seg.file_meta.MediaStorageSOPClassUID = SEGMENTATION_STORAGE
    seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    seg.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    seg.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if "SpecificCharacterSet" in first:
        seg.SpecificCharacterSet = first.SpecificCharacterSet
    seg.ImageType = ["DERIVED", "PRIMARY"]
    seg.InstanceCreationDate = seg.ContentDate = now.strftime("%Y%m%d")
    seg.InstanceCreationTime = seg.ContentTime = now.strftime("%H%M%S.%f")
    seg.SOPClassUID = SEGMENTATION_STORAGE
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID
    _copy_patient_and_study(seg, first, include_identifiers)
    seg.Modality = "SEG"
    seg.Manufacturer = "CovidCT"
    seg.ManufacturerModelName = "CovidCT"
    seg.DeviceSerialNumber = "0"
    seg.SoftwareVersions = f"CovidCT {__version__}"
    seg.SeriesDescription = SERIES_DESCRIPTION
    seg.SeriesInstanceUID = generate_uid()
    seg.SeriesNumber = int(getattr(first, "SeriesNumber", 0) or 0) + 1000
    seg.InstanceNumber = 1
    seg.FrameOfReferenceUID = first.FrameOfReferenceUID
    seg.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    references = [
        enc.item(enc.text(0x00081150, "UI", s.sop_class_uid), enc.text(0x00081155, "UI", s.sop_instance_uid))
        for s in slices
    ]
    _raw(seg, 0x00082112, "SQ", enc.sequence_value(references))  # SourceImageSequence
    series = enc.item(enc.sequence(0x0008114A, references), enc.text(0x0020000E, "UI", str(first.SeriesInstanceUID)))
    _raw(seg, 0x00081115, "SQ", series)  # ReferencedSeriesSequence

    organization = generate_uid()
    seg.DimensionOrganizationSequence = [Dataset()]
    seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = organization
    seg.DimensionIndexSequence = [
        _dimension(organization, 0x0062000B, 0x0062000A, "Referenced Segment Number"),
        _dimension(organization, 0x00200032, 0x00209113, "Image Position Patient"),
    ]
    seg.SamplesPerPixel = 1
    seg.PhotometricInterpretation = "MONOCHROME2"
    seg.NumberOfFrames = frames.number_of_frames
    seg.Rows, seg.Columns = shape[1], shape[2]
    seg.BitsAllocated = seg.BitsStored = 1
    seg.HighBit = 0
    seg.PixelRepresentation = 0
    seg.LossyImageCompression = first.get("LossyImageCompression", "00")
    if seg.LossyImageCompression == "01":
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in first:
                seg[keyword] = first[keyword]
    seg.SegmentationType = "BINARY"
    seg.SegmentSequence = [_segment_item(n, spec, result) for n, (spec, _, _) in enumerate(segments, start=1)]
    seg.SegmentsOverlap = "YES" if frames.segments_overlap else "NO"
    seg.ContentLabel = "COVIDCT"
    seg.ContentDescription = CONTENT_DESCRIPTION
    seg.ContentCreatorName = ""
    seg.PresentationLUTShape = "IDENTITY"
    seg.SharedFunctionalGroupsSequence = [_shared_groups(first, [s.distance for s in slices])]
    _raw(seg, 0x52009230, "SQ", frames.per_frame_groups)  # PerFrameFunctionalGroupsSequence
    _raw(seg, 0x7FE00010, "OB", frames.pixel_data)
    # the raw elements are written as they are only when the dataset's encoding is the file's
    seg.set_original_encoding(False, True, convert_encodings(seg.get("SpecificCharacterSet") or "ISO_IR 6"))
    return seg


def _dimension(organization: str, pointer: int, group: int, label: str) -> Dataset:
    item = Dataset()
    item.DimensionOrganizationUID = organization
    item.DimensionIndexPointer = pointer
    item.FunctionalGroupPointer = group
    item.DimensionDescriptionLabel = label
    return item


def _shared_groups(first: pydicom.Dataset, distances: list[float]) -> Dataset:
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.get("SliceThickness", "")
    if "SpacingBetweenSlices" in first:
        measures.SpacingBetweenSlices = first.SpacingBetweenSlices
    else:
        spacing = _slice_spacing(distances)
        if spacing is not None:
            measures.SpacingBetweenSlices = _ds_number(spacing)
    shared = Dataset()
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    return shared


def write_dicom_seg(
    result, path: str | os.PathLike, overwrite: bool = False, include_identifiers: bool = False
) -> Path:
    """Write the DICOM SEG of ``result`` to ``path`` (atomically); see the module docstring."""
    target = Path(path)
    check_writable(target, overwrite)
    with warnings.catch_warnings():
        # single-component patient names (common in anonymised data) are copied as they are
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        seg = build_dicom_seg(result, include_identifiers)
    return write_with(target, lambda tmp: pydicom.dcmwrite(tmp, seg, enforce_file_format=True), overwrite)
