"""Interlobar fissures and known lobes for the synthetic phantom (``make_phantom(fissures=True)``).

The lobes are cut by smooth height surfaces in the phantom's normalised coordinates (w: superior, v:
posterior, u: patient left, each -1..1 over the field of view):

* oblique fissure (both lungs): ``w = a + 1.1 v + 0.08 du**2`` (high posteriorly, low anteriorly; ``du`` is the
  lateral offset from the lung centre in lung radii), ``a`` = -0.2 right, -0.12 left;
* right horizontal fissure: ``w = 0.05 + 0.05 du``, meaningful only above the oblique fissure (anterior).

Right lung: RLL below the oblique surface, RML between the oblique and the horizontal surface, RUL above
both; left lung: LLL below, LUL above. The fissures are drawn as thin bright sheets (about 1 mm of +300 HU,
spread over the voxel extent along the surface normal so that the sheet's integral is kept at any slice
thickness). The right horizontal fissure is drawn only laterally (``du > -0.3``): incomplete medially.
"""

from __future__ import annotations

import math

import numpy as np

from CovidCTLib.labels import LLL, LUL, RLL, RML, RUL

_LUNG_U, _LUNG_RU = 0.44, 0.34  # as in CovidCTLib.phantom
FISSURE_CONTRAST_HU_MM = 300.0  # sheet contrast (HU) x thickness (mm)
_OBLIQUE_A = {-1.0: -0.2, 1.0: -0.12}
_OBLIQUE_SLOPE = 1.1
_HORIZONTAL_A = 0.05


def _du(u: np.ndarray, side: float) -> np.ndarray:
    return (u - side * _LUNG_U) / _LUNG_RU * side  # > 0 lateral


def oblique_surface(v: np.ndarray, u: np.ndarray, side: float) -> np.ndarray:
    """Normalised height ``w`` of the oblique fissure over (v, u) for side -1 (right) / +1 (left)."""
    return _OBLIQUE_A[side] + _OBLIQUE_SLOPE * v + 0.08 * _du(u, side) ** 2


def horizontal_surface(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Normalised height ``w`` of the right horizontal fissure over (v, u)."""
    return _HORIZONTAL_A + 0.05 * _du(u, -1.0) + 0.0 * v


def _sheet(
    w: np.ndarray, height: np.ndarray, slope_v: float, half: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """HU added by a thin sheet at ``w = height`` (sheet tilted by ``slope_v`` in normalised units)."""
    # surface normal in mm: gradient of (w*hz - slope*v*hv) -> (1, -slope*hz/hv, 0), normalised
    g = np.array([1.0, -slope_v * half[0] / half[1], 0.0])
    g /= np.linalg.norm(g)
    dist_mm = (w - height) * half[0] * g[0]
    extent = math.sqrt(sum((gi * si) ** 2 for gi, si in zip(g, spacing, strict=True)))
    sigma = max(0.5, extent / 2.5)
    amp = FISSURE_CONTRAST_HU_MM / (sigma * math.sqrt(2.0 * math.pi))
    return (amp * np.exp(-0.5 * (dist_mm / sigma) ** 2)).astype(np.float32)


def draw_fissures(
    hu: np.ndarray,
    right: np.ndarray,
    left: np.ndarray,
    wvu: tuple[np.ndarray, np.ndarray, np.ndarray],
    half: np.ndarray,
    spacing: tuple[float, float, float],
) -> np.ndarray:
    """Paint the fissure sheets into ``hu`` (in place, inside the lungs) and return the lobe labels (uint8)."""
    w, v, u = wvu
    lobes = np.zeros(hu.shape, dtype=np.uint8)
    for side, lung in ((-1.0, right), (1.0, left)):
        obl = oblique_surface(v, u, side)
        below = w < obl
        if side < 0:
            hor = horizontal_surface(v, u)
            lobes[lung & below] = RLL
            lobes[lung & ~below & (w < hor)] = RML
            lobes[lung & ~below & (w >= hor)] = RUL
            drawn_h = lung & ~below & (_du(u, side) > -0.3)
            hu += np.where(drawn_h, _sheet(w, hor, 0.0, half, spacing), 0.0).astype(np.float32)
        else:
            lobes[lung & below] = LLL
            lobes[lung & ~below] = LUL
        hu += np.where(lung, _sheet(w, obl, _OBLIQUE_SLOPE, half, spacing), 0.0).astype(np.float32)
    return lobes
