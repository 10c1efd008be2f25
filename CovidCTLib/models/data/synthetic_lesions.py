"""Insert synthetic COVID-like lesions (ground-glass and consolidation, with known masks) into HU volumes.

Used to widen the training data with real HU chest CT (LIDC-IDRI volumes have no COVID): the lung and
infection networks then see Hounsfield-unit slices with labels, not only the 8-bit training slices.

Lesion model (typical COVID-19 pattern: peripheral, bilateral, patchy, lower-lobe predominant):

* centres drawn inside the lung within ``peripheral_mm`` of the pleura, both lungs, weighted to lower slices;
* shape: an ellipsoid (random axes 10-40 mm) whose boundary is perturbed by smoothed noise (patchy), with
  a soft edge; clipped to the lung mask;
* ground-glass: ``hu' = hu + w * (target - hu) * 0.6`` with target -650..-450 HU, so vessels stay visible
  (hazy increase in attenuation); label where the blended increase is clear;
* consolidation: ``hu' = (1 - w) * hu + w * (target + texture)`` with target -40..+60 HU (vessels
  obscured); often as the core of a ground-glass halo (mixed lesion);
* dependent consolidation (``p_dependent`` per lung): a band of consolidation along the posterior pleura of
  the lower lung, 8-35 mm deep, with a lobulated upper edge, thinning towards the head: the dense basal lung
  that intensity-based and slice models tend to cut out of the lung.

The lung mask is taken BEFORE insertion (so consolidated lung stays lung), from
``CovidCTLib.classical.lungs.segment_lungs_classical`` when available, else a simple built-in threshold
method (:func:`simple_lung_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class LesionParams:
    """Ranges of the random lesions."""

    n_lesions: tuple[int, int] = (4, 12)
    radius_mm: tuple[float, float] = (10.0, 40.0)
    peripheral_mm: float = 25.0
    p_consolidation: float = 0.25
    p_mixed: float = 0.3
    ggo_hu: tuple[float, float] = (-620.0, -400.0)
    cons_hu: tuple[float, float] = (-40.0, 60.0)
    p_dependent: float = 0.4
    dependent_depth_mm: tuple[float, float] = (8.0, 35.0)
    dependent_extent: tuple[float, float] = (0.15, 0.4)  # share of the lung's height, from its base


def simple_lung_mask(hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """A quick 0/1 lung mask: air below -400 HU inside the body, largest components, airways trimmed."""
    body = hu > -500
    body = ndi.binary_opening(body, iterations=2)
    air = (hu < -400) & ~body
    # outside-body air touches the in-plane border of each slice
    lung = np.zeros_like(air)
    for z in range(hu.shape[0]):
        lab, n = ndi.label(air[z])
        if n == 0:
            continue
        border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))) - {0}
        keep = np.isin(lab, [i for i in range(1, n + 1) if i not in border])
        lung[z] = keep
    lab, n = ndi.label(lung)
    if n == 0:
        return lung.astype(np.uint8)
    sizes = ndi.sum(lung, lab, range(1, n + 1))
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    order = np.argsort(sizes)[::-1]
    keep = [i + 1 for i in order[:2] if sizes[i] * voxel_ml > 50.0]
    lung = np.isin(lab, keep)
    # trim trachea / main bronchi: small round air components near the midline in each slice
    px_mm2 = spacing_zyx[1] * spacing_zyx[2]
    for z in range(lung.shape[0]):
        lab2, n2 = ndi.label(lung[z])
        for i in range(1, n2 + 1):
            comp = lab2 == i
            area = comp.sum() * px_mm2
            cx = np.nonzero(comp)[1].mean() * spacing_zyx[2]
            mid = lung.shape[2] * spacing_zyx[2] / 2
            if area < 450.0 and abs(cx - mid) < 30.0:
                lung[z][comp] = False
        lung[z] = ndi.binary_fill_holes(ndi.binary_closing(lung[z], iterations=2))
    return lung.astype(np.uint8)


def lung_mask_for(ct_image: object, hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Lung mask (0/1) from the classical segmenter when installed, else :func:`simple_lung_mask`."""
    from CovidCTLib.errors import CovidCTError

    try:
        from CovidCTLib.classical.lungs import segment_lungs_classical
        from CovidCTLib.volume import CTVolume

        return (segment_lungs_classical(CTVolume(ct_image, "HU", "synthetic")) > 0).astype(np.uint8)
    except (ImportError, CovidCTError):
        return simple_lung_mask(hu, spacing_zyx)


def _blob(rng: np.random.Generator, radii_vox: np.ndarray) -> np.ndarray:
    """Soft (0..1) patchy ellipsoid in a box of about 2.4 radii."""
    half = np.ceil(radii_vox * 1.2).astype(int) + 1
    zz, yy, xx = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    d = np.sqrt((zz / radii_vox[0]) ** 2 + (yy / radii_vox[1]) ** 2 + (xx / radii_vox[2]) ** 2)
    noise = ndi.gaussian_filter(rng.standard_normal(d.shape), sigma=np.maximum(radii_vox / 3, 0.8))
    noise /= noise.std() + 1e-6
    field = 1.0 - d + 0.45 * noise
    return np.clip(field / 0.3, 0, 1)


