"""Turn an analysis result into MRML nodes: segmentation, statistics and lesion tables, display.

All or nothing: when any step fails, every node created so far is removed again and the scene is left as
it was (the input volume's display is only changed once everything else succeeded).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer

from CovidCTLib.mrml.display import set_lung_window, show_in_views
from CovidCTLib.mrml.geometry import image_from_volume_node
from CovidCTLib.mrml.heatmap import add_heatmap_node, find_heat_color_node, heat_color_node, set_heatmap_visible
from CovidCTLib.mrml.hierarchy import file_beside
from CovidCTLib.mrml.masses import add_mass_markups
from CovidCTLib.mrml.segmentation import add_lobes_node, add_segmentation_node, show_closed_surfaces
from CovidCTLib.mrml.tables import add_lesions_table, add_statistics_table
from CovidCTLib.volume import same_geometry


def check_result_geometry(volume_node: slicer.vtkMRMLVolumeNode, image: sitk.Image, tol: float = 1e-3) -> None:
    """Refuse a result computed on another grid than the volume's (tolerance in mm / direction units)."""
    reference = image_from_volume_node(volume_node)
    if not same_geometry(reference, image, tol=tol):
        raise ValueError(
            "the analysis result does not have the geometry of the selected volume "
            f"(size {image.GetSize()} vs {reference.GetSize()}, origin {image.GetOrigin()} vs "
            f"{reference.GetOrigin()}); run the analysis again on this volume"
        )


def results_to_mrml(
    scene: slicer.vtkMRMLScene,
    volume_node: slicer.vtkMRMLScalarVolumeNode,
    lungs: np.ndarray,
    infection: np.ndarray,
    report: dict[str, Any],
    name: str | None = None,
    surfaces: bool = True,
    smoothing: float = 0.5,
    show: bool = True,
    lobes: np.ndarray | None = None,
    heatmap: np.ndarray | None = None,
) -> dict[str, Any]:
    """Create the CovidCT nodes for one analysed volume; returns ``{"segmentation", "statistics", "lesions"}``
    (and ``"lobes"``, a second segmentation node, when ``lobes`` is given; ``"heatmap"``, a scalar volume
    shown as the slice views' foreground, when ``heatmap`` is given; ``"masses"``, a locked point list of the
    mass-like lesions the HU gate did not count, when the report lists any).

    Args:
        lungs / infection: ``(z, y, x)`` uint8 labelmaps on the volume's grid (labels from ``labels.py``).
        report: the report.json dictionary.
        name: base name of the created nodes (default: the volume's name).
        lobes: ``(z, y, x)`` uint8 lobe labelmap (1 RUL .. 5 LLL) on the volume's grid, or None.
        heatmap: ``(z, y, x)`` float 0..1 Grad-CAM heat of the classifier on the volume's grid, or None.
        surfaces: create and show closed surfaces in 3-D; smoothing: their smoothing factor (0..1).
        show: set the lung window and, inside the Slicer application, show the volume and centre views.
    """
    base = name or f"{volume_node.GetName()} CovidCT"
    created: list[slicer.vtkMRMLNode] = []
    helpers: list[slicer.vtkMRMLNode] = []  # shared nodes made for this result (the heat colour table)
    try:
        segmentation = add_segmentation_node(scene, volume_node, lungs, infection, base)
        created.append(segmentation)
        transform_id = volume_node.GetTransformNodeID()
        if transform_id:
            segmentation.SetAndObserveTransformNodeID(transform_id)
        statistics = add_statistics_table(scene, report, f"{base} statistics")
        created.append(statistics)
        lesions = add_lesions_table(scene, report, f"{base} lesions")
        created.append(lesions)
        masses = add_mass_markups(scene, report, f"{base} mass-like lesions (not counted)")
        if masses is not None:
            created.append(masses)
            if transform_id:
                masses.SetAndObserveTransformNodeID(transform_id)
        lobes_node = None
        if lobes is not None:
            lobes_node = add_lobes_node(scene, volume_node, lobes, f"{base} lobes")
            created.append(lobes_node)
            if transform_id:
                lobes_node.SetAndObserveTransformNodeID(transform_id)
        heat_node = None
        if heatmap is not None:  # issue 16.2
            if find_heat_color_node(scene) is None:
                helpers.append(heat_color_node(scene))  # removed again on failure
            heat_node = add_heatmap_node(scene, volume_node, heatmap, f"{base} heatmap")
            created.append(heat_node)
            if transform_id:
                heat_node.SetAndObserveTransformNodeID(transform_id)
        for node in created:
            node.SetAttribute("CovidCT.InputVolume", volume_node.GetID())
        if surfaces:
            show_closed_surfaces(segmentation, smoothing)
        file_beside(scene, volume_node, created)
    except BaseException:
        remove_nodes(scene, created + helpers)
        raise
    if show:
        set_lung_window(volume_node)
        show_in_views(volume_node, segmentation)
        set_heatmap_visible(scene, heat_node, heat_node is not None)
    nodes = {"segmentation": segmentation, "statistics": statistics, "lesions": lesions}
    if lobes_node is not None:
        nodes["lobes"] = lobes_node
    if heat_node is not None:
        nodes["heatmap"] = heat_node
    if masses is not None:
        nodes["masses"] = masses
    return nodes


def result_to_mrml(
    scene: slicer.vtkMRMLScene, volume_node: slicer.vtkMRMLScalarVolumeNode, result: Any, **kwargs: Any
) -> dict[str, Any]:
    """:func:`results_to_mrml` for an :class:`~CovidCTLib.results.AnalysisResult` (geometry checked)."""
    check_result_geometry(volume_node, result.ct.image)
    kwargs.setdefault("lobes", getattr(result, "lobes", None))
    kwargs.setdefault("heatmap", getattr(result, "heatmap", None))
    return results_to_mrml(scene, volume_node, result.lungs, result.infection, result.report, **kwargs)


def remove_nodes(scene: slicer.vtkMRMLScene, nodes: list[slicer.vtkMRMLNode]) -> None:
    """Remove nodes (and their display/storage nodes) from the scene, ignoring ones already gone."""
    for node in reversed(nodes):
        if node is None or node.GetScene() is not scene:
            continue
        helpers = []
        for getter, count in (
            ("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
            ("GetNthStorageNode", "GetNumberOfStorageNodes"),
        ):
            if hasattr(node, count):
                helpers.extend(getattr(node, getter)(i) for i in range(getattr(node, count)()))
        scene.RemoveNode(node)
        for helper in helpers:
            if helper is not None and helper.GetScene() is scene:
                scene.RemoveNode(helper)
