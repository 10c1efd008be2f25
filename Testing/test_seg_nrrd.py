"""Tests for CovidCTLib.io.seg_nrrd: exact round trip, and loading by Slicer's own segmentation reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import rotation
from required import require_module  # noqa: E402

from CovidCTLib.errors import OutputExistsError
from CovidCTLib.io.seg_nrrd import read_seg_nrrd, write_seg_nrrd
from CovidCTLib.labels import SEGMENTS
from CovidCTLib.version import DISCLAIMER

SHAPE = (14, 30, 36)  # z, y, x
TOL = 1e-5


def reference_image() -> sitk.Image:
    """Oblique (20 degrees about x and y), anisotropic, non-zero origin."""
    image = sitk.Image(SHAPE[2], SHAPE[1], SHAPE[0], sitk.sitkInt16)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-12.5, 30.25, 7.75))
    image.SetDirection(tuple(rotation(20.0, 20.0, 0.0).ravel()))
    return image


def masks() -> tuple[np.ndarray, np.ndarray]:
    """Two lungs (1 right, 2 left) and overlapping GGO (1) / consolidation (2), asymmetric on purpose."""
    lungs = np.zeros(SHAPE, np.uint8)
    lungs[2:12, 5:25, 3:16] = 1
    lungs[3:13, 6:26, 19:33] = 2
    infection = np.zeros(SHAPE, np.uint8)
    infection[4:9, 8:15, 5:12] = 1
    infection[6:8, 18:22, 22:30] = 2
    infection[10, 20, 25] = 1
    return lungs, infection


def test_seg_nrrd_round_trip_exact(tmp_path: Path) -> None:
    ref = reference_image()
    lungs, infection = masks()
    path = write_seg_nrrd(lungs, infection, ref, tmp_path / "out.seg.nrrd", extra_metadata={"model": "x 1.0"})
    back_lungs, back_inf, back_ref, meta = read_seg_nrrd(path)
    np.testing.assert_array_equal(back_lungs, lungs)
    np.testing.assert_array_equal(back_inf, infection)
    assert back_ref.GetSize() == ref.GetSize()
    np.testing.assert_allclose(back_ref.GetSpacing(), ref.GetSpacing(), atol=TOL)
    np.testing.assert_allclose(back_ref.GetOrigin(), ref.GetOrigin(), atol=TOL)
    np.testing.assert_allclose(back_ref.GetDirection(), ref.GetDirection(), atol=TOL)
    assert [s["name"] for s in meta["segments"]] == [s.name for s in SEGMENTS]
    assert [s["layer"] for s in meta["segments"]] == [0, 0, 1, 1]
    assert meta["fields"]["CovidCT_Disclaimer"] == DISCLAIMER
    assert meta["fields"]["CovidCT_model"] == "x 1.0"
    assert meta["header"]["kinds"] == "list domain domain domain"
    assert meta["header"]["space"] == "left-posterior-superior"
    assert "TerminologyEntry" in meta["segments"][0]["tags"]
    with pytest.raises(OutputExistsError):
        write_seg_nrrd(lungs, infection, ref, path)
    with pytest.raises(ValueError, match="shape"):
        write_seg_nrrd(lungs[:-1], infection, ref, tmp_path / "bad.seg.nrrd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.seg.nrrd"]


def _ijk_to_ras(ref: sitk.Image) -> np.ndarray:
    direction = np.array(ref.GetDirection()).reshape(3, 3) * np.array(ref.GetSpacing())[None, :]
    m = np.eye(4)
    flip = np.diag([-1.0, -1.0, 1.0])
    m[:3, :3] = flip @ direction
    m[:3, 3] = flip @ np.array(ref.GetOrigin())
    return m


def _read_in_slicer(slicer, path: Path):
    """Read a .seg.nrrd with Slicer's own storage node into a new scene; returns (scene, storage, node)."""
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return scene, storage, node


