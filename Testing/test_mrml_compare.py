"""Comparison layout in a real MRML scene (slicer-core wheel): layout, view restrictions, registration
transform, slice links, trend plot and tables, and that they survive a .mrb save / reload."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from required import require_module  # noqa: E402

require_module("slicer", reason="slicer-core wheel not installed")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer  # noqa: E402
from slicer_fixture import make_mrml_context  # noqa: E402

from CovidCTLib.longitudinal.compare import TimePoint, compare  # noqa: E402
from CovidCTLib.longitudinal.synthetic import known_transform, make_followup  # noqa: E402
from CovidCTLib.mrml import compare as mc  # noqa: E402
from CovidCTLib.mrml.geometry import add_volume_from_image, numpy_matrix  # noqa: E402
from CovidCTLib.mrml.segmentation import segment_array  # noqa: E402
from CovidCTLib.phantom import make_phantom  # noqa: E402

C = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def comparison():
    phantom = make_phantom(shape=(40, 96, 96), spacing=(4.0, 3.0, 3.0), seed=2)
    transform = known_transform(phantom.ct.image, deformation_mm=0.0)
    fu = make_followup(phantom.ct, phantom.lungs, phantom.infection, phantom.lesions, transform=transform)
    result = compare(
        [
            TimePoint(phantom.ct, phantom.lungs, phantom.infection, "baseline"),
            TimePoint(fu.ct, fu.lungs, fu.infection, "followup"),
        ]
    )
    return phantom, fu, result


def _show(comparison):
    phantom, fu, result = comparison
    context = make_mrml_context()
    scene = context.scene
    base = add_volume_from_image(scene, phantom.ct.image, "Baseline CT")
    follow = add_volume_from_image(scene, fu.ct.image, "Follow-up CT")
    nodes = mc.show_comparison(scene, base, follow, result)
    return scene, base, follow, nodes, result


def _check_scene(scene, base, follow, result):
    """Everything the comparison relies on, looked up by ID in ``scene`` (fresh or reloaded)."""
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == mc.COMPARE_LAYOUT_ID
    assert layout.IsLayoutDescription(mc.COMPARE_LAYOUT_ID)
    xml = layout.GetLayoutDescription(mc.COMPARE_LAYOUT_ID)
    for name in [*mc.SLICE_VIEWS, *mc.THREED_VIEWS, mc.PLOT_VIEW]:
        assert f'singletontag="{name}"' in xml
    slices = {name: scene.GetNodeByID(f"vtkMRMLSliceNode{name}") for name in mc.SLICE_VIEWS}
    views = {name: scene.GetNodeByID(f"vtkMRMLViewNode{name}") for name in mc.THREED_VIEWS}
    assert all(slices.values()) and all(views.values())
    for name, node in slices.items():
        assert node.GetOrientation() == mc.SLICE_VIEWS[name] and node.GetViewGroup() == 0
        composite = scene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode")
        assert composite.GetLinkedControl() == 1
        expected = follow if name.startswith("Followup") else base
        assert composite.GetBackgroundVolumeID() == expected.GetID()
    # linked views start at the same anatomical offset per orientation
    for orientation in ("Axial", "Coronal"):
        offsets = [slices[f"{c}{orientation}"].GetSliceOffset() for c in mc.COLUMNS]
        assert np.allclose(offsets, offsets[0])

    segs = {
        n.GetName(): n
        for n in (
            scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))
        )
    }
    by_role = {
        role: next(n for name, n in segs.items() if key in name)
        for role, key in (("Baseline", "(baseline)"), ("Followup", "(follow-up)"), ("Change", "change"))
    }
    for role, node in by_role.items():
        ids = [node.GetDisplayNode().GetNthViewNodeID(i) for i in range(node.GetDisplayNode().GetNumberOfViewNodeIDs())]
        expected = {slices[f"{role}Axial"].GetID(), slices[f"{role}Coronal"].GetID()}
        if role != "Change":
            expected.add(views[f"{role}3D"].GetID())
        assert set(ids) == expected, (role, ids)
    change_names = [by_role["Change"].GetSegmentation().GetNthSegment(i).GetName() for i in range(3)]
    assert change_names == ["Persistent infection", "New infection", "Resolved infection"]

    # follow-up volume and segmentation are shown through the registration
    transform = scene.GetNodeByID(follow.GetTransformNodeID())
    assert transform is not None and by_role["Followup"].GetTransformNodeID() == transform.GetID()
    assert base.GetTransformNodeID() is None
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformFromParent(matrix)
    m = numpy_matrix(matrix)
    reg = result.registrations[1].transform
    for p_lps in ([10.0, -20.0, 5.0], [-60.0, 30.0, -40.0]):
        expected_ras = C @ np.array(reg.TransformPoint(p_lps))
        got = m @ np.array([*(C @ p_lps), 1.0])
        assert np.allclose(got[:3], expected_ras, atol=1e-3)

    plot_view = scene.GetSingletonNode(mc.PLOT_VIEW, "vtkMRMLPlotViewNode")
    chart = scene.GetNodeByID(plot_view.GetPlotChartNodeID())
    assert chart.GetNumberOfPlotSeriesNodes() == 3
    series = chart.GetNthPlotSeriesNode(0)
    table = scene.GetNodeByID(series.GetTableNodeID())
    assert table.GetNumberOfRows() == 2 and series.GetYColumnName() == "Right lung %"
    right = [result.report["timepoints"][i]["numbers"]["regions"]["right"]["percent"] for i in (0, 1)]
    assert np.allclose([float(table.GetCellText(r, 2)) for r in (0, 1)], right, atol=1e-3)
    changes = scene.GetFirstNodeByName("CovidCT changes")
    assert changes.GetNumberOfRows() >= 3 and changes.GetCellText(0, 0) == "total"
    assert changes.GetCellText(0, 6) == result.report["overall"]["total"]
    assert "not a diagnosis" in changes.GetAttribute("CovidCT.Disclaimer")


def test_layout_views_transform_links(comparison):
    scene, base, follow, nodes, result = _show(comparison)
    _check_scene(scene, base, follow, result)
    assert nodes.layout.GetAttribute(mc.LAYOUT_ATTRIBUTE) == mc.layout_xml()


def test_survives_mrb_save_and_reload(comparison, tmp_path):
    scene, base, follow, _, result = _show(comparison)
    mrb = tmp_path / "comparison.mrb"
    assert scene.WriteToMRB(str(mrb))
    assert mrb.stat().st_size > 10_000
    loaded = make_mrml_context().scene
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(str(tmp_path / "cache"))
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache)
    loaded.SetDataIOManager(io_manager)
    loaded.SetCacheManager(cache)
    assert loaded.ReadFromMRB(str(mrb))
    # Slicer does not save layout descriptions: restore it from the layout node attribute
    layout = loaded.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetAttribute(mc.LAYOUT_ATTRIBUTE)
    assert mc.restore_comparison_layout(loaded)
    base2 = loaded.GetFirstNodeByName("Baseline CT")
    follow2 = loaded.GetFirstNodeByName("Follow-up CT")
    assert base2.GetImageData().GetDimensions() == base.GetImageData().GetDimensions()
    _check_scene(loaded, base2, follow2, result)
    seg = loaded.GetFirstNodeByName("CovidCT change map")
    assert segment_array(seg, "new").sum() == (result.change == 2).sum()
    assert loaded.GetFirstNodeByName("CovidCT changes").GetNumberOfRows() >= 3


def test_deformable_registration_as_grid_transform(comparison):
    phantom, _, result = comparison
    context = make_mrml_context()
    affine = result.registrations[1].transform
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    bspline = sitk.BSplineTransformInitializer(phantom.ct.image, [3, 3, 3])
    params = np.zeros(len(bspline.GetParameters()))
    params[len(params) // 3 + 20] = 4.0
    bspline.SetParameters(params.tolist())
    composite.AddTransform(bspline)
    node = mc.add_registration_transform(context.scene, composite, phantom.ct.image, "grid")
    assert node.IsA("vtkMRMLGridTransformNode")
    from_parent = node.GetTransformFromParent()
    for index in ((48, 48, 20), (30, 60, 10)):
        p = phantom.ct.image.TransformIndexToPhysicalPoint(index)
        expected = C @ np.array(composite.TransformPoint(p))
        got = from_parent.TransformPoint(*(C @ np.array(p)))
        assert np.allclose(got, expected, atol=0.3)  # field sampled every 4 mm, cubic interpolation
