"""The directly encoded DICOM SEG against highdicom's: element by element, frame by frame, read back by both.

CovidCT writes the SEG with pydicom and encodes its frames itself (speed, issue 15). highdicom builds the
reference here from the same masks, with the arguments CovidCT used to pass it; every element must agree
except the ones each writer generates (UIDs, creation times, highdicom's own equipment entry).
"""

from __future__ import annotations

import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_factory import banded_lobes, hu_phantom, rotation, write_series

from CovidCTLib.io.loader import load_ct
from CovidCTLib.outputs import dicom_encoding as enc
from CovidCTLib.outputs.dicom_seg import (
    CONTENT_DESCRIPTION,
    SERIES_DESCRIPTION,
    cielab_dicom,
    segment_sources,
    write_dicom_seg,
)
from CovidCTLib.privacy import strip_patient_and_study
from CovidCTLib.results import AnalysisResult
from CovidCTLib.version import __version__

#: elements each writer makes up itself (UIDs, times) or that only one of them adds
GENERATED = {
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "DimensionOrganizationUID",
    "TrackingUID",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentDate",
    "ContentTime",
    "ContributingEquipmentSequence",  # highdicom names itself as contributing equipment
    "ContentCreatorName",  # type 2: CovidCT writes it empty, highdicom leaves it out
}


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Oblique DICOM CT series by shape, with patient identifiers the default SEG must not carry."""
    made = {}

    def make(shape):
        if shape not in made:
            folder = tmp_path_factory.mktemp("ct")
            for path in write_series(folder, hu_phantom(shape), direction=rotation(12, 0, 25)):
                ds = pydicom.dcmread(path)
                ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PAT-98765", "19600101"
                ds.save_as(path)
            made[shape] = load_ct(folder)
        return made[shape]

    return make


def _result(ct, lobes=True, empty=False) -> AnalysisResult:
    z, y, x = ct.shape
    lungs = np.zeros(ct.shape, np.uint8)
    infection = np.zeros_like(lungs)
    if not empty:
        lungs[2 : z - 2, y // 4 : 3 * y // 4, 2 : x // 2 - 1] = 1
        lungs[1 : z - 1, y // 4 : 3 * y // 4, x // 2 + 1 : x - 2] = 2
        infection[4:7, y // 3 : y // 2, 4 : x // 3] = 1
        infection[5:6, y // 3 + 1 : y // 2 - 1, 5 : x // 3 - 1] = 2
        infection[3:5, y // 2 : 2 * y // 3, x // 2 + 3 : x - 4] = 1
    lobe_map = banded_lobes(lungs) if lobes else None
    return AnalysisResult(
        ct=ct,
        lungs=lungs,
        infection=infection,
        method="model",
        model_versions={"lungs": "unet-1.0", "infection": "unet-2.1"},
        lobes=lobe_map,
    )


def _highdicom_seg(result: AnalysisResult, include_identifiers: bool) -> pydicom.Dataset:
    """The SEG as highdicom builds it from the same masks (CovidCT's former writer)."""
    files = result.ct.dicom_files
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    image = result.ct.image
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    origin = np.array(image.GetOrigin())
    by_z = {
        int(round((np.array(ds.ImagePositionPatient, float) - origin) @ normal / image.GetSpacing()[2])): ds
        for ds in datasets
    }
    sources = [by_z[k] for k in range(result.ct.shape[0])]
    for ds in sources:  # type 2 attributes highdicom copies (the former writer added them the same way)
        for keyword in ("PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName", "AccessionNumber", "StudyID"):
            if keyword not in ds:
                setattr(ds, keyword, "")
    segments = segment_sources(result)
    pixels = np.stack([labelmap == label for _, labelmap, label in segments], axis=-1)
    family = hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence")
    models = ";".join(f"{k}={v}" for k, v in sorted(result.model_versions.items()))
    algorithm = hd.AlgorithmIdentificationSequence(
        name="CovidCT",
        family=family,
        version=__version__,
        source="CovidCT research software (not for diagnosis)",
        parameters={"method": result.method, "models": models},
    )
    descriptions = []
    for number, (spec, _, _) in enumerate(segments, start=1):
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name,
            segmented_property_category=hd.sr.CodedConcept(
                spec.category.value, spec.category.scheme, spec.category.meaning
            ),
            segmented_property_type=hd.sr.CodedConcept(spec.type.value, spec.type.scheme, spec.type.meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"CovidCT {spec.key}",
            tracking_uid=hd.UID(),
            anatomic_regions=[hd.sr.CodedConcept("39607008", "SCT", "Lung")] if spec.source == "infection" else None,
            display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in spec.color)),
        )
        if spec.modifier is not None:
            modifier = hd.sr.CodedConcept(spec.modifier.value, spec.modifier.scheme, spec.modifier.meaning)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        descriptions.append(description)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
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
    if not include_identifiers:
        strip_patient_and_study(seg)
    return seg


