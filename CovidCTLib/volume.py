"""The in-memory CT volume every part of the engine works on.

Arrays are numpy in SimpleITK order ``(z, y, x)``; the physical geometry (origin, spacing,
direction, LPS as in ITK/DICOM) lives in the SimpleITK image and is copied onto every labelmap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

IntensityKind = Literal["HU", "8bit"]


@dataclass
class CTVolume:
    """A loaded CT scan (3-D volume or one 2-D slice stored as a 1-slice volume).

    Attributes:
        image: the pixel data with geometry; HU volumes are float32 or int16, 8-bit inputs uint8.
        intensity: ``"HU"`` when values are Hounsfield units, ``"8bit"`` for display-range images.
        source: path the scan was read from (file or folder).
        modality: DICOM modality when known (``"CT"``), else None.
        series_uid / study_uid / frame_of_reference_uid: DICOM identifiers when known.
        acquisition_date: ``YYYYMMDD`` when known (longitudinal ordering).
        patient: identifying fields (name, id, birth date); only written out when the user asks.
        dicom_files: the ordered slice files of a DICOM series (for DICOM SEG references).
        notes: human-readable remarks made while loading (skipped series, conversions).
    """

    image: sitk.Image
    intensity: IntensityKind
    source: str
    modality: str | None = None
    series_uid: str | None = None
    study_uid: str | None = None
    frame_of_reference_uid: str | None = None
    acquisition_date: str | None = None
    patient: dict[str, str] = field(default_factory=dict)
    dicom_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def array(self) -> np.ndarray:
        """Voxel values as a numpy array ``(z, y, x)`` (a copy)."""
        return sitk.GetArrayFromImage(self.image)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        size = self.image.GetSize()
        return (size[2], size[1], size[0]) if len(size) == 3 else (1, size[1], size[0])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel spacing in mm in array order ``(z, y, x)``."""
        sx, sy, sz = self.image.GetSpacing()
        return (sz, sy, sx)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        sx, sy, sz = self.image.GetSpacing()
        return sx * sy * sz / 1000.0

    @property
    def is_3d(self) -> bool:
        return self.image.GetDimension() == 3 and self.image.GetSize()[2] > 1

    def identity(self, include_identifiers: bool = False) -> dict[str, Any]:
        """What the reports say about the input: path and UIDs, patient fields only on request."""
        info: dict[str, Any] = {
            "source": self.source,
            "modality": self.modality,
            "intensity": self.intensity,
            "series_uid": self.series_uid,
            "study_uid": self.study_uid,
            "acquisition_date": self.acquisition_date,
            "size_xyz": list(self.image.GetSize()),
            "spacing_mm_xyz": [round(s, 6) for s in self.image.GetSpacing()],
            "origin_mm_xyz": [round(o, 6) for o in self.image.GetOrigin()],
            "direction": [round(d, 8) for d in self.image.GetDirection()],
        }
        if include_identifiers:
            info["patient"] = dict(self.patient)
        return info


def labelmap_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a ``(z, y, x)`` label array as a uint8 image with exactly the reference's geometry."""
    if tuple(reversed(array.shape)) != tuple(reference.GetSize()):
        raise ValueError(
            f"labelmap shape {array.shape} (z,y,x) does not match the CT size {reference.GetSize()} (x,y,z)"
        )
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8))
    image.CopyInformation(reference)
    return image


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-5) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tol``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )
