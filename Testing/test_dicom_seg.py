"""DICOM SEG export: written from a synthetic DICOM CT series, read back with pydicom/highdicom."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_factory import banded_lobes, hu_phantom, rotation, write_series

from CovidCTLib.errors import CovidCTError, OutputExistsError
from CovidCTLib.io.loader import load_ct
from CovidCTLib.labels import SEGMENTS
from CovidCTLib.outputs.dicom_seg import write_dicom_seg
from CovidCTLib.phantom import make_phantom
from CovidCTLib.results import AnalysisResult
from CovidCTLib.version import __version__


@pytest.fixture(scope="module")
def dicom_result(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    write_series(folder, hu_phantom((12, 32, 40)), direction=rotation(12, 0, 25))
    ct = load_ct(folder)
    lungs = np.zeros(ct.shape, np.uint8)
    lungs[2:10, 8:24, 5:18] = 1
    lungs[1:11, 8:24, 22:35] = 2
    infection = np.zeros_like(lungs)
    infection[4:7, 10:15, 8:12] = 1
    infection[5:6, 12:14, 9:11] = 2
    infection[3:5, 16:20, 25:30] = 1
    return AnalysisResult(
        ct=ct,
        lungs=lungs,
        infection=infection,
        method="model",
        model_versions={"lungs": "unet-1.0", "infection": "unet-2.1"},
    )


def test_dicom_seg_round_trip_voxels_geometry_and_terms(tmp_path, dicom_result):
    result = dicom_result
    path = write_dicom_seg(result, tmp_path / "segmentation.dcm")
    assert not list(tmp_path.glob(".*"))
    seg = hd.seg.segread(path)
    ct = result.ct
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == ct.study_uid
    assert seg.FrameOfReferenceUID == ct.frame_of_reference_uid
    assert seg.SeriesInstanceUID != ct.series_uid
    assert "not for diagnosis" in seg.SeriesDescription
    assert seg.get_segment_numbers() == [1, 2, 3, 4]

    # the referenced series is the source series, and every source slice is referenced
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == ct.series_uid
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in ct.dicom_files]
    positions = {ds.SOPInstanceUID: np.array(ds.ImagePositionPatient, float) for ds in sources}
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == set(positions)

    # voxels: per source slice (ordered by the volume's z index), every segment equals the input mask
    image = ct.image
    uid_by_z = {}
    for uid, ipp in positions.items():
        k = (ipp - np.array(image.GetOrigin())) @ np.array(image.GetDirection()).reshape(3, 3)[:, 2]
        uid_by_z[int(round(k / image.GetSpacing()[2]))] = uid
    uids = [uid_by_z[k] for k in range(ct.shape[0])]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2, 3, 4])
    assert pixels.shape == (*ct.shape, 4)
    for number, spec in enumerate(SEGMENTS):
        source = result.lungs if spec.source == "lungs" else result.infection
        np.testing.assert_array_equal(pixels[..., number] > 0, source == spec.label, err_msg=spec.key)

    # geometry: every frame's position equals its source slice position; orientation and spacing shared
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float),
        np.array(sources[0].ImageOrientationPatient, float),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        np.array(shared.PixelMeasuresSequence[0].PixelSpacing, float), np.array(sources[0].PixelSpacing, float)
    )
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(
            np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float), positions[uid], atol=1e-4
        )

    # coded terms, colours and algorithm identification
    for item, spec in zip(seg.SegmentSequence, SEGMENTS, strict=True):
        assert item.SegmentLabel == spec.name
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == spec.category.value
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodingSchemeDesignator) == (spec.type.value, spec.type.scheme)
        if spec.modifier is not None:
            assert prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == spec.modifier.value
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "CovidCT" and algorithm.AlgorithmVersion == __version__
        assert algorithm.AlgorithmParameters == "method=model,models=infection=unet-2.1;lungs=unet-1.0"
        rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        np.testing.assert_allclose(rgb, [255 * c for c in spec.color], atol=3)

    with pytest.raises(OutputExistsError):
        write_dicom_seg(result, path)
    assert write_dicom_seg(result, path, overwrite=True) == path


def test_dicom_seg_needs_a_dicom_input(tmp_path):
    phantom = make_phantom(shape=(16, 32, 32), spacing=(3.0, 3.0, 3.0))
    result = AnalysisResult(ct=phantom.ct, lungs=phantom.lungs, infection=phantom.infection)
    with pytest.raises(CovidCTError, match="DICOM"):
        write_dicom_seg(result, tmp_path / "segmentation.dcm")
    assert not (tmp_path / "segmentation.dcm").exists()


def test_dicom_seg_of_the_real_ricord_series(tmp_path, shared_data):
    folder = shared_data / "ricord_1a_covid_chest_ct" / "dicom"
    if not folder.is_dir():
        pytest.skip("RICORD series not available")
    ct = load_ct(folder)
    hu = ct.array
    lungs = np.zeros(ct.shape, np.uint8)
    band = slice(100, 140)  # 40 slices keep the test short; frames outside are empty and omitted
    lungs[band, 150:350, 60:250][hu[band, 150:350, 60:250] < -500] = 1
    lungs[band, 150:350, 260:450][hu[band, 150:350, 260:450] < -500] = 2
    infection = np.zeros_like(lungs)
    infection[(lungs > 0) & (hu > -700) & (hu < -300)] = 1
    result = AnalysisResult(ct=ct, lungs=lungs, infection=infection)
    seg = hd.seg.segread(write_dicom_seg(result, tmp_path / "ricord.dcm"))
    assert seg.FrameOfReferenceUID == ct.frame_of_reference_uid and seg.StudyInstanceUID == ct.study_uid
    image = ct.image
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    uid_by_z = {}
    for f in ct.dicom_files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        offset = (np.array(ds.ImagePositionPatient, float) - np.array(image.GetOrigin())) @ normal
        uid_by_z[int(round(offset / image.GetSpacing()[2]))] = ds.SOPInstanceUID
    assert sorted(uid_by_z) == list(range(ct.shape[0]))
    for z in (100, 120, 139):
        uid = uid_by_z[z]
        pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=[1, 2, 3])[0]
        np.testing.assert_array_equal(pixels[..., 0] > 0, lungs[z] == 1)
        np.testing.assert_array_equal(pixels[..., 1] > 0, lungs[z] == 2)
        np.testing.assert_array_equal(pixels[..., 2] > 0, infection[z] == 1)


def _with_lobes(result: AnalysisResult) -> AnalysisResult:
    """The fixture's lungs cut into five lobes (right: three bands along z, left: two)."""
    lungs = result.lungs
    lobes = banded_lobes(lungs)
    return AnalysisResult(
        ct=result.ct,
        lungs=lungs,
        infection=result.infection,
        method=result.method,
        model_versions=result.model_versions,
        lobes=lobes,
    )