def _assert_same(ours: pydicom.Dataset, theirs: pydicom.Dataset, where: str = "") -> None:
    """Every element equal (DS as numbers) except :data:`GENERATED`; sequences item by item."""
    skip = {pydicom.datadict.tag_for_keyword(k) for k in GENERATED} | {0x7FE00010}
    tags = (set(ours.keys()) | set(theirs.keys())) - skip
    for tag in sorted(tags):
        name = f"{where}{pydicom.datadict.keyword_for_tag(tag) or hex(tag)}"
        assert tag in ours, f"{name} missing in CovidCT's SEG"
        assert tag in theirs, f"{name} not in highdicom's SEG"
        a, b = ours[tag], theirs[tag]
        assert a.VR == b.VR or {a.VR, b.VR} <= {"UT", "LT"}, name
        if a.VR == "SQ":
            assert len(a.value) == len(b.value), f"{name}: {len(a.value)} vs {len(b.value)} items"
            for index, (x, y) in enumerate(zip(a.value, b.value, strict=True)):
                _assert_same(x, y, f"{name}[{index}].")
        elif a.VR == "DS":
            values = [np.atleast_1d(np.asarray(v.value, dtype=float)) for v in (a, b)]
            np.testing.assert_allclose(values[0], values[1], rtol=1e-7, atol=1e-5, err_msg=name)
        elif tag == 0x0062000D:  # display colour: each writer converts sRGB to CIELab itself
            np.testing.assert_allclose(list(a.value), list(b.value), atol=8, err_msg=name)
        else:
            assert a.value == b.value, f"{name}: {a.value!r} vs {b.value!r}"


@pytest.mark.parametrize(
    "shape, lobes, empty",
    [
        ((12, 32, 40), True, False),
        ((12, 32, 40), False, False),
        ((10, 13, 21), True, False),
        ((10, 13, 21), True, True),
    ],
    ids=["lobes", "no-lobes", "odd-frame-size", "empty"],
)
def test_dicom_seg_equals_highdicoms_element_by_element_and_pixel_by_pixel(tmp_path, series, shape, lobes, empty):
    result = _result(series(shape), lobes, empty)
    ours = pydicom.dcmread(write_dicom_seg(result, tmp_path / "seg.dcm"))
    theirs = _highdicom_seg(result, include_identifiers=False)
    theirs.save_as(tmp_path / "ref.dcm", enforce_file_format=True)
    theirs = pydicom.dcmread(tmp_path / "ref.dcm")
    _assert_same(ours, theirs)
    assert ours.file_meta.TransferSyntaxUID == theirs.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ours.file_meta.MediaStorageSOPClassUID == theirs.file_meta.MediaStorageSOPClassUID
    assert ours.file_meta.MediaStorageSOPInstanceUID == ours.SOPInstanceUID
    frames = int(ours.NumberOfFrames)
    assert frames == int(theirs.NumberOfFrames)
    mine = ours.pixel_array.reshape(frames, *shape[1:])
    np.testing.assert_array_equal(mine, theirs.pixel_array.reshape(frames, *shape[1:]))
    assert len(ours.PixelData) % 2 == 0 and len(ours.PixelData) >= (frames * shape[1] * shape[2] + 7) // 8
    if empty:  # nothing segmented: every frame of every segment, all zero (highdicom's rule)
        assert frames == shape[0] * len(segment_sources(result)) and not mine.any()
        assert ours.SegmentsOverlap == "NO"
    else:
        assert ours.SegmentsOverlap == "YES"


