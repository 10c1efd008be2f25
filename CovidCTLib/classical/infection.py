"""Classical infection segmentation inside the lungs: HU classes with vessel and partial-volume exclusion.

Defaults follow the density ranges used by the Lung CT Analyzer and the radiology literature:

* ground-glass opacity (GGO): -750 <= HU < -300 (hazy increase of density, vessels still visible)
* consolidation: -300 <= HU <= +50 (air replaced by fluid/cells, density of soft tissue)
* normal aerated lung is below -750 HU; vessels and calcifications are brighter than +50 HU or thin.

A HU class alone also marks every vessel, the partial-volume rim around vessels and along the pleura, and
the fissures. Those structures are thin, lesions are thick, so the class masks are *opened* on a coarse
grid (about 2.5 x 2 x 2 mm): the ground-glass support keeps regions at least ``min_ggo_thickness_mm``
thick, the consolidation support keeps dense regions at least ``vessel_max_diameter_mm`` thick, and dense
components that are still tube-like (long and thin: ratio of principal axes above ``vessel_elongation``)
and small are treated as vessels. Ground glass only found within ``pleural_margin_mm`` of the lung surface
(partial volume along the pleura and the diaphragm dome) is dropped. Each full-resolution voxel is then
classified by its lightly smoothed HU (3 x 3 in-plane mean) inside the support, and components below
``min_lesion_ml`` are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.errors import InputError
from CovidCTLib.imaging.grid import block_factors, block_mean, occupied_box, upsample_nearest
from CovidCTLib.imaging.orientation import oriented_target
from CovidCTLib.labels import CONSOLIDATION, GGO
from CovidCTLib.progress import Reporter
from CovidCTLib.volume import CTVolume

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = True


@dataclass
class InfectionThresholds:
    """HU ranges and size rules of the classical infection segmentation (see the module docstring).

    Attributes:
        ggo_min_hu / ggo_max_hu: ground-glass range, default -750 .. -300 HU (upper bound exclusive).
        consolidation_min_hu / consolidation_max_hu: consolidation range, default -300 .. +50 HU.
        vessel_max_diameter_mm: dense structures thinner than this are vessels, not consolidation (5 mm).
        min_ggo_thickness_mm: ground-glass regions thinner than this (vessel rims, pleural partial volume,
            fissures) are dropped (6 mm).
        vessel_elongation: a dense component whose principal-axis length ratio exceeds this and whose volume
            is below ``vessel_max_ml`` is a vessel (4.0, 10 mL).
        min_lesion_ml: lesions (26-connected components) smaller than this are dropped (0.05 mL = 50 mm3).
        pleural_margin_mm: ground glass lying only within this distance of the lung surface (partial volume
            at the pleura and the diaphragm, dependent density) is dropped; ground glass reaching deeper is
            kept up to the pleura (5 mm).
        vessel_rim_voxels: ground-glass voxels within this many in-plane voxels of a vessel (dense voxel
            outside the consolidation support) are partial volume, not lesion (1).
        coarse_spacing_mm: grid ``(z, y, x)`` on which the thickness rules run.
    """

    ggo_min_hu: float = -750.0
    ggo_max_hu: float = -300.0
    consolidation_min_hu: float = -300.0
    consolidation_max_hu: float = 50.0
    vessel_max_diameter_mm: float = 5.0
    min_ggo_thickness_mm: float = 6.0
    vessel_elongation: float = 4.0
    vessel_max_ml: float = 10.0
    min_lesion_ml: float = 0.05
    pleural_margin_mm: float = 5.0
    vessel_rim_voxels: int = 1
    coarse_spacing_mm: tuple[float, float, float] = (2.5, 2.0, 2.0)

    def validate(self) -> None:
        """Raise :class:`InputError` when the ranges are inconsistent."""
        if not self.ggo_min_hu < self.ggo_max_hu <= self.consolidation_max_hu:
            raise InputError(
                f"ground-glass range {self.ggo_min_hu}..{self.ggo_max_hu} HU is not valid; give MIN < MAX, "
                "for example --ggo-range -750 -300"
            )
        if not self.consolidation_min_hu < self.consolidation_max_hu:
            raise InputError(
                f"consolidation range {self.consolidation_min_hu}..{self.consolidation_max_hu} HU is not valid; "
                "give MIN < MAX, for example --consolidation-range -300 50"
            )


def _ball(radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Ellipsoidal structuring element of a physical radius on an anisotropic grid (at least a 3-D cross)."""
    r = [max(1, int(np.floor(radius_mm / s + 1e-6))) if radius_mm >= s else 0 for s in spacing]
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    dist = sum((g * s / max(radius_mm, 1e-6)) ** 2 for g, s in zip(grids, spacing, strict=True))
    ball = dist <= 1.0 + 1e-6
    if ball.sum() <= 1:
        return ndimage.generate_binary_structure(3, 1)
    return ball


