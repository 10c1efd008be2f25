"""A small synthetic chest CT with known airway landmarks, for the anatomical-zone tests.

Body of soft tissue in air, two ellipsoidal lungs (-850 HU), a trachea (-1000 HU) down the midline to
the carina at slice ``carina_index``, where a short horizontal junction joins two vertical main bronchi
(12 mm either side of the midline) that run in the mediastinum down to ``bronchus_end_index``. So the
carina lies between slices ``carina_index`` and ``carina_index - 1`` (the first slice with two lumens),
and the bronchi end at ``bronchus_end_index``: the answers of the landmark search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from CovidCTLib.labels import LEFT_LUNG, RIGHT_LUNG
from CovidCTLib.volume import CTVolume


@dataclass
class LandmarkPhantom:
    ct: CTVolume
    lungs: np.ndarray
    carina_index: int
    bronchus_end_index: int


def make_landmark_phantom(
    shape: tuple[int, int, int] = (60, 64, 64),
    spacing: tuple[float, float, float] = (2.5, 2.0, 2.0),
    carina_index: int = 38,
    bronchus_end_index: int = 22,
    direction: np.ndarray | None = None,
    seed: int = 0,
) -> LandmarkPhantom:
    """The phantom; ``direction``: a 3x3 direction matrix (default identity: z superior, x patient left)."""
    nz, ny, nx = shape
    sz, sy, sx = spacing
    z = np.arange(nz)[:, None, None].astype(float)
    y = ((np.arange(ny) - (ny - 1) / 2.0) * sy)[None, :, None]
    x = ((np.arange(nx) - (nx - 1) / 2.0) * sx)[None, None, :]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = np.broadcast_to((x / 60.0) ** 2 + (y / 55.0) ** 2 <= 1.0, shape)
    hu[body] = 40.0
    lungs = np.zeros(shape, dtype=np.uint8)
    in_z = (z >= 5) & (z <= 50)
    for side, cx in ((RIGHT_LUNG, -38.0), (LEFT_LUNG, 38.0)):  # LPS: patient right at -x
        lung = np.broadcast_to(((x - cx) / 15.0) ** 2 + (y / 32.0) ** 2 <= 1.0, shape) & in_z
        lungs[lung] = side
    hu[lungs > 0] = -850.0
    trachea = np.broadcast_to(x**2 + (y + 10.0) ** 2 <= 7.0**2, shape) & (z >= carina_index)
    junction = np.broadcast_to((np.abs(x) <= 12.0) & (np.abs(y + 10.0) <= 4.5), shape) & (z == carina_index)
    bronchi = np.zeros(shape, dtype=bool)
    for cx in (-12.0, 12.0):
        bronchi |= np.broadcast_to((x - cx) ** 2 + (y + 10.0) ** 2 <= 4.5**2, shape) & (
            (z >= bronchus_end_index) & (z <= carina_index)
        )
    hu[trachea | junction | bronchi] = -1000.0
    hu += np.random.default_rng(seed).normal(0.0, 10.0, shape).astype(np.float32)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((sx, sy, sz))
    if direction is not None:
        image.SetDirection(tuple(float(v) for v in np.asarray(direction, dtype=float).ravel()))
    image.SetOrigin((-(nx - 1) / 2.0 * sx, -(ny - 1) / 2.0 * sy, -40.0))
    return LandmarkPhantom(
        CTVolume(image=image, source="landmark phantom", intensity="HU"), lungs, carina_index, bronchus_end_index
    )
