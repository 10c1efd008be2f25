"""The MRML adapter on a real slicer-core scene: segments, geometry (oblique too), surfaces, tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from required import require_module  # noqa: E402

slicer = require_module("slicer", reason="slicer-core wheel not installed")
vtk = require_module("vtk")

from slicer_fixture import make_mrml_context  # noqa: E402

from CovidCTLib.labels import SEGMENTS  # noqa: E402
from CovidCTLib.mrml import add_volume_from_image, image_from_volume_node, results_to_mrml  # noqa: E402
from CovidCTLib.mrml.geometry import ijk_to_ras_from_image, numpy_matrix, volume_ijk_to_ras  # noqa: E402
from CovidCTLib.mrml.segmentation import segment_array, terminology_string  # noqa: E402
from CovidCTLib.mrml.tables import STATISTICS_ROWS, lookup, table_rows  # noqa: E402
from CovidCTLib.phantom import make_phantom  # noqa: E402
from CovidCTLib.volume import same_geometry  # noqa: E402

SHAPE = (24, 56, 56)
SPACING = (6.0, 3.2, 3.2)


@pytest.fixture
def mrml():
    """A fresh real MRML scene with the core module logics (see Testing/slicer_fixture.py)."""
    context = make_mrml_context()
    yield context
    context.scene.Clear(1)


@pytest.fixture(scope="module")
def phantoms():
    """A small axis-aligned and a small oblique phantom (deterministic)."""
    return {
        "axial": make_phantom(shape=SHAPE, spacing=SPACING, seed=1),
        "oblique": make_phantom(shape=SHAPE, spacing=SPACING, seed=2, oblique=True),
    }


def sample_report(lungs: np.ndarray, infection: np.ndarray, voxel_ml: float) -> dict:
    """A report.json-shaped dictionary with numbers computed from the masks."""
    right = float((lungs == 1).sum() * voxel_ml)
    left = float((lungs == 2).sum() * voxel_ml)
    ggo = float((infection == 1).sum() * voxel_ml)
    cons = float((infection == 2).sum() * voxel_ml)
    return {
        "covid_probability": 0.73,
        "method": "classical",
        "lungs": {"right_ml": right, "left_ml": left, "total_ml": right + left},
        "infection": {
            "total_ml": ggo + cons,
            "ggo_ml": ggo,
            "consolidation_ml": cons,
            "percent_of_lungs": 100 * (ggo + cons) / (right + left),
            "right_percent": 12.5,
            "left_percent": 3.25,
        },
        "zones": [{"name": "right upper", "percent": 10.0, "score": 1}, {"name": "left lower", "percent": 30.0}],
        "severity_score": {"total": 7},
        "lesions": [
            {"id": 1, "type": "GGO", "volume_ml": 4.5, "centroid_ras": [1.0, 2.0, 3.0]},
            {"id": 2, "type": "consolidation", "volume_ml": 1.25, "centroid_ras": [4.0, 5.0, 6.0]},
        ],
        "versions": {"covidct": "0.1.0", "method": "classical", "models": {"lung": "1.0"}},
        "disclaimer": "research software, not a diagnosis",
    }


def _run(mrml, phantom, **kwargs):
    volume = add_volume_from_image(mrml.scene, phantom.ct.image, "Phantom CT")
    report = sample_report(phantom.lungs, phantom.infection, phantom.ct.voxel_volume_ml)
    nodes = results_to_mrml(mrml.scene, volume, phantom.lungs, phantom.infection, report, **kwargs)
    return volume, report, nodes


def test_segments_names_colours_terminology_and_voxels(mrml, phantoms):
    phantom = phantoms["axial"]
    _volume, _report, nodes = _run(mrml, phantom, surfaces=False)
    segmentation = nodes["segmentation"].GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 4
    assert nodes["segmentation"].GetName() == "Phantom CT CovidCT"
    display = nodes["segmentation"].GetDisplayNode()
    for spec in SEGMENTS:
        segment = segmentation.GetSegment(spec.key)
        assert segment.GetName() == spec.name
        assert np.allclose(segment.GetColor(), spec.color, atol=1e-6)
        assert segment.GetTerminology() == terminology_string(spec)
        assert f"~{spec.category.slicer_string()}~{spec.type.slicer_string()}~" in segment.GetTerminology()
        if spec.modifier is not None:
            assert spec.modifier.slicer_string() in segment.GetTerminology()
        truth = (phantom.lungs if spec.source == "lungs" else phantom.infection) == spec.label
        mask = segment_array(nodes["segmentation"], spec.key)
        assert mask.shape == truth.shape
        assert int(mask.sum()) == int(truth.sum()) > 0
        assert np.array_equal(mask.astype(bool), truth)
        assert display.GetSegmentOpacity3D(spec.key) == pytest.approx(spec.opacity_3d)
    assert segmentation.GetNumberOfLayers() == 2


@pytest.mark.parametrize("kind", ["axial", "oblique"])
def test_geometry_equals_input_volume(mrml, phantoms, kind):
    phantom = phantoms[kind]
    volume, _report, nodes = _run(mrml, phantom, surfaces=False)
    # the volume node holds the phantom's exact geometry (LPS -> RAS), and converts back losslessly
    assert np.allclose(volume_ijk_to_ras(volume), ijk_to_ras_from_image(phantom.ct.image), atol=1e-9)
    back = image_from_volume_node(volume)
    assert same_geometry(back, phantom.ct.image, tol=1e-9)
    assert np.array_equal(slicer.util.arrayFromVolume(volume), phantom.ct.array)
    if kind == "oblique":
        direction = np.asarray(phantom.ct.image.GetDirection()).reshape(3, 3)
        assert not np.allclose(np.abs(direction), np.eye(3), atol=1e-3)  # really oblique
    # every segment labelmap lies exactly on the volume's grid
    seg_node = nodes["segmentation"]
    labelmap_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    for spec in SEGMENTS:
        layer = seg_node.GetSegmentation().GetSegment(spec.key).GetRepresentation(labelmap_name)
        matrix = vtk.vtkMatrix4x4()
        layer.GetImageToWorldMatrix(matrix)
        assert np.allclose(numpy_matrix(matrix), volume_ijk_to_ras(volume), atol=1e-9)
        assert layer.GetExtent() == volume.GetImageData().GetExtent()
    # and the reference geometry is the volume's
    reference = seg_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    parsed = np.array([float(v) for v in reference.split(";") if v != ""])
    oriented = slicer.vtkOrientedImageData()
    oriented.ShallowCopy(volume.GetImageData())
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    oriented.SetImageToWorldMatrix(m)
    expected = np.array(
        [float(v) for v in slicer.vtkSegmentationConverter.SerializeImageGeometry(oriented).split(";") if v != ""]
    )
    assert np.allclose(parsed, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["axial", "oblique"])
def test_closed_surfaces_inside_volume(mrml, phantoms, kind):
    phantom = phantoms[kind]
    volume, _report, nodes = _run(mrml, phantom, surfaces=True, smoothing=0.3)
    seg_node = nodes["segmentation"]
    display = seg_node.GetDisplayNode()
    assert display.GetPreferredDisplayRepresentationName3D() == "Closed surface"
    assert display.GetVisibility3D()
    assert seg_node.GetSegmentation().GetConversionParameter("Smoothing factor") == "0.3"
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    for spec in SEGMENTS:
        poly = vtk.vtkPolyData()
        assert seg_node.GetClosedSurfaceRepresentation(spec.key, poly)
        assert poly.GetNumberOfPoints() > 50 and poly.GetNumberOfCells() > 50
        b = poly.GetBounds()
        for axis in range(3):
            assert b[2 * axis] >= bounds[2 * axis] - 1e-3
            assert b[2 * axis + 1] <= bounds[2 * axis + 1] + 1e-3
        # the surface sits where the voxels are: its centre is near the mask centroid (in RAS)
        truth = (phantom.lungs if spec.source == "lungs" else phantom.infection) == spec.label
        zyx = np.argwhere(truth).mean(axis=0)
        ras = ijk_to_ras_from_image(phantom.ct.image) @ np.array([zyx[2], zyx[1], zyx[0], 1.0])
        centre = np.array([(b[0] + b[1]) / 2, (b[2] + b[3]) / 2, (b[4] + b[5]) / 2])
        size = np.array([b[1] - b[0], b[3] - b[2], b[5] - b[4]])
        assert np.all(np.abs(centre - ras[:3]) <= size / 2 + 1.0)
    # lungs are drawn semi-transparent, lesions opaque
    assert display.GetSegmentOpacity3D("right_lung") < 1.0 and display.GetSegmentOpacity3D("ggo") == 1.0


def test_tables_equal_report(mrml, phantoms):
    _volume, report, nodes = _run(mrml, phantoms["axial"], surfaces=False)
    rows = {row["Key"]: row for row in table_rows(nodes["statistics"])}
    for key, _label, unit in STATISTICS_ROWS:
        expected = lookup(report, key)
        if expected is None:  # a field this report lacks (e.g. no lobes) is shown as NaN, not invented
            assert np.isnan(rows[key]["Value"])
        else:
            assert rows[key]["Value"] == pytest.approx(float(expected), rel=1e-9)
        assert rows[key]["Unit"] == unit
    assert rows["lesions.count"]["Value"] == 2
    assert rows["zones[0].percent"]["Value"] == pytest.approx(10.0)
    assert rows["zones[1].percent"]["Measurement"] == "Zone left lower: percent"
    assert "research" in rows["covid_probability"]["Measurement"]
    assert nodes["statistics"].GetAttribute("CovidCT.Disclaimer") == report["disclaimer"]
    assert nodes["statistics"].GetAttribute("CovidCT.SoftwareVersion") == "0.1.0"
    lesions = table_rows(nodes["lesions"])
    assert [row["volume_ml"] for row in lesions] == pytest.approx([4.5, 1.25])
    assert [row["type"] for row in lesions] == ["GGO", "consolidation"]
    assert lesions[1]["centroid_ras"] == "4 5 6"


def test_missing_probability_is_nan(mrml, phantoms):
    phantom = phantoms["axial"]
    volume = add_volume_from_image(mrml.scene, phantom.ct.image, "ct")
    report = sample_report(phantom.lungs, phantom.infection, phantom.ct.voxel_volume_ml)
    report["covid_probability"] = None
    nodes = results_to_mrml(mrml.scene, volume, phantom.lungs, phantom.infection, report, surfaces=False)
    rows = {row["Key"]: row for row in table_rows(nodes["statistics"])}
    assert math.isnan(rows["covid_probability"]["Value"])


def test_filed_under_study_and_lung_window(mrml, phantoms):
    phantom = phantoms["axial"]
    volume = add_volume_from_image(mrml.scene, phantom.ct.image, "ct")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "Study 1")
    # the application's subject hierarchy plugins (not in the wheel) would create the item on load
    item = sh.GetItemByDataNode(volume) or sh.CreateItem(study, volume)
    sh.SetItemParent(item, study)
    report = sample_report(phantom.lungs, phantom.infection, phantom.ct.voxel_volume_ml)
    nodes = results_to_mrml(mrml.scene, volume, phantom.lungs, phantom.infection, report, surfaces=False)
    for node in nodes.values():
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
    display = volume.GetDisplayNode()
    assert display.GetWindow() == pytest.approx(1500) and display.GetLevel() == pytest.approx(-600)
    assert not display.GetAutoWindowLevel()


def test_failure_leaves_scene_unchanged(mrml, phantoms, monkeypatch):
    phantom = phantoms["axial"]
    volume = add_volume_from_image(mrml.scene, phantom.ct.image, "ct")
    before = mrml.scene.GetNumberOfNodes()
    report = sample_report(phantom.lungs, phantom.infection, phantom.ct.voxel_volume_ml)
    with pytest.raises(ValueError, match="shape"):
        results_to_mrml(mrml.scene, volume, phantom.lungs[1:], phantom.infection, report)
    assert mrml.scene.GetNumberOfNodes() == before

    import CovidCTLib.mrml.adapter as adapter

    def broken(*args, **kwargs):
        raise RuntimeError("surface conversion failed")

    monkeypatch.setattr(adapter, "show_closed_surfaces", broken)
    window = volume.GetDisplayNode().GetWindow()
    with pytest.raises(RuntimeError, match="surface"):
        results_to_mrml(mrml.scene, volume, phantom.lungs, phantom.infection, report)
    assert mrml.scene.GetNumberOfNodes() == before
    assert mrml.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    assert mrml.scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 0
    assert volume.GetDisplayNode().GetWindow() == window  # display untouched on failure


RENDER_SCRIPT = """
import sys
sys.path.insert(0, {testing!r})
from slicer_fixture import make_mrml_context
from CovidCTLib.phantom import make_phantom
from CovidCTLib.mrml import add_volume_from_image, results_to_mrml
from CovidCTLib.mrml.render import render_segmentation_png
context = make_mrml_context()
phantom = make_phantom(shape=(24, 56, 56), spacing=(6.0, 3.2, 3.2), seed=1)
volume = add_volume_from_image(context.scene, phantom.ct.image, "ct")
nodes = results_to_mrml(context.scene, volume, phantom.lungs, phantom.infection, {{}}, surfaces=True)
render_segmentation_png(nodes["segmentation"], {path!r}, size=(200, 200))
"""


def test_offscreen_render_of_surfaces(tmp_path):
    """The closed surfaces render offscreen (own process: a missing OpenGL context must not kill pytest)."""
    import subprocess
    import sys
    from pathlib import Path

    from vtk.util import numpy_support

    path = tmp_path / "scene.png"
    script = RENDER_SCRIPT.format(testing=str(Path(__file__).parent), path=str(path))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    if (
        run.returncode != 0
        and not path.exists()
        and any(word in run.stderr for word in ("GLX", "EGL", "OpenGL", "X server", "DISPLAY"))
    ):
        pytest.skip(f"no OpenGL context for offscreen rendering: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    assert image.GetDimensions()[:2] == (200, 200)
    rgb = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:, :3].astype(int)
    background = np.array([26, 26, 36])
    drawn = np.abs(rgb - background).sum(axis=1) > 30
    assert 0.1 < drawn.mean() < 0.9  # the lungs fill a good part of the picture, not all of it
    # right lung (green) on the viewer's left, left lung (blue) on the right: anterior view
    xy = rgb.reshape(200, 200, 3)
    greenish = (xy[:, :, 1] > xy[:, :, 2] + 5) & (xy[:, :, 0] < xy[:, :, 1]) & drawn.reshape(200, 200)
    bluish = (xy[:, :, 2] > xy[:, :, 1] + 5) & drawn.reshape(200, 200)
    assert greenish[:, :100].sum() > greenish[:, 100:].sum()
    assert bluish[:, 100:].sum() > bluish[:, :100].sum()


def test_lobes_node_overlays_an_oblique_volume_exactly(mrml):
    """The lobes become a second segmentation node: five coded segments, the voxels and the oblique grid kept."""
    from CovidCTLib.labels import LOBE_SEGMENTS
    from CovidCTLib.mrml.segmentation import segment_array

    phantom = make_phantom(shape=SHAPE, spacing=SPACING, seed=3, oblique=True, fissures=True)
    volume = add_volume_from_image(mrml.scene, phantom.ct.image, "Oblique CT")
    report = sample_report(phantom.lungs, phantom.infection, phantom.ct.voxel_volume_ml)
    nodes = results_to_mrml(
        mrml.scene, volume, phantom.lungs, phantom.infection, report, surfaces=False, lobes=phantom.lobes
    )
    lobes = nodes["lobes"]
    assert lobes.GetName() == "Oblique CT CovidCT lobes"
    assert lobes.GetSegmentation().GetNumberOfSegments() == 5
    for spec in LOBE_SEGMENTS:
        segment = lobes.GetSegmentation().GetSegment(spec.key)
        assert segment.GetName() == spec.name and spec.type.value in segment.GetTerminology()
        assert np.array_equal(segment_array(lobes, spec.key), (phantom.lobes == spec.label).astype(np.uint8))
    assert lobes.GetAttribute("CovidCT.InputVolume") == volume.GetID()


def test_mass_like_lesions_become_a_locked_point_list_in_ras(mrml, phantoms, monkeypatch):
    """The HU gate's mass-like lesions (report.json, LPS mm) land as one locked control point each, at the
    RAS position of the centroid, named by size and lung; none listed -> no node; a failure removes it too."""
    phantom = phantoms["oblique"]
    volume = add_volume_from_image(mrml.scene, phantom.ct.image, "ct")
    report = sample_report(phantom.lungs, phantom.infection, phantom.ct.voxel_volume_ml)
    assert "masses" not in results_to_mrml(mrml.scene, volume, phantom.lungs, phantom.infection, report, surfaces=False)
    assert mrml.scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode").GetNumberOfItems() == 0
    mass = {"volume_ml": 88.65, "solid_core_ml": 40.4, "core_diameter_mm": 64.1, "lung": "left"}
    report["infection_gating"] = {"mass_like_lesions": [{**mass, "centroid_mm": [53.58, 200.2, -207.82]}]}
    node = results_to_mrml(mrml.scene, volume, phantom.lungs, phantom.infection, report, surfaces=False)["masses"]
    assert node.GetNumberOfControlPoints() == 1 and node.GetLocked()
    position = [0.0, 0.0, 0.0]
    node.GetNthControlPointPosition(0, position)
    np.testing.assert_allclose(position, [-53.58, -200.2, -207.82], atol=1e-6)
    assert node.GetNthControlPointLabel(0) == "mass-like 89 mL (left lung)"
    assert "Not counted as infection" in node.GetNthControlPointDescription(0)
    assert node.GetAttribute("CovidCT.InputVolume") == volume.GetID()

    import CovidCTLib.mrml.adapter as adapter

    def broken(*args, **kwargs):
        raise RuntimeError("surface conversion failed")

    monkeypatch.setattr(adapter, "show_closed_surfaces", broken)
    with pytest.raises(RuntimeError, match="surface"):
        results_to_mrml(mrml.scene, volume, phantom.lungs, phantom.infection, report)
    assert mrml.scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode").GetNumberOfItems() == 1  # only the earlier one
