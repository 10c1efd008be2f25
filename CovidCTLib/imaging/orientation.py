"""Which array axis points to the patient's head / left, from the image direction (ITK LPS space).

In LPS physical space +x is the patient's Left, +y Posterior, +z Superior. Arrays are ``(z, y, x)``, so the
image direction column ``c`` (for index axis i, j, k) belongs to array axis ``2 - c``.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _direction(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)


def patient_axis(image: sitk.Image, physical: int) -> tuple[int, int]:
    """Array axis (0, 1 or 2 in ``(z, y, x)`` order) best aligned with a physical LPS axis, and its sign.

    ``physical``: 0 = x (towards patient Left), 1 = y (Posterior), 2 = z (Superior). The sign is +1 when
    increasing the array index moves towards that direction, -1 when it moves away.
    """
    row = _direction(image)[physical]
    column = int(np.argmax(np.abs(row)))
    return 2 - column, (1 if row[column] > 0 else -1)


def superior_axis(image: sitk.Image) -> tuple[int, int]:
    """(array axis, sign): the cranio-caudal axis; sign +1 when larger indices are more superior."""
    return patient_axis(image, 2)


def left_axis(image: sitk.Image) -> tuple[int, int]:
    """(array axis, sign): the right-left axis; sign +1 when larger indices are more to the patient's left."""
    return patient_axis(image, 0)


def physical_points(image: sitk.Image, index_zyx: np.ndarray) -> np.ndarray:
    """Continuous ``(z, y, x)`` indices (N x 3) to LPS millimetres (N x 3, x y z)."""
    idx = np.asarray(index_zyx, dtype=float).reshape(-1, 3)[:, ::-1]  # -> (i, j, k)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    return origin + (idx * spacing) @ _direction(image).T


def oriented_target(image: sitk.Image, target_zyx: tuple[float, float, float]) -> tuple[float, float, float]:
    """A per-array-axis spacing target given as (cranio-caudal, in-plane, in-plane) for axial scans:
    the first value goes to whichever array axis is the patient's cranio-caudal one."""
    axis, _ = superior_axis(image)
    out = [float(target_zyx[1])] * 3
    out[axis] = float(target_zyx[0])
    return tuple(out)  # type: ignore[return-value]