def test_seg_nrrd_loads_in_slicer(tmp_path: Path) -> None:
    slicer = require_module("slicer", reason="slicer-core wheel not installed")
    vtk = require_module("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    ref = reference_image()
    lungs, infection = masks()
    path = write_seg_nrrd(lungs, infection, ref, tmp_path / "case.seg.nrrd", show_3d=False)

    scene, storage, node = _read_in_slicer(slicer, path)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 4
    assert segmentation.GetSourceRepresentationName() == "Binary labelmap"
    assert segmentation.GetNumberOfLayers() == 2
    expected_matrix = _ijk_to_ras(ref)
    for spec in SEGMENTS:
        segment = segmentation.GetSegment(spec.key)
        assert segment is not None, spec.key
        assert segment.GetName() == spec.name
        assert segment.GetLabelValue() == spec.label
        np.testing.assert_allclose(segment.GetColor(), spec.color, atol=1e-6)
        tag = vtk.mutable("")
        assert segment.GetTag("TerminologyEntry", tag)
        assert spec.type.value in str(tag)
        labelmap = segment.GetRepresentation("Binary labelmap")
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        got = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(got, expected_matrix, atol=TOL)
        ext = labelmap.GetExtent()
        dims = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
        values = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims)
        source = lungs if spec.source == "lungs" else infection
        assert int((values == spec.label).sum()) == int((source == spec.label).sum()), spec.name
        # voxel positions: the first voxel of the segment in Slicer's IJK is the same voxel in ours
        k, j, i = (int(a[0]) for a in np.nonzero(values == spec.label))
        kk, jj, ii = (int(a[0]) for a in np.nonzero(source == spec.label))
        assert (i + ext[0], j + ext[2], k + ext[4]) == (ii, jj, kk)

    # Slicer writes it back; our reader understands Slicer's own file
    out = tmp_path / "slicer_written.seg.nrrd"
    storage.SetFileName(str(out))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.WriteData(node) == 1
    back_lungs, back_inf, back_ref, meta = read_seg_nrrd(out)
    offset = [int(v) for v in meta["fields"]["Segmentation_ReferenceImageExtentOffset"].split()]
    full_lungs = np.zeros(SHAPE, np.uint8)
    full_inf = np.zeros(SHAPE, np.uint8)
    z, y, x = back_lungs.shape
    full_lungs[offset[2] : offset[2] + z, offset[1] : offset[1] + y, offset[0] : offset[0] + x] = back_lungs
    full_inf[offset[2] : offset[2] + z, offset[1] : offset[1] + y, offset[0] : offset[0] + x] = back_inf
    np.testing.assert_array_equal(full_lungs, lungs)
    np.testing.assert_array_equal(full_inf, infection)
    np.testing.assert_allclose(back_ref.GetOrigin(), ref.TransformIndexToPhysicalPoint(offset), atol=TOL)
    np.testing.assert_allclose(back_ref.GetDirection(), ref.GetDirection(), atol=TOL)


def test_write_result_seg_nrrd_carries_versions(tmp_path: Path) -> None:
    from CovidCTLib.io.seg_nrrd import write_result_seg_nrrd
    from CovidCTLib.results import AnalysisResult
    from CovidCTLib.volume import CTVolume

    ref = reference_image()
    lungs, infection = masks()
    result = AnalysisResult(
        CTVolume(ref, "HU", "synthetic"), lungs, infection, method="model", model_versions={"lungs": "unet-1.2"}
    )
    path = write_result_seg_nrrd(result, tmp_path / "r.seg.nrrd")
    back_lungs, back_inf, _, meta = read_seg_nrrd(path)
    np.testing.assert_array_equal(back_lungs, lungs)
    np.testing.assert_array_equal(back_inf, infection)
    assert meta["fields"]["CovidCT_model_lungs"] == "unet-1.2"
    assert meta["fields"]["CovidCT_method"] == "model"
    assert meta["fields"]["CovidCT_SoftwareVersion"].startswith("CovidCT ")


def test_one_layer_label_seg_loads_in_slicer_on_oblique_grid(tmp_path: Path) -> None:
    """The generic one-layer writer (used for the longitudinal change map) overlays its CT in Slicer."""
    slicer = require_module("slicer", reason="slicer-core wheel not installed")
    vtk = require_module("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    from CovidCTLib.io.seg_nrrd import write_label_seg_nrrd

    ref = reference_image()
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:7, 4:12, 6:20] = 1
    labels[9:11, 15:25, 22:30] = 3
    segments = [
        (1, "New infection", (1.0, 0.0, 0.0)),
        (2, "Resolved infection", (0.0, 1.0, 0.0)),
        (3, "Persistent infection", (1.0, 1.0, 0.0)),
    ]
    path = write_label_seg_nrrd(labels, ref, segments, tmp_path / "change.seg.nrrd")
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == ref.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), ref.GetOrigin(), atol=TOL)
    np.testing.assert_allclose(image.GetDirection(), ref.GetDirection(), atol=TOL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)

    scene, storage, node = _read_in_slicer(slicer, path)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3 and segmentation.GetNumberOfLayers() == 1
    for value, name, _ in segments:
        segment = segmentation.GetSegment(f"Segment_{value}")
        assert segment.GetName() == name and segment.GetLabelValue() == value
        labelmap = segment.GetRepresentation("Binary labelmap")
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        got = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(got, _ijk_to_ras(ref), atol=TOL)
        ext = labelmap.GetExtent()
        dims = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
        values = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims) if value != 2 else None
        if values is not None:
            assert int((values == value).sum()) == int((labels == value).sum()), name