def _drop_tubes(dense: np.ndarray, spacing: tuple[float, ...], elongation: float, max_ml: float) -> np.ndarray:
    """Remove small, long-and-thin components (vessels) from a coarse dense mask."""
    lab, n = ndimage.label(dense, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return dense
    idx = lab.ravel()
    count = np.bincount(idx, minlength=n + 1).astype(float)
    count[0] = 1
    coords = [
        np.broadcast_to(c * s, dense.shape).ravel()
        for c, s in zip(np.ogrid[tuple(slice(0, k) for k in dense.shape)], spacing, strict=True)
    ]
    mean = [np.bincount(idx, weights=c, minlength=n + 1) / count for c in coords]
    cov = np.zeros((n + 1, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            v = np.bincount(idx, weights=coords[i] * coords[j], minlength=n + 1) / count - mean[i] * mean[j]
            cov[:, i, j] = cov[:, j, i] = v
    eig = np.clip(np.linalg.eigvalsh(cov), 1e-6, None)  # ascending
    ratio = np.sqrt(eig[:, 2] / eig[:, 1])
    volume_ml = count * float(np.prod(spacing)) / 1000.0
    tube = (ratio > elongation) & (volume_ml < max_ml)
    tube[0] = False
    return dense & ~tube[lab]


def _drop_pleural_rim(
    support: np.ndarray, lung: np.ndarray, spacing: tuple[float, ...], margin_mm: float
) -> np.ndarray:
    """Remove support within ``margin_mm`` of the lung surface unless it connects to deeper support."""
    if margin_mm <= 0 or not support.any():
        return support
    depth = ndimage.distance_transform_edt(np.pad(lung, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    deep = support & (depth > margin_mm)
    steps = max(1, int(np.ceil(margin_mm / min(spacing))))
    return ndimage.binary_dilation(deep, iterations=steps, mask=support)


def segment_infection_classical(
    ct: CTVolume,
    lungs: np.ndarray,
    thresholds: InfectionThresholds | None = None,
    reporter: Reporter | None = None,
) -> np.ndarray:
    """Infection inside the lungs: uint8 ``(z, y, x)``, 0 none, 1 ground glass, 2 consolidation.

    ``lungs`` is the lung labelmap (any non-zero value is lung); the result is always inside it.
    """
    th = thresholds or InfectionThresholds()
    th.validate()
    if ct.intensity != "HU":
        raise InputError(
            f"{ct.source} is not in Hounsfield units; the classical infection segmentation needs HU values."
        )
    lung = np.asarray(lungs) > 0
    if lung.shape != ct.shape:
        raise InputError(f"lung mask shape {lung.shape} does not match the CT {ct.shape} (z, y, x)")
    out = np.zeros(lung.shape, dtype=np.uint8)
    if not lung.any():
        return out
    step = "infection"
    if reporter:
        reporter.update(step, 0.0, "Infection: density classes")
    box = occupied_box(lung)
    hu = sitk.GetArrayViewFromImage(ct.image)[box]
    lung_b = lung[box]
    target = oriented_target(ct.image, th.coarse_spacing_mm)
    factors = block_factors(ct.spacing_zyx, target, hu.shape, max_voxels=8_000_000)
    spacing_lr = tuple(s * f for s, f in zip(ct.spacing_zyx, factors, strict=True))
    hu_lr = block_mean(hu, factors)
    lung_lr = block_mean(lung_b.astype(np.uint8), factors) >= 0.5

    # thickness rules on the coarse grid: dense support first (vessels out), then ground glass, which may
    # lean on the dense support (a thin ground-glass halo around a consolidation is kept)
    dense = lung_lr & (hu_lr >= th.consolidation_min_hu)
    dense_support = ndimage.binary_opening(dense, structure=_ball(th.vessel_max_diameter_mm / 2.0, spacing_lr))
    dense_support = _drop_tubes(dense_support, spacing_lr, th.vessel_elongation, th.vessel_max_ml)
    abnormal = (lung_lr & (hu_lr >= th.ggo_min_hu) & (hu_lr < th.ggo_max_hu)) | dense_support
    ggo_support = ndimage.binary_opening(abnormal, structure=_ball(th.min_ggo_thickness_mm / 2.0, spacing_lr))
    ggo_support = _drop_pleural_rim(ggo_support, lung_lr, spacing_lr, th.pleural_margin_mm)
    if reporter:
        reporter.update(step, 0.5, "Infection: excluding vessels")
    # one coarse voxel of margin so full-resolution lesion edges are not clipped
    ggo_support = ndimage.binary_dilation(ggo_support | dense_support) & lung_lr
    dense_support = ndimage.binary_dilation(dense_support) & lung_lr

    full = tuple(slice(0, n) for n in hu.shape)
    ggo_f = upsample_nearest(ggo_support, factors, hu.shape, full)
    dense_f = upsample_nearest(dense_support, factors, hu.shape, full)
    smooth = ndimage.uniform_filter(np.asarray(hu, dtype=np.float32), size=(1, 3, 3))
    cons = dense_f & lung_b & (smooth >= th.consolidation_min_hu) & (smooth <= th.consolidation_max_hu)
    ggo = ggo_f & lung_b & (smooth >= th.ggo_min_hu) & (smooth < th.ggo_max_hu) & ~cons
    if th.vessel_rim_voxels > 0:
        # partial-volume rim around vessels (dense but outside the consolidation support)
        vessel = lung_b & (smooth >= th.consolidation_min_hu) & ~dense_f
        rim = ndimage.binary_dilation(vessel, structure=_IN_PLANE, iterations=th.vessel_rim_voxels)
        ggo &= ~rim
    sub = np.zeros(hu.shape, dtype=np.uint8)
    sub[ggo] = GGO
    sub[cons] = CONSOLIDATION
    if reporter:
        reporter.update(step, 0.85, "Infection: removing specks")
    min_voxels = th.min_lesion_ml / ct.voxel_volume_ml
    if min_voxels > 1:
        lab, n = ndimage.label(sub > 0, structure=np.ones((3, 3, 3), dtype=bool))
        if n:
            sizes = np.bincount(lab.ravel())
            small = sizes < min_voxels
            small[0] = False
            sub[small[lab]] = 0
    out[box] = sub
    if reporter:
        reporter.update(step, 1.0, "Infection done")
    return out
