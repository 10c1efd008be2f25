"""Hessian-based fissure enhancement: thin, bright, sheet-like structures inside the lung.

On a Gaussian-smoothed HU volume (scale ``sigma_mm``) the Hessian's eigenvalues ``l0 <= l1 <= l2`` are
computed in the lung interior. A bright sheet has one strongly negative eigenvalue and two small ones;
a vessel (tube) has two, a nodule three, and an edge (the rim of a lesion) has a large gradient. The
sheet response (in HU, scale-normalised by ``sigma**2``) is::

    S = -l0 * exp(-(l1 / l0)**2 / (2 * 0.5**2)) * exp(-(|grad| / (-l0 * sigma))**2 / (2 * 0.5**2))

for ``l0 < 0`` and a smoothed HU in ``hu_window`` (aerated lung: no response inside consolidation), else 0.
The sheet normal is the eigenvector of ``l0``; the response is split by orientation into candidates for
the oblique fissures (tilted normal) and the right horizontal fissure (normal close to cranio-caudal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class FissureResponse:
    """Sheet responses on the canonical coarse grid (float32, HU)."""

    oblique: np.ndarray
    horizontal: np.ndarray


def _second(a: np.ndarray, axis: int, h: float) -> np.ndarray:
    """Second derivative along ``axis`` by the 3-point stencil (edges: zero)."""
    out = np.zeros_like(a)
    n = a.shape[axis]
    if n < 3:
        return out
    mid = [slice(None)] * 3
    lo, hi, c = list(mid), list(mid), list(mid)
    lo[axis], c[axis], hi[axis] = slice(0, n - 2), slice(1, n - 1), slice(2, n)
    out[tuple(c)] = (a[tuple(lo)] - 2.0 * a[tuple(c)] + a[tuple(hi)]) / (h * h)
    return out


def sheet_response(hu: np.ndarray, interior: np.ndarray, spacing: tuple[float, float, float],
                   sigma_mm: float = 1.5, hu_window: tuple[float, float] = (-960.0, -350.0),
                   min_response: float = 4.0) -> FissureResponse:
    """Sheet responses of ``hu`` (canonical ``(s, p, l)``) at the ``interior`` voxels."""
    sp = np.asarray(spacing, dtype=float)
    sm = ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), sigma=sigma_mm / sp, mode="nearest")
    gs, gp, gl = (np.gradient(sm, sp[a], axis=a) for a in range(3))
    cand = interior & (sm >= hu_window[0]) & (sm <= hu_window[1])
    idx = np.flatnonzero(cand)
    oblique = np.zeros(hu.shape, dtype=np.float32)
    horizontal = np.zeros(hu.shape, dtype=np.float32)
    if idx.size == 0:
        return FissureResponse(oblique, horizontal)
    h = np.empty((idx.size, 3, 3), dtype=np.float32)
    grads = (gs, gp, gl)
    for i in range(3):
        for j in range(i, 3):
            d = (_second(sm, i, sp[i]) if i == j else np.gradient(grads[i], sp[j], axis=j)).ravel()[idx]
            h[:, i, j] = d
            h[:, j, i] = d
    h *= sigma_mm ** 2
    vals, vecs = np.linalg.eigh(h)
    l0, l1 = vals[:, 0], vals[:, 1]
    neg = l0 < -1e-3
    l0s = np.where(neg, l0, -1e-3)
    grad = np.sqrt(gs.ravel()[idx] ** 2 + gp.ravel()[idx] ** 2 + gl.ravel()[idx] ** 2) * sigma_mm ** 2
    ratio = l1 / l0s
    edge = grad / (-l0s * sigma_mm)
    s = -l0s * np.exp(-(ratio ** 2) / 0.5) * np.exp(-(edge ** 2) / 0.5)
    s = np.where(neg & (s >= min_response), s, 0.0).astype(np.float32)
    normal = np.abs(vecs[:, :, 0])  # components (s, p, l)
    horiz = normal[:, 0] > 0.85
    obl = (normal[:, 2] < 0.7) & (normal[:, 0] < 0.95) & (normal[:, 1] > 0.3)
    oblique.ravel()[idx] = np.where(obl, s, 0.0)
    horizontal.ravel()[idx] = np.where(horiz, s, 0.0)
    return FissureResponse(oblique, horizontal)