def test_dicom_seg_reads_back_in_highdicom_voxel_for_voxel_on_the_oblique_grid(tmp_path, series):
    result = _result(series((12, 32, 40)))
    seg = hd.seg.segread(write_dicom_seg(result, tmp_path / "seg.dcm"))
    segments = segment_sources(result)
    assert seg.get_segment_numbers() == list(range(1, len(segments) + 1))
    # the segmentation as a volume on the CT grid: same voxels, and the CT's geometry (an oblique one)
    volume = seg.get_volume(combine_segments=False)
    image = result.ct.image
    affine = volume.affine
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    index_to_lps = direction * spacing[None, :]  # columns: the x, y, z index axes in LPS mm
    # highdicom's volume axes are (slice, row, column); find the slice axis order it chose
    first_slice = int(round((affine[:3, 3] - np.array(image.GetOrigin())) @ direction[:, 2] / spacing[2]))
    step = affine[:3, 0] @ direction[:, 2] / spacing[2]
    np.testing.assert_allclose(affine[:3, 1], index_to_lps[:, 1], atol=1e-5)  # rows follow the CT's y
    np.testing.assert_allclose(affine[:3, 2], index_to_lps[:, 0], atol=1e-5)  # columns follow the CT's x
    assert abs(abs(step) - 1) < 1e-6
    corner = image.TransformIndexToPhysicalPoint((0, 0, first_slice))  # the volume starts on a CT voxel
    np.testing.assert_allclose(affine[:3, 3], corner, atol=1e-4)
    array = volume.array
    for number, (spec, labelmap, label) in enumerate(segments, start=1):
        expected = labelmap == label
        got = np.zeros_like(expected)
        for index in range(array.shape[0]):
            got[first_slice + int(round(step)) * index] = array[index, :, :, number - 1] > 0
        np.testing.assert_array_equal(got, expected, err_msg=spec.key)
    # labels per frame: every frame names one segment and sits on its source slice
    positions = {
        ds.SOPInstanceUID: np.array(ds.ImagePositionPatient, float)
        for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in result.ct.dicom_files)
    }
    for group in seg.PerFrameFunctionalGroupsSequence:
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(group.PlanePositionSequence[0].ImagePositionPatient, positions[uid], atol=1e-6)
        assert 1 <= group.SegmentIdentificationSequence[0].ReferencedSegmentNumber <= len(segments)


def test_dicom_seg_identifiers_only_on_request(tmp_path, series):
    result = _result(series((12, 32, 40)))
    default = pydicom.dcmread(write_dicom_seg(result, tmp_path / "default.dcm"))
    assert strip_patient_and_study(default) == []  # nothing identifying was there to strip
    assert default.PatientName == "" and default.PatientID == "" and "PAT-98765" not in str(default)
    assert default.StudyInstanceUID == result.ct.study_uid
    named = pydicom.dcmread(write_dicom_seg(result, tmp_path / "named.dcm", include_identifiers=True))
    theirs = _highdicom_seg(result, include_identifiers=True)
    theirs.save_as(tmp_path / "ref.dcm", enforce_file_format=True)
    _assert_same(named, pydicom.dcmread(tmp_path / "ref.dcm"))
    assert named.PatientName == "Doe^Jane" and named.PatientID == "PAT-98765"


def test_display_colours_agree_with_highdicoms_cielab():
    for rgb in [(0.502, 0.682, 0.502), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)]:
        reference = hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in rgb)).value
        np.testing.assert_allclose(cielab_dicom(rgb), reference, atol=8)


def test_encoder_elements_parse_back_in_pydicom():
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    source = enc.item(
        enc.text(0x00081155, "UI", "1.2.3"), enc.sequence(0x0040A170, [enc.code_item("121322", "DCM", "Source")])
    )
    data = enc.sequence(0x00089124, [source]) + enc.numbers(0x00209157, "UL", [3, 70000])
    data += enc.text(0x00200032, "DS", "-1.5\\2\\3.25") + enc.numbers(0x0062000B, "US", [9])
    ds = read_dataset(DicomBytesIO(data), is_implicit_VR=False, is_little_endian=True)
    assert ds[0x00089124][0].ReferencedSOPInstanceUID == "1.2.3"
    assert ds[0x00089124][0].PurposeOfReferenceCodeSequence[0].CodeMeaning == "Source"
    assert list(ds.DimensionIndexValues) == [3, 70000]
    assert [float(v) for v in ds.ImagePositionPatient] == [-1.5, 2.0, 3.25]
    assert ds.ReferencedSegmentNumber == 9
    assert all(len(part) % 2 == 0 for part in (enc.text(0x00080100, "SH", "odd"), enc.text(0x00081155, "UI", "1.2")))
