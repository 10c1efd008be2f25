"""Surfaces from labelmaps (closed, right volume, right place) and mesh export round trips."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from required import require_module  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy

from CovidCTLib import surfaces
from CovidCTLib.errors import CovidCTError, OutputExistsError
from CovidCTLib.labels import SEGMENTS
from CovidCTLib.outputs.meshes import FORMATS, export_surfaces
from CovidCTLib.phantom import make_phantom
from CovidCTLib.results import AnalysisResult


def _image(size_xyz, spacing, origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.Image([int(s) for s in size_xyz], sitk.sitkInt16)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    return image


def _rotation(deg_x: float, deg_y: float, deg_z: float) -> np.ndarray:
    ax, ay, az = np.radians([deg_x, deg_y, deg_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _open_edges(poly: vtk.vtkPolyData) -> tuple[int, int]:
    """(boundary edges, non-manifold edges) of a surface."""
    edges = vtk.vtkFeatureEdges()
    edges.SetInputData(poly)
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOff()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    boundary = edges.GetOutput().GetNumberOfCells()
    edges.BoundaryEdgesOff()
    edges.NonManifoldEdgesOn()
    edges.Update()
    return boundary, edges.GetOutput().GetNumberOfCells()


def _volume_ml(poly: vtk.vtkPolyData) -> float:
    mass = vtk.vtkMassProperties()
    mass.SetInputData(poly)
    mass.Update()
    return mass.GetVolume() / 1000.0


def _ellipsoid(shape_zyx, radii_vox) -> np.ndarray:
    z, y, x = np.indices(shape_zyx, dtype=float)
    c = [(s - 1) / 2 for s in shape_zyx]
    return ((z - c[0]) / radii_vox[0]) ** 2 + ((y - c[1]) / radii_vox[1]) ** 2 + ((x - c[2]) / radii_vox[2]) ** 2 <= 1.0


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(40, 80, 80), spacing=(3.0, 2.0, 2.0), seed=1)


@pytest.fixture(scope="module")
def oblique_phantom():
    return make_phantom(shape=(40, 80, 80), spacing=(3.0, 2.0, 2.0), seed=2, oblique=True)


def test_ellipsoid_closed_right_volume_outward_normals():
    spacing = (0.5, 0.6, 0.8)  # x, y, z mm
    mask = _ellipsoid((50, 70, 80), (18, 25, 30))
    image = _image((80, 70, 50), spacing, origin=(-20.0, 15.0, 100.0))
    poly = surfaces.labelmap_to_polydata(mask, image)
    assert poly.GetNumberOfPolys() > 1000
    assert _open_edges(poly) == (0, 0)
    label_ml = mask.sum() * np.prod(spacing) / 1000.0
    assert _volume_ml(poly) == pytest.approx(label_ml, rel=0.03)
    points = vtk_to_numpy(poly.GetPoints().GetData())
    normals = vtk_to_numpy(poly.GetPointData().GetNormals())
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([39.5, 34.5, 24.5]))
    outward = np.einsum("ij,ij->i", points - centre, normals)
    assert (outward > 0).mean() > 0.99


def test_smoothing_and_decimation_keep_closed_surface_and_volume():
    mask = _ellipsoid((40, 40, 40), (15, 12, 16))
    image = _image((40, 40, 40), (1.0, 1.0, 1.0))
    plain = surfaces.labelmap_to_polydata(mask, image)
    reduced = surfaces.labelmap_to_polydata(mask, image, smoothing_iterations=20, decimation=0.5)
    assert reduced.GetNumberOfPolys() < 0.6 * plain.GetNumberOfPolys()
    assert _open_edges(reduced)[0] == 0
    assert _volume_ml(reduced) == pytest.approx(mask.sum() / 1000.0, rel=0.05)


def test_full_volume_mask_spans_the_image_physical_extent():
    size = (30, 20, 10)
    spacing = (0.7, 0.9, 2.5)
    image = _image(size, spacing, origin=(-12.0, 30.0, 7.5))
    low = np.array(image.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, -0.5]))
    high = np.array(image.TransformContinuousIndexToPhysicalPoint([s - 0.5 for s in size]))
    exact = surfaces.labelmap_to_polydata(np.ones((10, 20, 30), bool), image, smoothing_iterations=0)
    bounds = np.array(exact.GetBounds()).reshape(3, 2)
    np.testing.assert_allclose(bounds[:, 0], low, atol=1e-3)
    np.testing.assert_allclose(bounds[:, 1], high, atol=1e-3)
    smooth = np.array(surfaces.labelmap_to_polydata(np.ones((10, 20, 30), bool), image).GetBounds()).reshape(3, 2)
    # windowed-sinc smoothing may overshoot voxel faces a little (ringing), never by a quarter voxel
    tolerance = 0.25 * np.array(spacing)
    assert np.all(smooth[:, 0] >= low - tolerance) and np.all(smooth[:, 1] <= high + tolerance)
    assert np.all(smooth[:, 0] - low <= spacing) and np.all(high - smooth[:, 1] <= spacing)


@pytest.mark.parametrize("mirror", [False, True])
def test_oblique_geometry_known_voxel_and_ras(mirror):
    direction = _rotation(20, -10, 35)
    if mirror:
        direction = direction @ np.diag([1.0, -1.0, 1.0])  # a left-handed index frame
    image = _image((40, 30, 20), (0.8, 1.1, 2.0), origin=(50.0, -30.0, 200.0), direction=direction)
    mask = np.zeros((20, 30, 40), bool)
    mask[8:13, 10:17, 20:27] = True  # centre index (x, y, z) = (23, 13, 10)
    lps = surfaces.labelmap_to_polydata(mask, image)
    assert _open_edges(lps) == (0, 0)
    points = vtk_to_numpy(lps.GetPoints().GetData()).astype(float)
    expected = np.array(image.TransformContinuousIndexToPhysicalPoint([23.0, 13.0, 10.0]))
    np.testing.assert_allclose(points.mean(axis=0), expected, atol=0.3)
    # every vertex lies inside the block's oriented box: half a voxel beyond the voxel centres, plus at
    # most a quarter voxel of smoothing overshoot
    inverse = np.linalg.inv(np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing()))
    index = (points - np.array(image.GetOrigin())) @ inverse.T
    assert np.all(index.min(axis=0) >= np.array([20, 10, 8]) - 0.75)
    assert np.all(index.max(axis=0) <= np.array([26, 16, 12]) + 0.75)
    assert _volume_ml(lps) == pytest.approx(mask.sum() * np.prod(image.GetSpacing()) / 1000, rel=0.12)
    normals = vtk_to_numpy(lps.GetPointData().GetNormals())
    assert (np.einsum("ij,ij->i", points - expected, normals) > 0).mean() > 0.95
    ras = vtk_to_numpy(surfaces.labelmap_to_polydata(mask, image, coordinate_system="RAS").GetPoints().GetData())
    np.testing.assert_allclose(ras, points * np.array([-1.0, -1.0, 1.0]), atol=1e-3)


def test_empty_and_mismatched_masks():
    image = _image((10, 10, 10), (1, 1, 1))
    assert surfaces.labelmap_to_polydata(np.zeros((10, 10, 10), bool), image).GetNumberOfPoints() == 0
    with pytest.raises(ValueError):
        surfaces.labelmap_to_polydata(np.zeros((10, 10, 9), bool), image)
    with pytest.raises(ValueError):
        surfaces.labelmap_to_polydata(np.ones((10, 10, 10), bool), image, coordinate_system="XYZ")


def test_phantom_segments_closed_volumes_and_inside_the_ct(oblique_phantom):
    ph = oblique_phantom
    result = AnalysisResult(ct=ph.ct, lungs=ph.lungs, infection=ph.infection)
    timings: dict[str, float] = {}
    polys = surfaces.result_surfaces(result, timings=timings)
    assert list(polys) == [spec.key for spec in SEGMENTS]
    assert set(timings) == set(polys)
    image = ph.ct.image
    inverse = np.linalg.inv(np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing()))
    voxel_ml = ph.ct.voxel_volume_ml
    for spec in SEGMENTS:
        poly = polys[spec.key]
        mask = surfaces.segment_mask(result, spec.key)
        assert poly.GetNumberOfPolys() > 0, spec.key
        assert _open_edges(poly)[0] == 0, spec.key
        index = (vtk_to_numpy(poly.GetPoints().GetData()) - np.array(image.GetOrigin())) @ inverse.T
        assert np.all(index >= -0.75) and np.all(index <= np.array(image.GetSize()) - 0.25), spec.key
        if spec.source == "lungs":
            assert _volume_ml(poly) == pytest.approx(mask.sum() * voxel_ml, rel=0.05), spec.key


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_formats_round_trip(tmp_path, phantom, fmt):
    result = AnalysisResult(ct=phantom.ct, lungs=phantom.lungs, infection=phantom.infection)
    polys = surfaces.result_surfaces(result)
    paths = export_surfaces(polys, tmp_path, fmt)
    assert [p.name for p in paths] == [f"{spec.key}.{fmt}" for spec in SEGMENTS]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    for path, spec in zip(paths, SEGMENTS, strict=True):
        expected = polys[spec.key]
        if fmt == "gltf":
            reader = vtk.vtkGLTFReader()
            reader.SetFileName(str(path))
            reader.Update()
            append = vtk.vtkAppendPolyData()
            iterator = reader.GetOutput().NewIterator()
            iterator.InitTraversal()
            while not iterator.IsDoneWithTraversal():
                append.AddInputData(iterator.GetCurrentDataObject())
                iterator.GoToNextItem()
            append.Update()
            mesh = append.GetOutput()
        else:
            reader = {
                "stl": vtk.vtkSTLReader,
                "obj": vtk.vtkOBJReader,
                "ply": vtk.vtkPLYReader,
                "vtp": vtk.vtkXMLPolyDataReader,
            }[fmt]()
            reader.SetFileName(str(path))
            reader.Update()
            mesh = reader.GetOutput()
        assert mesh.GetNumberOfCells() == expected.GetNumberOfCells(), (fmt, spec.key)
        np.testing.assert_allclose(mesh.GetBounds(), expected.GetBounds(), atol=1e-3)
        if fmt == "stl":
            assert "SPACE=LPS" in reader.GetHeader()
        elif fmt == "obj":
            assert "SPACE=LPS" in path.read_text().split("\n", 3)[1]
        elif fmt == "ply":
            comments = [reader.GetComments().GetValue(i) for i in range(reader.GetComments().GetNumberOfValues())]
            assert "SPACE=LPS" in comments
        elif fmt == "vtp":
            assert mesh.GetFieldData().GetAbstractArray("SPACE").GetValue(0) == "LPS"
            assert mesh.GetFieldData().GetAbstractArray("SegmentName").GetValue(0) == spec.name
    with pytest.raises(OutputExistsError):
        export_surfaces(polys, tmp_path, fmt)
    assert export_surfaces(polys, tmp_path, fmt, overwrite=True) == paths


def test_export_multiblock_and_result_input(tmp_path, phantom):
    result = AnalysisResult(ct=phantom.ct, lungs=phantom.lungs, infection=np.zeros_like(phantom.infection))
    paths = export_surfaces(result, tmp_path, "vtp", multiblock=True)
    assert [p.name for p in paths] == ["segments.vtp"]
    reader = vtk.vtkXMLPolyDataReader()
    reader.SetFileName(str(paths[0]))
    reader.Update()
    labels = vtk_to_numpy(reader.GetOutput().GetCellData().GetArray("SegmentLabel"))
    assert set(np.unique(labels)) == {1, 2}  # empty infection segments are skipped
    assert export_surfaces(result, tmp_path / "one", "stl") == [
        tmp_path / "one" / "right_lung.stl",
        tmp_path / "one" / "left_lung.stl",
    ]
    with pytest.raises(CovidCTError):
        export_surfaces(result, tmp_path, "dxf")


@pytest.mark.parametrize("fmt", ["stl", "obj", "ply", "vtp"])
def test_slicer_reads_the_meshes_as_lps(tmp_path, fmt):
    slicer = require_module("slicer", reason="slicer-core wheel not installed")
    image = _image((20, 20, 20), (1.0, 1.0, 1.0), origin=(10.0, 20.0, 30.0))
    mask = np.zeros((20, 20, 20), bool)
    mask[5:15, 4:12, 6:16] = True
    poly = surfaces.labelmap_to_polydata(mask, image)
    path = export_surfaces({"ggo": poly}, tmp_path, fmt)[0]
    scene = slicer.vtkMRMLScene()
    model = scene.AddNewNodeByClass("vtkMRMLModelNode")
    storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
    storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.CoordinateSystemRAS)  # the file header must win
    storage.SetFileName(str(path))
    model.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(model) == 1
    assert storage.GetCoordinateSystem() == slicer.vtkMRMLStorageNode.CoordinateSystemLPS
    ras = vtk_to_numpy(model.GetPolyData().GetPoints().GetData())
    lps = vtk_to_numpy(poly.GetPoints().GetData())
    assert model.GetPolyData().GetNumberOfCells() == poly.GetNumberOfCells()
    np.testing.assert_allclose(ras.mean(axis=0), lps.mean(axis=0) * [-1, -1, 1], atol=1e-3)


def test_points_csv_for_paraview(tmp_path, phantom):
    from CovidCTLib.outputs.points_csv import write_points_csv

    result = AnalysisResult(ct=phantom.ct, lungs=phantom.lungs, infection=phantom.infection)
    truth = np.zeros_like(phantom.infection)
    truth[phantom.infection > 0] = 1
    truth[0, 0, 0] = 2  # a ground-truth voxel outside the lungs is listed too
    path = write_points_csv(result, tmp_path / "points.csv", ground_truth_infection=truth)
    header = path.read_text().split("\n", 1)[0]
    assert header == "x,y,z,value,lung,ground_truth"
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    assert len(table) == int((phantom.lungs > 0).sum()) + 1
    np.testing.assert_array_equal(
        np.bincount(table[:, 3].astype(int), minlength=3)[1:],
        np.bincount(phantom.infection[phantom.lungs > 0], minlength=3)[1:],
    )
    corner = table[(table[:, 5] == 2)]
    np.testing.assert_allclose(corner[0, :3], phantom.ct.image.TransformIndexToPhysicalPoint([0, 0, 0]), atol=1e-3)
    # what ParaView does: CSV reader, then Table To Points
    reader = vtk.vtkDelimitedTextReader()
    reader.SetFileName(str(path))
    reader.SetHaveHeaders(True)
    reader.SetDetectNumericColumns(True)
    to_points = vtk.vtkTableToPolyData()
    to_points.SetInputConnection(reader.GetOutputPort())
    to_points.SetXColumn("x")
    to_points.SetYColumn("y")
    to_points.SetZColumn("z")
    to_points.Update()
    cloud = to_points.GetOutput()
    assert cloud.GetNumberOfPoints() == len(table)
    assert cloud.GetPointData().GetArray("value") is not None
    half = write_points_csv(result, tmp_path / "half.csv", step=2)
    assert len(np.loadtxt(half, delimiter=",", skiprows=1)) == int((phantom.lungs[::2, ::2, ::2] > 0).sum())
