"""Fissure surfaces as height maps over the axial plane: anatomical prior, then fitted to detected fissures.

Each fissure is modelled as a height ``z = H(p, l)`` (canonical coarse index units, superior up) over the
posterior/left plane: the oblique fissure runs from high posteriorly to low anteriorly, the right horizontal
fissure is roughly level. The prior is a plane tilted in the sagittal direction whose offset is chosen so
that the lobes below/between take published shares of the lung's volume (see :data:`PRIOR_SHARES`).

Refinement (``refine_surface``), for a few shrinking bands around the current surface: in every column the
strongest sheet response within the band (weighted by closeness to the surface) is a fissure point if it is
strong enough; a low-order surface (quadratic in p, l; a plane when little is seen) is fitted to those
points by robust weighted least squares, pulled towards the prior by pseudo-observations (so few points keep
the prior); the surface is that fit plus the normalised convolution of the points' residuals to it (local
detail where seen). Where the fissure is not seen (incomplete fissures, thick slices, consolidated lung,
blur) the fit, or the prior, holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# prior shares of each lung's volume (from published CT lobar volumes, normal adults, as % of total lung:
# RUL ~20, RML ~9, RLL ~25, LUL ~24, LLL ~22)
PRIOR_SHARES = {"right_lower": 0.46, "right_middle": 0.17, "left_lower": 0.47}
# oblique fissure tilt: normalised height change from the most anterior to the most posterior lung point
OBLIQUE_TILT = 0.7


@dataclass
class Surface:
    """A fissure height map and how much of it rests on detected fissure (``coverage`` 0..1)."""

    height: np.ndarray  # (p, l) float, canonical coarse z index
    coverage: float
    points: int


@dataclass
class LungBox:
    """Extent of one lung on the coarse canonical grid (index units)."""

    z_lo: float
    z_hi: float
    p_lo: float
    p_hi: float

    @classmethod
    def of(cls, lung: np.ndarray) -> LungBox:
        z, p, _ = np.nonzero(lung)
        zl, zh = np.percentile(z, (0.5, 99.5))
        pl, ph = np.percentile(p, (1.0, 99.0))
        return cls(float(zl), float(max(zh, zl + 1)), float(pl), float(max(ph, pl + 1)))

    def t_posterior(self, shape_pl: tuple[int, int]) -> np.ndarray:
        """Normalised posterior coordinate (0 front .. 1 back) over the (p, l) plane."""
        p = np.arange(shape_pl[0], dtype=float)[:, None]
        return np.broadcast_to((p - self.p_lo) / (self.p_hi - self.p_lo), shape_pl)


def prior_oblique(lung: np.ndarray, box: LungBox, lower_share: float) -> np.ndarray:
    """Tilted-plane prior of the oblique fissure with ``lower_share`` of the lung below it."""
    z, p, _ = np.nonzero(lung)
    h = (z - box.z_lo) / (box.z_hi - box.z_lo)
    t = (p - box.p_lo) / (box.p_hi - box.p_lo)
    a = float(np.quantile(h - OBLIQUE_TILT * t, lower_share))
    tp = box.t_posterior(lung.shape[1:])
    return box.z_lo + (a + OBLIQUE_TILT * tp) * (box.z_hi - box.z_lo)


def prior_horizontal(lung: np.ndarray, oblique: np.ndarray, middle_share: float) -> np.ndarray:
    """Level prior of the right horizontal fissure: ``middle_share`` of the lung between it and the oblique."""
    z, p, l_ = np.nonzero(lung)
    upper = z >= oblique[p, l_]
    zu = z[upper]
    if zu.size == 0:
        return np.full(lung.shape[1:], float(z.max()) + 1.0)
    share = min(0.95, middle_share * z.size / zu.size)
    return np.full(lung.shape[1:], float(np.quantile(zu, share)))


def _quadratic_design(p: np.ndarray, l_: np.ndarray, scale: float, terms: int = 6) -> np.ndarray:
    """Design matrix of a quadratic (6 terms) or a plane (the first 3 terms) in (p, l)."""
    p, l_ = p / scale, l_ / scale
    return np.stack([np.ones_like(p), p, l_, p * p, l_ * l_, p * l_][:terms], axis=-1)


def _robust_fit(
    pp: np.ndarray,
    ll: np.ndarray,
    zz: np.ndarray,
    ww: np.ndarray,
    prior: np.ndarray,
    prior_weight: float,
    huber: float,
    terms: int = 6,
) -> np.ndarray:
    """Quadratic (or plane) surface through weighted points, regularised by pseudo-points on the prior."""
    shape = prior.shape
    gp, gl = np.mgrid[0 : shape[0] : 4, 0 : shape[1] : 4]
    gp, gl = gp.ravel().astype(float), gl.ravel().astype(float)
    scale = float(max(shape))
    a_pts = _quadratic_design(pp, ll, scale, terms)
    a_pri = _quadratic_design(gp, gl, scale, terms)
    z_pri = prior[gp.astype(int), gl.astype(int)]
    w_pri = np.full(gp.size, prior_weight / max(gp.size, 1))
    w = ww / max(ww.sum(), 1e-9)
    coef = np.zeros(terms)
    for _ in range(3):
        a = np.concatenate([a_pts, a_pri])
        b = np.concatenate([zz, z_pri])
        wt = np.sqrt(np.concatenate([w, w_pri]))
        coef, *_ = np.linalg.lstsq(a * wt[:, None], b * wt, rcond=None)
        res = np.abs(a_pts @ coef - zz)
        w = ww * np.minimum(1.0, huber / np.maximum(res, 1e-6))
        w = w / max(w.sum(), 1e-9)
    full_p, full_l = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (_quadratic_design(full_p.astype(float), full_l.astype(float), scale, terms) @ coef).reshape(shape)


def _subvoxel(response: np.ndarray, region: np.ndarray, zi: np.ndarray, reach: int = 2) -> np.ndarray:
    """Response-weighted mean height within ``reach`` voxels of the per-column maximum ``zi`` (sub-voxel)."""
    num = np.zeros(zi.shape, dtype=float)
    den = np.zeros(zi.shape, dtype=float)
    for dz in range(-reach, reach + 1):
        z = np.clip(zi + dz, 0, response.shape[0] - 1)
        r = np.take_along_axis(response, z[None], axis=0)[0] * np.take_along_axis(region, z[None], axis=0)[0]
        r = np.where(zi + dz == z, r, 0.0)
        num += r * z
        den += r
    return np.where(den > 0, num / np.maximum(den, 1e-9), zi.astype(float))


def refine_surface(
    response: np.ndarray,
    region: np.ndarray,
    prior: np.ndarray,
    spacing: tuple[float, ...],
    bands_mm: tuple[float, ...] = (30.0, 18.0, 10.0),
    threshold: float = 12.0,
    smooth_mm: float = 10.0,
    prior_weight: float = 0.05,
    huber_mm: float = 6.0,
    min_coverage: float = 0.15,
    sparse_prior_weight: float = 0.5,
) -> Surface:
    """Fit a fissure height map to the sheet ``response`` inside ``region`` (canonical coarse arrays).

    Below ``min_coverage`` (share of the surface's lung columns with a fissure point) the fit is a plane and
    the prior's weight grows linearly up to ``prior_weight + sparse_prior_weight`` at no coverage.
    """
    sz = float(spacing[0])
    zidx = np.arange(response.shape[0], dtype=np.float32)[:, None, None]
    columns = region.any(axis=0)
    height = prior.astype(float).copy()
    points = 0
    coverage = 0.0
    for band in bands_mm:
        dz = (zidx - height[None].astype(np.float32)) * sz
        inside = region & (np.abs(dz) <= band)
        scored = np.where(inside, response * np.exp(-0.5 * (dz / (0.6 * band)) ** 2), 0.0)
        zi = scored.argmax(axis=0)
        r = np.take_along_axis(response, zi[None], axis=0)[0]
        r = np.where(np.take_along_axis(inside, zi[None], axis=0)[0], r, 0.0)
        w = np.where(r >= threshold, r / threshold, 0.0)
        zf = _subvoxel(response, region, zi)
        pp, ll = np.nonzero(w > 0)
        points = int(pp.size)
        # columns where the surface crosses the lung (the fissure can be seen there)
        crossing = columns & (np.abs(dz) <= 2.0 * sz).any(axis=0) & region.any(axis=0)
        crossing &= np.take_along_axis(
            region, np.clip(np.rint(height), 0, region.shape[0] - 1).astype(int)[None], axis=0
        )[0]
        n_cross = int(np.count_nonzero(crossing))
        coverage = float(np.count_nonzero((w > 0) & crossing)) / max(n_cross, 1)
        if points >= 10:
            # little of the fissure seen: a plane, held closer to the prior (sparse points are often noise)
            sparse = max(0.0, (min_coverage - coverage) / min_coverage)
            fit = _robust_fit(
                pp.astype(float),
                ll.astype(float),
                zf[pp, ll],
                w[pp, ll],
                prior,
                prior_weight + sparse_prior_weight * sparse,
                huber_mm / sz,
                terms=3 if coverage < min_coverage else 6,
            )
        else:
            fit = prior.astype(float)
        sig = [smooth_mm / float(spacing[1]), smooth_mm / float(spacing[2])]
        # local detail: smoothed residuals to the fit (smoothing the heights themselves would flatten a
        # tilted fissure at the edges of the detected part)
        num = ndimage.gaussian_filter(w * (zf - fit), sig, mode="constant")
        den = ndimage.gaussian_filter(w, sig, mode="constant")
        eps = 0.02
        height = fit + num / (den + eps)
        # points far from the fit (outliers) should not drag the surface: clamp the detail to the band
        height = np.clip(height, fit - band / sz, fit + band / sz)
    return Surface(height=height, coverage=coverage, points=points)
