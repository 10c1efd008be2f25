"""The classifier's Grad-CAM heatmap in the scene: a scalar volume on the CT's grid, a colour table, and the
slice views' foreground layer (shown / hidden by the panel's "Show COVID heatmap" toggle)."""

from __future__ import annotations

import numpy as np
import slicer

from CovidCTLib.mrml.geometry import image_data_from_array, set_volume_geometry, volume_ijk_to_ras

#: opacity of the heatmap over the CT in the slice views
HEATMAP_OPACITY = 0.5
#: heat below this is not drawn (transparent): the CT shows through outside the hot areas
HEATMAP_FLOOR = 0.1
COLOR_NODE_NAME = "CovidCT heat"


def find_heat_color_node(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorTableNode | None:
    """The scene's heatmap colour table, or None before the first heatmap."""
    for node in scene.GetNodesByClass("vtkMRMLColorTableNode") or []:
        if node.GetAttribute("CovidCT.ColorTable") == "heat":
            return node
    return None


def heat_color_node(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorTableNode:
    """The shared colour table (dark red to yellow to white, 256 entries), created once per scene."""
    existing = find_heat_color_node(scene)
    if existing is not None:
        return existing
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_NODE_NAME)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    table.SetNamesInitialised(True)
    for i in range(256):
        t = i / 255.0
        table.SetColor(
            i, f"heat {i}", min(1.0, 3 * t), min(1.0, max(0.0, 3 * t - 1)), min(1.0, max(0.0, 3 * t - 2)), 1.0
        )
    table.SetAttribute("CovidCT.ColorTable", "heat")
    return table


def add_heatmap_node(
    scene: slicer.vtkMRMLScene, volume_node: slicer.vtkMRMLScalarVolumeNode, heat: np.ndarray, name: str
) -> slicer.vtkMRMLScalarVolumeNode:
    """A float scalar volume holding ``heat`` (``(z, y, x)`` 0..1 on the volume's grid), with the colour table,
    window 0..1 and a threshold that leaves heat below :data:`HEATMAP_FLOOR` transparent."""
    heat = np.asarray(heat, dtype=np.float32)
    image = volume_node.GetImageData()
    if image is None or tuple(reversed(heat.shape)) != tuple(image.GetDimensions()):
        raise ValueError(
            f"the heatmap shape {heat.shape} (z,y,x) does not match the volume's grid; run the "
            "analysis again on this volume"
        )
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image_data_from_array(heat))
    set_volume_geometry(node, volume_ijk_to_ras(volume_node))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(heat_color_node(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(HEATMAP_FLOOR)
    display.SetUpperThreshold(1.0)
    node.SetAttribute("CovidCT.Heatmap", "grad-cam")
    return node


def set_heatmap_visible(
    scene: slicer.vtkMRMLScene,
    heat_node: slicer.vtkMRMLScalarVolumeNode | None,
    visible: bool,
    opacity: float = HEATMAP_OPACITY,
) -> int:
    """Show ``heat_node`` as the foreground of every slice view (``visible``) or take it off again.

    Hiding only clears views whose foreground is this heatmap. Returns the number of views changed.
    """
    changed = 0
    for composite in scene.GetNodesByClass("vtkMRMLSliceCompositeNode") or []:
        if visible and heat_node is not None:
            composite.SetForegroundVolumeID(heat_node.GetID())
            composite.SetForegroundOpacity(opacity)
            changed += 1
        elif heat_node is not None and composite.GetForegroundVolumeID() == heat_node.GetID():
            composite.SetForegroundVolumeID(None)
            changed += 1
    return changed


def heatmap_visible(scene: slicer.vtkMRMLScene, heat_node: slicer.vtkMRMLScalarVolumeNode | None) -> bool:
    """True when some slice view shows ``heat_node`` as its foreground."""
    if heat_node is None:
        return False
    return any(
        c.GetForegroundVolumeID() == heat_node.GetID() and c.GetForegroundOpacity() > 0
        for c in scene.GetNodesByClass("vtkMRMLSliceCompositeNode") or []
    )