def dependent_band(
    lung: np.ndarray,
    side: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    rng: np.random.Generator,
    depth_mm: float,
    extent: float,
) -> np.ndarray:
    """Soft (0..1) weight of a posterior basal band of ``lung & side``.

    LPS arrays: y grows to the back, z to the head.
    """
    region = lung & side
    weight = np.zeros(lung.shape, np.float32)
    zs = np.nonzero(region.any(axis=(1, 2)))[0]
    if len(zs) < 2:
        return weight
    z0 = zs[0]
    z_top = z0 + max(1, int(round(extent * (zs[-1] - z0))))
    y_idx = np.arange(lung.shape[1])[None, :, None]
    sub = region[z0 : z_top + 1]
    y_back = np.where(sub, y_idx, -1).max(axis=1)  # (z, x): the most posterior lung voxel of each column
    from_back_mm = (y_back[:, None, :] - y_idx) * spacing_zyx[1]
    noise = ndi.gaussian_filter(rng.standard_normal((sub.shape[0], sub.shape[2])), sigma=(2.0, 6.0))
    noise /= noise.std() + 1e-6
    taper = 1.0 - np.linspace(0.0, 0.85, sub.shape[0])[:, None]  # thinner towards the head
    depth = depth_mm * taper * np.clip(1.0 + 0.35 * noise, 0.3, 1.6)
    w = np.clip((depth[:, None, :] - from_back_mm) / 3.0, 0.0, 1.0) * sub
    weight[z0 : z_top + 1] = w
    return weight


def insert_lesions(
    hu: np.ndarray,
    lung: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    seed: int = 0,
    params: LesionParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(hu_with_lesions, infection)``: float32 HU and uint8 labels (1 GGO, 2 consolidation)."""
    p = params or LesionParams()
    rng = np.random.default_rng(seed)
    out = hu.astype(np.float32).copy()
    inf = np.zeros(hu.shape, np.uint8)
    lung_b = lung > 0
    if not lung_b.any():
        return out, inf
    sp = np.asarray(spacing_zyx, float)
    dist = ndi.distance_transform_edt(lung_b, sampling=sp)
    cand = np.argwhere(lung_b & (dist < p.peripheral_mm) & (dist > 3.0))
    if len(cand) == 0:
        cand = np.argwhere(lung_b)
    zmin, zmax = cand[:, 0].min(), cand[:, 0].max()
    w_low = 0.5 + (zmax - cand[:, 0]) / max(zmax - zmin, 1)  # LPS arrays: index z grows to the head
    w_low = w_low / w_low.sum()
    cx_mid = lung.shape[2] / 2
    n = int(rng.integers(p.n_lesions[0], p.n_lesions[1] + 1))
    texture = ndi.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), 1.0) * 60
    for k in range(n):
        # alternate sides for a bilateral pattern
        side = cand[:, 2] < cx_mid if k % 2 == 0 else cand[:, 2] >= cx_mid
        pool, w = (cand[side], w_low[side]) if side.any() else (cand, w_low)
        kind = "cons" if rng.random() < p.p_consolidation else ("mixed" if rng.random() < p.p_mixed else "ggo")
        c = pool[rng.choice(len(pool), p=w / w.sum())]
        r_mm = rng.uniform(*p.radius_mm) * rng.uniform(0.5, 1.0, 3)
        if kind == "cons":
            r_mm = r_mm * 0.6
        blob = _blob(rng, r_mm / sp)
        half = (np.array(blob.shape) - 1) // 2
        lo = c - half
        sl_dst, sl_src = [], []
        for ax in range(3):
            a0, a1 = lo[ax], lo[ax] + blob.shape[ax]
            s0, s1 = max(a0, 0), min(a1, hu.shape[ax])
            if s1 <= s0:
                break
            sl_dst.append(slice(s0, s1))
            sl_src.append(slice(s0 - a0, s1 - a0))
        if len(sl_dst) < 3:
            continue
        dst, src = tuple(sl_dst), tuple(sl_src)
        wgt = blob[src] * lung_b[dst]
        region = out[dst]
        g_target = rng.uniform(*p.ggo_hu)
        ggo_w = np.clip(wgt * 1.6, 0, 1) if kind != "cons" else np.zeros_like(wgt)
        new = region + ggo_w * np.clip(g_target - region, 0, None) * 0.85
        ggo_lab = (ggo_w > 0.5) & (region < g_target - 60)
        cons_lab = np.zeros_like(ggo_lab)
        if kind in ("cons", "mixed"):
            core = np.clip((wgt - (0.45 if kind == "mixed" else 0.0)) * (2.2 if kind == "mixed" else 1.4), 0, 1)
            c_target = rng.uniform(*p.cons_hu)
            new = (1 - core) * new + core * (c_target + texture[dst])
            cons_lab = core > 0.5
        out[dst] = new
        lab = inf[dst]
        lab[ggo_lab & (lab == 0)] = 1
        lab[cons_lab] = 2
        inf[dst] = lab
    x = np.arange(hu.shape[2])[None, None, :]
    for side in (x < cx_mid, x >= cx_mid):
        if rng.random() >= p.p_dependent:
            continue
        band = dependent_band(
            lung_b, side, spacing_zyx, rng, rng.uniform(*p.dependent_depth_mm), rng.uniform(*p.dependent_extent)
        )
        if not band.any():
            continue
        c_target = rng.uniform(*p.cons_hu)
        sel = band > 0
        w = band[sel]
        out[sel] = (1 - w) * out[sel] + w * (c_target + texture[sel])
        inf[band > 0.5] = 2
    inf[~lung_b] = 0
    return out, inf
