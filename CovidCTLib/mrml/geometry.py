"""Geometry and voxel conversions between SimpleITK images / numpy arrays and MRML volume nodes.

SimpleITK (like DICOM and ITK) uses LPS physical coordinates; Slicer's world is RAS. The conversion is
``RAS = diag(-1, -1, 1) * LPS``, applied to the whole index-to-physical matrix, so oblique (non-axis
aligned) directions are kept exactly. Arrays are numpy ``(z, y, x)``, which is the x-fastest memory order
of ``vtkImageData`` scalars, so no transposition is needed.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a 3-D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ ijk_to_lps


def vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A numpy 4x4 as a vtkMatrix4x4."""
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(array[row, col]))
    return matrix


def numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a numpy 4x4."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_ijk_to_ras(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """IJK-to-RAS of a volume node, shifted so that index (0,0,0) is the first voxel of its image data."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = numpy_matrix(matrix)
    image = volume_node.GetImageData()
    if image is not None:
        start = np.array(image.GetExtent()[::2], dtype=float)
        ijk_to_ras[:3, 3] += ijk_to_ras[:3, :3] @ start
    return ijk_to_ras


def image_data_from_array(array: np.ndarray) -> vtk.vtkImageData:
    """A ``(z, y, x)`` numpy array as vtkImageData (deep copy, origin 0, spacing 1)."""
    array = np.ascontiguousarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) array, got shape {array.shape}")
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def array_from_image_data(image: vtk.vtkImageData) -> np.ndarray:
    """vtkImageData scalars as a ``(z, y, x)`` numpy array (copy)."""
    nx, ny, nz = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise ValueError("the image has no voxel data")
    return numpy_support.vtk_to_numpy(scalars).reshape(nz, ny, nx).copy()


def image_from_volume_node(volume_node: slicer.vtkMRMLVolumeNode) -> sitk.Image:
    """The voxels and exact geometry of a scalar volume node as a SimpleITK image (LPS).

    Parent transforms are not applied: the analysis runs in the volume's own grid, and the results are
    placed under the same transform by :func:`CovidCTLib.mrml.adapter.results_to_mrml`.
    """
    image_data = volume_node.GetImageData() if volume_node is not None else None
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise ValueError("the selected volume has no voxel data; load a CT volume first")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise ValueError("the selected volume has more than one component (colour/vector); choose a CT volume")
    image = sitk.GetImageFromArray(array_from_image_data(image_data))
    ijk_to_lps = LPS_TO_RAS @ volume_ijk_to_ras(volume_node)
    linear = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (linear / spacing).ravel()])
    image.SetOrigin([float(o) for o in ijk_to_lps[:3, 3]])
    return image


def set_volume_geometry(volume_node: slicer.vtkMRMLVolumeNode, ijk_to_ras: np.ndarray) -> None:
    """Give a volume node the IJK-to-RAS matrix (spacing, origin and directions together)."""
    volume_node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))


def add_volume_from_image(
    scene: slicer.vtkMRMLScene, image: sitk.Image, name: str, labelmap: bool = False
) -> slicer.vtkMRMLVolumeNode:
    """Add a scalar (or labelmap) volume node holding a SimpleITK image, geometry included."""
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetAndObserveImageData(image_data_from_array(sitk.GetArrayViewFromImage(image)))
    set_volume_geometry(node, ijk_to_ras_from_image(image))
    node.CreateDefaultDisplayNodes()
    return node


def oriented_image_from_array(array: np.ndarray, ijk_to_ras: np.ndarray) -> slicer.vtkOrientedImageData:
    """A ``(z, y, x)`` array as vtkOrientedImageData with the given IJK-to-RAS (segment labelmaps)."""
    oriented = slicer.vtkOrientedImageData()
    oriented.ShallowCopy(image_data_from_array(array))
    oriented.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras))
    return oriented
