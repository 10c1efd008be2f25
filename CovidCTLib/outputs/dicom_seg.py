"""DICOM Segmentation (SEG) export of the lungs, infection and lobes, referencing the source CT series.

Written with highdicom as a BINARY segmentation: four segments (right lung, left lung, ground-glass,
consolidation), then, when the analysis segmented the lobes, five more (right upper, middle and lower lobe,
left upper and lower lobe; :data:`CovidCTLib.labels.LOBE_SEGMENTS`). Segments may overlap (infection and
lobes lie inside the lungs), which DICOM SEG allows because each segment has its own frames. The SEG:

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
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from CovidCTLib.atomic import check_writable, write_with
from CovidCTLib.errors import CovidCTError, InputError
from CovidCTLib.labels import LOBE_SEGMENTS, SEGMENTS, CodedTerm, SegmentSpec
from CovidCTLib.privacy import strip_patient_and_study
from CovidCTLib.version import __version__

SERIES_DESCRIPTION = "CovidCT segmentation - research, not for diagnosis"
CONTENT_DESCRIPTION = "Research software output, not a diagnosis"


def _code(term: CodedTerm) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=term.value, scheme_designator=term.scheme, meaning=term.meaning)


def _model_string(result) -> str:
    models = ";".join(f"{name}={version}" for name, version in sorted(result.model_versions.items()))
    return models or "none"


def _algorithm(result) -> hd.AlgorithmIdentificationSequence:
    family = codes.cid7162.ArtificialIntelligence if result.method == "model" else codes.cid7162.HistogramAnalysis
    return hd.AlgorithmIdentificationSequence(
        name="CovidCT",
        family=family,
        version=__version__,
        source="CovidCT research software (not for diagnosis)",
        parameters={"method": str(result.method), "models": _model_string(result)[:64]},
    )


# Type 2 attributes highdicom copies from the source; some real series omit them (empty is valid DICOM)
_TYPE2_DEFAULTS = {
    "PatientName": "",
    "PatientID": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "StudyDate": "",
    "StudyTime": "",
    "ReferringPhysicianName": "",
    "AccessionNumber": "",
    "StudyID": "",
}


def _complete(ds: pydicom.Dataset) -> pydicom.Dataset:
    for keyword, value in _TYPE2_DEFAULTS.items():
        if keyword not in ds:
            setattr(ds, keyword, value)
    return ds


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


def seg_segments(result) -> list[tuple[SegmentSpec, np.ndarray]]:
    """The segments of the SEG in order, each with its ``(z, y, x)`` mask: lungs and infection, then the
    five lobes when ``result.lobes`` holds a lobe labelmap (segment numbers follow this order from 1)."""
    sources = {"lungs": np.asarray(result.lungs), "infection": np.asarray(result.infection)}
    specs = list(SEGMENTS)
    if getattr(result, "lobes", None) is not None:
        lobes = np.asarray(result.lobes)
        if lobes.shape != sources["lungs"].shape:
            raise InputError(f"lobe labelmap shape {lobes.shape} does not match the lungs {sources['lungs'].shape}")
        sources["lobes"] = lobes
        specs += LOBE_SEGMENTS
    return [(spec, sources[spec.source] == spec.label) for spec in specs]


def build_dicom_seg(result, include_identifiers: bool = False) -> hd.seg.Segmentation:
    """The highdicom Segmentation object for an AnalysisResult loaded from DICOM (no patient identifiers
    unless ``include_identifiers``)."""
    files = list(result.ct.dicom_files)
    if not files:
        raise CovidCTError(
            "A DICOM SEG needs a DICOM input series; this scan was not loaded from DICOM. "
            "Use the .seg.nrrd or labelmap outputs instead."
        )
    try:
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise InputError(
            f"Cannot re-read the source DICOM files for the DICOM SEG ({exc}); keep them in place."
        ) from exc
    order = _slice_order(result, datasets)
    sources = [_complete(datasets[i]) for i in order]
    segments = seg_segments(result)
    pixel_array = np.stack([mask for _, mask in segments], axis=-1)  # (frames, rows, cols, segs), bool: no uint8 copy

    algorithm = _algorithm(result)
    lung_region = hd.sr.CodedConcept("39607008", "SCT", "Lung")
    descriptions = []
    for number, (spec, _) in enumerate(segments, start=1):
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name,
            segmented_property_category=_code(spec.category),
            segmented_property_type=_code(spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"CovidCT {spec.key}",
            tracking_uid=hd.UID(),
            anatomic_regions=[lung_region] if spec.source == "infection" else None,
            display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in spec.color)),
        )
        if spec.modifier is not None:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _code(spec.modifier)
            ]
        descriptions.append(description)

    first = sources[0]
    with warnings.catch_warnings():
        # single-component patient names (common in anonymised data) are copied as they are
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        seg = _segmentation(sources, pixel_array, descriptions, first, result)
    if not include_identifiers:
        strip_patient_and_study(seg)  # issue 12: privacy by default
    return seg


def _segmentation(sources, pixel_array, descriptions, first, result) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="CovidCT",
        manufacturer_model_name="CovidCT",
        software_versions=f"CovidCT {__version__}",
        device_serial_number="0",
        content_description=CONTENT_DESCRIPTION,
        content_label="COVIDCT",
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=True,
    )


def write_dicom_seg(
    result, path: str | os.PathLike, overwrite: bool = False, include_identifiers: bool = False
) -> Path:
    """Write the DICOM SEG of ``result`` to ``path`` (atomically); see the module docstring."""
    target = Path(path)
    check_writable(target, overwrite)
    seg = build_dicom_seg(result, include_identifiers)
    return write_with(target, lambda tmp: seg.save_as(tmp, enforce_file_format=True), overwrite)
