"""The classifier heatmap in a real slicer-core scene (issue 16.2): a scalar volume on the CT's exact grid
(oblique too), its colour table, the slice views' foreground layer and the all-or-nothing rule."""

from __future__ import annotations

import numpy as np
import pytest
from required import require_module  # noqa: E402

slicer = require_module("slicer", reason="slicer-core wheel not installed")

from slicer_fixture import make_mrml_context  # noqa: E402

from CovidCTLib.mrml import add_volume_from_image, result_to_mrml, results_to_mrml  # noqa: E402
from CovidCTLib.mrml.geometry import array_from_image_data, volume_ijk_to_ras  # noqa: E402
from CovidCTLib.mrml.heatmap import (  # noqa: E402
    HEATMAP_FLOOR,
    HEATMAP_OPACITY,
    find_heat_color_node,
    heatmap_visible,
    set_heatmap_visible,
)
from CovidCTLib.phantom import make_phantom  # noqa: E402
from CovidCTLib.results import AnalysisResult  # noqa: E402


@pytest.fixture
def mrml():
    context = make_mrml_context()
    for name in ("Red", "Yellow", "Green"):  # the three slice views' composite nodes, as the application has
        composite = context.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
    yield context
    context.scene.Clear(1)


@pytest.fixture(scope="module")
def oblique():
    phantom = make_phantom(shape=(20, 48, 48), spacing=(6.0, 3.5, 3.5), seed=2, oblique=True)
    heat = np.random.default_rng(0).random(phantom.lungs.shape).astype(np.float32)
    heat[phantom.lungs == 0] = 0.0
    return phantom, heat


def _composites(scene):
    return list(scene.GetNodesByClass("vtkMRMLSliceCompositeNode"))


def test_heatmap_node_overlays_an_oblique_volume_exactly_and_is_the_foreground(mrml, oblique):
    phantom, heat = oblique
    volume = add_volume_from_image(mrml.scene, phantom.ct.image, "ct")
    nodes = results_to_mrml(mrml.scene, volume, phantom.lungs, phantom.infection, {}, surfaces=False, heatmap=heat)
    node = nodes["heatmap"]
    assert node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
    assert np.allclose(volume_ijk_to_ras(node), volume_ijk_to_ras(volume), atol=1e-9)
    assert not np.allclose(volume_ijk_to_ras(volume)[:3, :3], np.diag(np.diag(volume_ijk_to_ras(volume)[:3, :3])))
    assert np.array_equal(array_from_image_data(node.GetImageData()), heat)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == find_heat_color_node(mrml.scene).GetID()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(HEATMAP_FLOOR)
    assert node.GetAttribute("CovidCT.InputVolume") == volume.GetID()
    for composite in _composites(mrml.scene):
        assert composite.GetForegroundVolumeID() == node.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(HEATMAP_OPACITY)
    assert heatmap_visible(mrml.scene, node)
    assert set_heatmap_visible(mrml.scene, node, False) == 3
    assert not heatmap_visible(mrml.scene, node)
    assert all(c.GetForegroundVolumeID() is None for c in _composites(mrml.scene))
    set_heatmap_visible(mrml.scene, node, True)
    assert heatmap_visible(mrml.scene, node)


def test_hiding_leaves_other_foregrounds_alone(mrml, oblique):
    phantom, heat = oblique
    volume = add_volume_from_image(mrml.scene, phantom.ct.image, "ct")
    other = add_volume_from_image(mrml.scene, phantom.ct.image, "another foreground")
    nodes = results_to_mrml(mrml.scene, volume, phantom.lungs, phantom.infection, {}, surfaces=False, heatmap=heat)
    first = _composites(mrml.scene)[0]
    first.SetForegroundVolumeID(other.GetID())  # the user put something else in one view
    set_heatmap_visible(mrml.scene, nodes["heatmap"], False)
    assert first.GetForegroundVolumeID() == other.GetID()


def test_no_heatmap_no_node(mrml, oblique):
    phantom, _ = oblique
    volume = add_volume_from_image(mrml.scene, phantom.ct.image, "ct")
    nodes = results_to_mrml(mrml.scene, volume, phantom.lungs, phantom.infection, {}, surfaces=False)
    assert "heatmap" not in nodes and find_heat_color_node(mrml.scene) is None
    assert all(c.GetForegroundVolumeID() is None for c in _composites(mrml.scene))


def test_wrong_heatmap_leaves_the_scene_unchanged(mrml, oblique):
    phantom, heat = oblique
    volume = add_volume_from_image(mrml.scene, phantom.ct.image, "ct")
    before = mrml.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="heatmap shape"):
        results_to_mrml(mrml.scene, volume, phantom.lungs, phantom.infection, {}, surfaces=False, heatmap=heat[1:])
    assert mrml.scene.GetNumberOfNodes() == before and find_heat_color_node(mrml.scene) is None


def test_result_to_mrml_takes_the_results_heatmap(mrml, oblique):
    phantom, heat = oblique
    volume = add_volume_from_image(mrml.scene, phantom.ct.image, "ct")
    result = AnalysisResult(ct=phantom.ct, lungs=phantom.lungs, infection=phantom.infection, heatmap=heat)
    nodes = result_to_mrml(mrml.scene, volume, result, surfaces=False)
    assert np.array_equal(array_from_image_data(nodes["heatmap"].GetImageData()), heat)
