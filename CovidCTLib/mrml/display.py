"""Display settings: the lung window on the input CT, and view centring when a Slicer application runs."""

from __future__ import annotations

import slicer

LUNG_WINDOW = 1500.0
LUNG_LEVEL = -600.0


def set_lung_window(volume_node: slicer.vtkMRMLScalarVolumeNode) -> None:
    """Show the CT with the lung window (W 1500 / L -600)."""
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(LUNG_WINDOW, LUNG_LEVEL)


def show_in_views(volume_node: slicer.vtkMRMLScalarVolumeNode, segmentation_node=None) -> bool:
    """Show the volume in the slice views and centre the 3-D views; False when there is no application."""
    app = getattr(slicer, "app", None)
    util = getattr(slicer, "util", None)
    if app is None or util is None or not hasattr(app, "layoutManager") or app.layoutManager() is None:
        return False
    util.setSliceViewerLayers(background=volume_node, fit=True)
    layout = app.layoutManager()
    for index in range(layout.threeDViewCount):
        view = layout.threeDWidget(index).threeDView()
        view.resetFocalPoint()
        view.resetCamera()
    return True
