"""Hessian-based fissure enhancement: thin, bright, sheet-like structures inside the lung.

On a Gaussian-smoothed HU volume (scale ``sigma_mm``) the Hessian's eigenvalues ``l0 <= l1 <= l2`` are
computed in the lung interior. A bright sheet has one strongly negative eigenvalue and two small ones;
a vessel (tube) has two, a nodule three, and an edge (the rim of a lesion) has a large gradient. The
sheet response (in HU, scale-normalised by ``sigma**2``) is::

    S = -l0 * exp(-(l1 / l0)**2 / (2 * 0.5**2)) * exp(-(|grad| / (-l0 * sigma))**2 / (2 * edge_tolerance**2))

(``edge_tolerance`` 1.0 keeps a fissure lying on a step, e.g. between aerated lung and ground glass)
for ``l0 < 0`` and a smoothed HU in ``hu_window`` (aerated lung: no response inside consolidation), else 0.
Responses within one voxel of a bright voxel (``> vessel_hu``: vessels, whose walls look like sheets) are
removed, and so are connected pieces smaller than ``min_sheet_voxels`` (fissures are large surfaces). The
sheet normal is the eigenvector of ``l0``; the response is split by orientation into candidates for
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


def _smallest_eigen(h: dict[tuple[int, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smallest and middle eigenvalue and the smallest one's unit eigenvector of many symmetric 3x3 matrices.

    Closed form (trigonometric solution of the characteristic cubic); ``h[i, j]`` (i <= j) hold the entries.
    """
    a00, a11, a22 = (h[i, i].astype(np.float64) for i in range(3))
    a01, a02, a12 = (h[k].astype(np.float64) for k in ((0, 1), (0, 2), (1, 2)))
    q = (a00 + a11 + a22) / 3.0
    p1 = a01**2 + a02**2 + a12**2
    p2 = (a00 - q) ** 2 + (a11 - q) ** 2 + (a22 - q) ** 2 + 2.0 * p1
    p = np.sqrt(np.maximum(p2, 0.0) / 6.0)
    ps = np.where(p > 1e-12, p, 1.0)
    b00, b11, b22 = (a00 - q) / ps, (a11 - q) / ps, (a22 - q) / ps
    b01, b02, b12 = a01 / ps, a02 / ps, a12 / ps
    det = b00 * (b11 * b22 - b12 * b12) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)
    phi = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    e_max = q + 2.0 * p * np.cos(phi)
    e_min = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    e_mid = 3.0 * q - e_max - e_min
    # eigenvector of e_min: cross product of two rows of (A - e_min I), the best-conditioned pair
    r0 = np.stack([a00 - e_min, a01, a02], axis=-1)
    r1 = np.stack([a01, a11 - e_min, a12], axis=-1)
    r2 = np.stack([a02, a12, a22 - e_min], axis=-1)
    cands = [np.cross(r0, r1), np.cross(r0, r2), np.cross(r1, r2)]
    norms = np.stack([np.einsum("ij,ij->i", c, c) for c in cands], axis=-1)
    best = norms.argmax(axis=-1)
    vec = np.choose(best[:, None], cands)
    vec /= np.sqrt(np.maximum(norms.max(axis=-1), 1e-30))[:, None]
    return e_min.astype(np.float32), e_mid.astype(np.float32), vec.astype(np.float32)


