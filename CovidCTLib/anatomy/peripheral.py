"""Peripheral (outer third) vs central involvement, per lung and per lobe.

Definition (one for the whole project; the COVID assessment uses it too):

* On each axial slice (the patient's cranio-caudal axis from the image direction, so flipped or oblique
  volumes are handled up to their obliquity), each lung's in-slice depth of a voxel is its distance to the
  lung boundary in that slice (costal and mediastinal pleura alike), divided by the largest depth of that
  lung in that slice (1 at the deepest point, 0 at the pleura).
* A voxel is **peripheral** when its relative depth is at most 1/3 (the outer third of the distance from the
  pleura to the lung's core), **central** otherwise.

Why depth from the pleura rather than concentric shells from the hilum: the RSNA consensus wording for the
typical COVID-19 pattern is "peripheral" / "subpleural", which is a distance from the pleura; it needs no
hilum landmark (so it never falls back), and it is the same on every lung and slice. Because the peripheral
third of the depth holds about half of a lung's volume (a disc: 5/9), each block also gives the lung's own
peripheral volume share, so a share of infection can be read against what a uniform spread would give.

Computed on an in-plane grid of about ``grid_mm`` (3 mm) for speed; research software, not a diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from CovidCTLib.imaging.grid import block_mean
from CovidCTLib.labels import LEFT_LUNG, LOBE_NAMES, LOBES_OF_LUNG, LUNG_NAMES, RIGHT_LUNG
from CovidCTLib.lobes.frame import Frame
from CovidCTLib.volume import CTVolume

#: relative in-slice depth at or below which a voxel is peripheral (the outer third)
PERIPHERAL_DEPTH = 1.0 / 3.0
DEFINITION = (
    "Peripheral: the outer third of each lung's in-slice depth from the pleura (costal and mediastinal), "
    "i.e. distance to the lung boundary on the axial slice at most 1/3 of the lung's largest depth on that "
    "slice; central: the inner two thirds."
)


@dataclass(frozen=True)
class PeripheralMap:
    """Which lung voxels are peripheral (``(z, y, x)`` bool, image order), with the settings used."""

    peripheral: np.ndarray
    grid_mm: float


def peripheral_mask(ct: CTVolume, lungs: np.ndarray, grid_mm: float = 3.0) -> PeripheralMap:
    """The peripheral (outer third) lung voxels of ``lungs`` (1 right / 2 left), image order."""
    lungs = np.asarray(lungs)
    frame = Frame.of(ct.image)
    canon = frame.to(lungs)  # (s, p, l)
    sp = frame.spacing(ct.spacing_zyx)
    f = max(1, int(round(grid_mm / max(min(sp[1], sp[2]), 1e-3))))
    factors = (1, f, f)
    out = np.zeros(canon.shape, dtype=bool)
    sampling = (1e6, sp[1] * f, sp[2] * f)  # a huge cranio-caudal spacing makes the transform per slice
    for side in (RIGHT_LUNG, LEFT_LUNG):
        found = ndimage.find_objects((canon == side).astype(np.uint8))
        if not found or found[0] is None:
            continue
        box = found[0]
        fine = canon[box] == side
        coarse = np.pad(block_mean(fine, factors) >= 0.5, ((0, 0), (1, 1), (1, 1)))  # room for the pleura
        depth = ndimage.distance_transform_edt(coarse, sampling=sampling)[:, 1:-1, 1:-1]
        deepest = depth.reshape(depth.shape[0], -1).max(axis=1)
        rel = depth / np.maximum(deepest, 1e-6)[:, None, None]
        periph_c = rel <= PERIPHERAL_DEPTH  # also every fine voxel whose block is outside (a boundary block)
        ny, nx = fine.shape[1:]
        up = periph_c[:, np.arange(ny) // f][:, :, np.arange(nx) // f]
        out[box] |= up & fine
    return PeripheralMap(frame.back(out), float(grid_mm))


def _split(counts: np.ndarray, voxel_ml: float) -> dict[str, Any]:
    """One entry from ``counts[periph, infected]`` (voxel counts)."""
    lung_n, lung_p = int(counts.sum()), int(counts[1].sum())
    inf_n, inf_p = int(counts[:, 1].sum()), int(counts[1, 1])
    return {
        "lung_ml": round(lung_n * voxel_ml, 2),
        "peripheral_lung_ml": round(lung_p * voxel_ml, 2),
        "peripheral_lung_share": round(lung_p / lung_n, 4) if lung_n else 0.0,
        "infection_ml": round(inf_n * voxel_ml, 2),
        "peripheral_infection_ml": round(inf_p * voxel_ml, 2),
        "central_infection_ml": round((inf_n - inf_p) * voxel_ml, 2),
        "peripheral_percent": round(100.0 * inf_p / lung_p, 2) if lung_p else 0.0,
        "central_percent": round(100.0 * (inf_n - inf_p) / (lung_n - lung_p), 2) if lung_n > lung_p else 0.0,
        "peripheral_share": round(inf_p / inf_n, 4) if inf_n else 0.0,
    }


def peripheral_involvement(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    lobes: np.ndarray | None = None,
    pmap: PeripheralMap | None = None,
) -> dict[str, Any]:
    """The report.json ``peripheral_involvement`` block: ``both``, ``right``, ``left`` and (with ``lobes``)
    ``lobes``, a list of the five lobes (key, lung and the same numbers).

    Each entry: lung_ml, peripheral_lung_ml / share (the outer third's volume), infection_ml,
    peripheral / central infection mL, peripheral_percent / central_percent (infected share of the
    peripheral / central lung) and peripheral_share (the share of the infection that is peripheral).
    """
    lungs = np.asarray(lungs)
    pmap = pmap or peripheral_mask(ct, lungs)
    flat = np.flatnonzero(lungs)
    side = lungs.ravel()[flat].astype(np.int64)
    periph = pmap.peripheral.ravel()[flat].astype(np.int64)
    inf = (np.asarray(infection).ravel()[flat] > 0).astype(np.int64)
    n_lobe = max(LOBE_NAMES) + 1
    lobe = np.zeros_like(side) if lobes is None else np.clip(np.asarray(lobes).ravel()[flat], 0, n_lobe - 1)
    code = ((np.clip(side, 0, 2) * n_lobe + lobe) * 2 + periph) * 2 + inf
    counts = np.bincount(code, minlength=3 * n_lobe * 4).reshape(3, n_lobe, 2, 2)
    voxel_ml = ct.voxel_volume_ml
    block: dict[str, Any] = {"definition": DEFINITION, "grid_mm": pmap.grid_mm}
    block["both"] = _split(counts[1:].sum(axis=(0, 1)), voxel_ml)
    for s in (RIGHT_LUNG, LEFT_LUNG):
        block[LUNG_NAMES[s]] = _split(counts[s].sum(axis=0), voxel_ml)
    block["lobes"] = (
        None
        if lobes is None
        else [
            {"key": LOBE_NAMES[k], "lung": LUNG_NAMES[s], **_split(counts[1:, k].sum(axis=0), voxel_ml)}
            for s in (RIGHT_LUNG, LEFT_LUNG)
            for k in LOBES_OF_LUNG[s]
        ]
    )
    return block
