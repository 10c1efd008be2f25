"""Offscreen picture of a segmentation node's 3-D surfaces (documentation, reports, headless checks).

Draws the closed-surface representation held by the MRML segmentation node with each segment's colour
and 3-D opacity, in RAS, seen from the front (anterior) like Slicer's default 3-D view. Needs an OpenGL
context (EGL, OSMesa or X); inside the Slicer application use the 3-D view instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import slicer
import vtk

from CovidCTLib.atomic import write_with


def surface_actors(segmentation_node: slicer.vtkMRMLSegmentationNode) -> list[vtk.vtkActor]:
    """One actor per visible segment with a non-empty closed surface (colour and 3-D opacity applied)."""
    display = segmentation_node.GetDisplayNode()
    segmentation = segmentation_node.GetSegmentation()
    actors = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        if display is not None and not display.GetSegmentVisibility(segment_id):
            continue
        poly = vtk.vtkPolyData()
        if not segmentation_node.GetClosedSurfaceRepresentation(segment_id, poly) or poly.GetNumberOfPoints() == 0:
            continue
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(poly)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*segmentation.GetSegment(segment_id).GetColor())
        opacity = display.GetSegmentOpacity3D(segment_id) * display.GetOpacity3D() if display else 1.0
        actor.GetProperty().SetOpacity(opacity)
        actors.append(actor)
    return actors


def render_segmentation_png(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    path: str | os.PathLike,
    size: tuple[int, int] = (800, 800),
    title: str | None = None,
) -> Path:
    """Render the node's closed surfaces offscreen (anterior view) into a PNG file; returns the path."""
    actors = surface_actors(segmentation_node)
    if not actors:
        raise ValueError("the segmentation has no closed-surface representation to render; create it first")
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.1, 0.1, 0.14)
    renderer.UseDepthPeelingOn()
    for actor in actors:
        renderer.AddActor(actor)
    if title:
        text = vtk.vtkTextActor()
        text.SetInput(title)
        text.GetTextProperty().SetFontSize(16)
        text.GetTextProperty().SetColor(1, 1, 1)
        text.SetDisplayPosition(10, 10)
        renderer.AddActor2D(text)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetAlphaBitPlanes(1)
    window.SetMultiSamples(0)
    window.AddRenderer(renderer)
    window.SetSize(*size)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(0, 0, 0)
    camera.SetPosition(0, 1, 0)  # looking from anterior (+A) towards the patient, like Slicer's default
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Zoom(1.2)
    window.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.ReadFrontBufferOff()
    grabber.Update()

    def write(tmp: Path) -> None:
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(tmp))
        writer.SetInputData(grabber.GetOutput())
        writer.Write()

    result = write_with(path, write, overwrite=True)
    window.Finalize()
    return result