def test_dicom_seg_carries_the_lobes_with_their_snomed_codes(tmp_path, dicom_result):
    from CovidCTLib.labels import LOBE_SEGMENTS

    result = _with_lobes(dicom_result)
    path = write_dicom_seg(result, tmp_path / "segmentation.dcm")
    ds = pydicom.dcmread(path)
    specs = list(SEGMENTS) + list(LOBE_SEGMENTS)
    assert [item.SegmentNumber for item in ds.SegmentSequence] == list(range(1, 10))
    assert [item.SegmentLabel for item in ds.SegmentSequence] == [spec.name for spec in specs]
    assert [item.SegmentLabel for item in ds.SegmentSequence][4:] == [
        "Right upper lobe",
        "Right middle lobe",
        "Right lower lobe",
        "Left upper lobe",
        "Left lower lobe",
    ]
    for item, spec in zip(ds.SegmentSequence[4:], LOBE_SEGMENTS, strict=True):
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("123037004", "SCT")
        assert (prop.CodeValue, prop.CodingSchemeDesignator, prop.CodeMeaning) == (
            spec.type.value,
            spec.type.scheme,
            spec.type.meaning,
        )
    assert [item.SegmentedPropertyTypeCodeSequence[0].CodeValue for item in ds.SegmentSequence[4:]] == [
        "45653009",
        "72481006",
        "266005",
        "44714003",
        "90572001",
    ]

    # frame count: one frame per segment and slice where that segment is present (empty frames omitted)
    masks = [
        (result.lungs if s.source == "lungs" else result.infection if s.source == "infection" else result.lobes)
        == s.label
        for s in specs
    ]
    assert int(ds.NumberOfFrames) == sum(int(m.any(axis=(1, 2)).sum()) for m in masks)

    # every lobe frame sits on its source slice (oblique series) and holds exactly that lobe's voxels
    image = result.ct.image
    origin = np.array(image.GetOrigin())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    np.testing.assert_allclose(
        np.array(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float),
        np.concatenate([direction[:, 0], direction[:, 1]]),
        atol=1e-6,
    )
    seen = 0
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp = np.array(group.PlanePositionSequence[0].ImagePositionPatient, float)
        k = (ipp - origin) @ direction[:, 2] / image.GetSpacing()[2]
        assert abs(k - round(k)) < 1e-3
        np.testing.assert_allclose(ipp, image.TransformIndexToPhysicalPoint((0, 0, int(round(k)))), atol=1e-4)
        if number > 4:
            np.testing.assert_array_equal(frame > 0, masks[number - 1][int(round(k))])
            seen += 1
    assert seen == sum(int(m.any(axis=(1, 2)).sum()) for m in masks[4:])


def test_dicom_seg_without_lobes_has_the_four_segments(tmp_path, dicom_result):
    ds = pydicom.dcmread(write_dicom_seg(dicom_result, tmp_path / "segmentation.dcm"), stop_before_pixels=True)
    assert [item.SegmentLabel for item in ds.SegmentSequence] == [spec.name for spec in SEGMENTS]