def sheet_response(
    hu: np.ndarray,
    interior: np.ndarray,
    spacing: tuple[float, float, float],
    sigma_mm: float = 1.5,
    hu_window: tuple[float, float] = (-960.0, -350.0),
    min_response: float = 4.0,
    vessel_hu: float = -450.0,
    min_sheet_voxels: int = 30,
    edge_tolerance: float = 1.0,
) -> FissureResponse:
    """Sheet responses of ``hu`` (canonical ``(s, p, l)``) at the ``interior`` voxels."""
    sp = np.asarray(spacing, dtype=float)
    sm = ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), sigma=sigma_mm / sp, mode="nearest")
    idx = np.flatnonzero(interior & (sm >= hu_window[0]) & (sm <= hu_window[1]))
    if idx.size == 0:
        return FissureResponse(np.zeros(hu.shape, dtype=np.float32), np.zeros(hu.shape, dtype=np.float32))
    # one full-size gradient at a time, only its values at the candidate voxels kept (peak memory: issue 15)
    h: dict[tuple[int, int], np.ndarray] = {}
    g_at: list[np.ndarray] = []
    for i in range(3):
        g = np.gradient(sm, sp[i], axis=i)
        g_at.append(g.ravel()[idx])
        for j in range(i, 3):
            d = _second(sm, i, sp[i]) if i == j else np.gradient(g, sp[j], axis=j)
            h[i, j] = d.ravel()[idx] * np.float32(sigma_mm**2)
            del d
        del g
    del sm
    oblique = np.zeros(hu.shape, dtype=np.float32)
    horizontal = np.zeros(hu.shape, dtype=np.float32)
    # Gershgorin: the smallest eigenvalue is at least min_i(a_ii - sum_j |a_ij|); skip voxels that cannot respond
    r0 = np.abs(h[0, 1]) + np.abs(h[0, 2])
    r1 = np.abs(h[0, 1]) + np.abs(h[1, 2])
    r2 = np.abs(h[0, 2]) + np.abs(h[1, 2])
    bound = np.minimum(np.minimum(h[0, 0] - r0, h[1, 1] - r1), h[2, 2] - r2)
    keep = bound <= -min_response
    idx = idx[keep]
    h = {k: v[keep] for k, v in h.items()}
    gs, gp, gl = (g[keep] for g in g_at)
    del g_at, r0, r1, r2, bound, keep
    for start in range(0, idx.size, EIGEN_CHUNK):  # the eigen-analysis in chunks: its float64 temporaries stay small
        part = slice(start, start + EIGEN_CHUNK)
        s, obl, horiz = _sheet_values(
            {k: v[part] for k, v in h.items()}, (gs[part], gp[part], gl[part]), sigma_mm, min_response, edge_tolerance
        )
        oblique.ravel()[idx[part]] = np.where(obl, s, 0.0)
        horizontal.ravel()[idx[part]] = np.where(horiz, s, 0.0)
    # vessels: the fissures are vessel-free; responses on and next to bright tubes are vessel walls
    vessel = ndimage.maximum_filter(np.asarray(hu), size=3) > vessel_hu
    for r in (oblique, horizontal):
        r[vessel] = 0.0
        _keep_large_sheets(r, min_sheet_voxels)
    return FissureResponse(oblique, horizontal)


#: candidate voxels per chunk of the eigen-analysis (bounds its float64 temporaries to a few tens of MB)
EIGEN_CHUNK = 1 << 17


def _sheet_values(
    h: dict[tuple[int, int], np.ndarray],
    grads: tuple[np.ndarray, np.ndarray, np.ndarray],
    sigma_mm: float,
    min_response: float,
    edge_tolerance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sheet response (float32) and oblique / horizontal orientation masks of candidate voxels."""
    l0, l1, vec = _smallest_eigen(h)
    neg = l0 < -1e-3
    l0s = np.where(neg, l0, -1e-3)
    gs, gp, gl = grads
    grad = np.sqrt(gs**2 + gp**2 + gl**2) * sigma_mm**2
    ratio = l1 / l0s
    edge = grad / (-l0s * sigma_mm)
    s = -l0s * np.exp(-(ratio**2) / 0.5) * np.exp(-(edge**2) / (2.0 * edge_tolerance**2))
    s = np.where(neg & (s >= min_response), s, 0.0).astype(np.float32)
    normal = np.abs(vec)  # components (s, p, l)
    horiz = normal[:, 0] > 0.85
    obl = (normal[:, 2] < 0.7) & (normal[:, 0] < 0.95) & (normal[:, 1] > 0.3)
    return s, obl, horiz


def _keep_large_sheets(response: np.ndarray, min_voxels: int) -> None:
    """Zero the response outside connected sheet pieces of at least ``min_voxels`` voxels (in place)."""
    lab, n = ndimage.label(response > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return
    sizes = np.bincount(lab.ravel())
    small = sizes < min_voxels
    small[0] = False
    response[small[lab]] = 0.0
