"""The CovidCT segmentation node: four segments on the input volume's exact grid."""

from __future__ import annotations

import numpy as np
import slicer

from CovidCTLib.labels import LOBE_SEGMENTS, SEGMENTS, SegmentSpec
from CovidCTLib.mrml.geometry import oriented_image_from_array, volume_ijk_to_ras

TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
CLOSED_SURFACE = "Closed surface"
BINARY_LABELMAP = "Binary labelmap"


def terminology_string(spec: SegmentSpec) -> str:
    """Slicer's serialized terminology entry (category, type, modifier) of one segment spec."""
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(TERMINOLOGY_CONTEXT)
    # Slicer >= 5.8 calls the anatomic context the "region" context; older versions only know the old name.
    set_region_context = getattr(entry, "SetRegionContextName", None) or entry.SetAnatomicContextName
    set_region_context(ANATOMIC_CONTEXT)
    for target, term in (
        (entry.GetCategoryObject(), spec.category),
        (entry.GetTypeObject(), spec.type),
        (entry.GetTypeModifierObject(), spec.modifier),
    ):
        if term is not None:
            target.SetCodingSchemeDesignator(term.scheme)
            target.SetCodeValue(term.value)
            target.SetCodeMeaning(term.meaning)
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)


def _check_shape(volume_node: slicer.vtkMRMLVolumeNode, array: np.ndarray, what: str) -> None:
    nx, ny, nz = volume_node.GetImageData().GetDimensions()
    if tuple(array.shape) != (nz, ny, nx):
        raise ValueError(
            f"the {what} labelmap has shape {array.shape} (z,y,x) but the volume is {(nz, ny, nx)}; "
            "the result does not belong to this volume"
        )


def add_segmentation_node(
    scene: slicer.vtkMRMLScene,
    volume_node: slicer.vtkMRMLScalarVolumeNode,
    lungs: np.ndarray,
    infection: np.ndarray,
    name: str,
) -> slicer.vtkMRMLSegmentationNode:
    """Create a segmentation node with the four CovidCT segments on the volume's grid.

    The lungs and the infection are two shared labelmap layers (label values from ``labels.SEGMENTS``),
    with exactly the volume's IJK-to-RAS (oblique directions included). Segment IDs are the spec keys.
    """
    return _layered_node(scene, volume_node, {"lungs": lungs, "infection": infection}, SEGMENTS, name)


def add_lobes_node(
    scene: slicer.vtkMRMLScene, volume_node: slicer.vtkMRMLScalarVolumeNode, lobes: np.ndarray, name: str
) -> slicer.vtkMRMLSegmentationNode:
    """A segmentation node with the five lobes (``labels.LOBE_SEGMENTS``, one labelmap layer) on the volume's
    grid; shown as outlines in 2-D and hidden in 3-D (the lungs and lesions stay readable)."""
    node = _layered_node(scene, volume_node, {"lobes": lobes}, LOBE_SEGMENTS, name)
    display = node.GetDisplayNode()
    display.SetVisibility3D(False)
    display.SetVisibility2DFill(False)
    return node


def _layered_node(
    scene: slicer.vtkMRMLScene,
    volume_node: slicer.vtkMRMLScalarVolumeNode,
    arrays: dict[str, np.ndarray],
    specs: tuple[SegmentSpec, ...],
    name: str,
) -> slicer.vtkMRMLSegmentationNode:
    """A segmentation node whose segments ``specs`` share the labelmap layers ``arrays`` (by spec source)."""
    for source, array in arrays.items():
        _check_shape(volume_node, array, source)
    ijk_to_ras = volume_ijk_to_ras(volume_node)
    layers = {
        source: oriented_image_from_array(np.asarray(array, dtype=np.uint8), ijk_to_ras)
        for source, array in arrays.items()
    }
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation = node.GetSegmentation()
    labelmap_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    was_modifying = node.StartModify()
    try:
        for spec in specs:
            segment = slicer.vtkSegment()
            segment.SetName(spec.name)
            segment.SetColor(*spec.color)
            segment.AddRepresentation(labelmap_name, layers[spec.source])
            segment.SetLabelValue(spec.label)
            segment.SetTerminology(terminology_string(spec))
            segmentation.AddSegment(segment, spec.key)
    finally:
        node.EndModify(was_modifying)
    display = node.GetDisplayNode()
    for spec in specs:
        display.SetSegmentOpacity3D(spec.key, spec.opacity_3d)
    return node


def show_closed_surfaces(node: slicer.vtkMRMLSegmentationNode, smoothing: float = 0.5) -> None:
    """Create the closed-surface representation (smoothing factor 0..1) and show it in 3-D."""
    segmentation = node.GetSegmentation()
    segmentation.SetConversionParameter("Smoothing factor", f"{max(0.0, min(1.0, float(smoothing))):g}")
    if not node.CreateClosedSurfaceRepresentation():
        raise RuntimeError("Slicer could not create the 3-D surfaces of the segmentation")
    display = node.GetDisplayNode()
    display.SetPreferredDisplayRepresentationName3D(CLOSED_SURFACE)
    display.SetVisibility3D(True)


def segment_array(node: slicer.vtkMRMLSegmentationNode, segment_id: str) -> np.ndarray:
    """A segment's binary mask ``(z, y, x)`` on its labelmap grid (label value applied)."""
    from CovidCTLib.mrml.geometry import array_from_image_data

    segment = node.GetSegmentation().GetSegment(segment_id)
    labelmap_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    layer = segment.GetRepresentation(labelmap_name)
    return (array_from_image_data(layer) == segment.GetLabelValue()).astype(np.uint8)
