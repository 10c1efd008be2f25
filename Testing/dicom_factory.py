"""Build small synthetic DICOM CT series with pydicom for the io tests (no real data involved)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid


def rotation(ax_deg: float = 0.0, ay_deg: float = 0.0, az_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix (columns are the rotated x, y, z axes) from angles about x, y and z in degrees."""
    ax, ay, az = np.radians([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def hu_phantom(shape: tuple[int, int, int] = (12, 32, 40), seed: int = 0) -> np.ndarray:
    """A small (z, y, x) int16 HU volume: air outside, soft-tissue ellipse, two low-density 'lungs'."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    cy, cx = (shape[1] - 1) / 2, (shape[2] - 1) / 2
    body = ((y - cy) / (0.45 * shape[1])) ** 2 + ((x - cx) / (0.45 * shape[2])) ** 2 <= 1
    vol = np.full(shape, -1000, dtype=np.int16)
    vol[body] = 40
    for side in (-1, 1):
        lung = ((y - cy) / (0.3 * shape[1])) ** 2 + ((x - cx - side * 0.2 * shape[2]) / (0.15 * shape[2])) ** 2 <= 1
        vol[lung] = -850
    vol += rng.integers(-5, 6, size=shape).astype(np.int16)
    vol[:, 0, 0] = -1024
    vol[:, -1, -1] = 1500 + z[:, 0, 0].astype(np.int16)
    return vol


def write_series(
    folder: Path,
    hu: np.ndarray,
    spacing: Sequence[float] = (0.7, 0.9, 2.5),
    origin: Sequence[float] = (-12.5, 30.25, 7.75),
    direction: np.ndarray | None = None,
    *,
    positions: np.ndarray | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_number: int = 2,
    prefix: str = "slice",
    shuffle: bool = True,
    acquisition_date: str = "20200321",
) -> list[Path]:
    """Write ``hu`` (z, y, x) as one DICOM series (one file per slice) in ``folder``; return the paths.

    ``spacing`` is (x, y, z) in mm; ``direction`` a 3x3 matrix whose columns are the row (x), column (y) and
    slice-normal (z) directions in LPS; ``positions`` overrides the ImagePositionPatient of every slice
    (for gaps or tilt). Files are written in shuffled order so the loader must sort them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    sx, sy, sz = spacing
    if positions is None:
        positions = np.array([np.asarray(origin) + k * sz * direction[:, 2] for k in range(hu.shape[0])])
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    stored = np.round((hu.astype(np.float64) - intercept) / slope).astype(np.int16)
    order = np.random.default_rng(1).permutation(hu.shape[0]) if shuffle else np.arange(hu.shape[0])
    paths = []
    for k in order:
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage if modality == "MR" else CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop_uid
        ds.Modality = modality
        ds.ImageType = list(image_type)
        ds.PatientName = "Phantom^Synthetic"
        ds.PatientID = "SYNTH-001"
        ds.PatientBirthDate = "19700101"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = series_number
        ds.InstanceNumber = int(k) + 1
        ds.StudyDate = "20200320"
        ds.AcquisitionDate = acquisition_date
        ds.SeriesDescription = f"synthetic {modality}"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{sy:g}", f"{sx:g}"]
        ds.SliceThickness = f"{sz:g}"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / f"{prefix}{int(k):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return sorted(paths)


def banded_lobes(lungs: np.ndarray) -> np.ndarray:
    """Five lobes cut from a two-lung labelmap along z (right: three bands, left: two), for the SEG tests."""
    from CovidCTLib.labels import LLL, LUL, RLL, RML, RUL

    lobes = np.zeros_like(lungs)
    z = np.arange(lungs.shape[0])[:, None, None]
    lobes[(lungs == 1) & (z >= 7)] = RUL
    lobes[(lungs == 1) & (z >= 5) & (z < 7)] = RML
    lobes[(lungs == 1) & (z < 5)] = RLL
    lobes[(lungs == 2) & (z >= 6)] = LUL
    lobes[(lungs == 2) & (z < 6)] = LLL
    return lobes
