"""HU-consistency gating of a network's infection mask on Hounsfield-unit volumes.

Ground-glass opacity is attenuation above normal aerated lung that is not explained by a thin bright
structure; the network also marks vessels, airway walls, fissures, the partial-volume band along the heart,
mediastinum and diaphragm, thin dependent bands and sharp-kernel noise. The gate keeps an infection voxel
only when all of these hold:

1. **Density after thin-structure removal.** The CT is smoothed in-plane (``smooth_mm`` box mean, which
   makes sharp and soft kernels alike), then bright structures narrower than ``thin_mm`` in-plane are
   removed by a grey-level opening (vessels and bronchial walls cut across or along, fissures, noise
   specks). The voxel's opened value must be at least ``min_hu`` (normal aerated lung is about -850 HU,
   ground glass above about -700 HU). A vessel seen on consecutive slices is removed on each slice.
2. **Not only a border band.** Lung voxels within ``border_mm`` of soft tissue outside the lung (heart,
   mediastinum, hilar vessels, diaphragm, chest wall) are a border band where partial volume and motion
   fake ground glass. A connected lesion is kept (with its border part, so subpleural disease reaches the
   pleura) only when at least ``min_core_ml`` and ``min_core_share`` of it lie deeper than the band
   (a long thin band along the border with one deeper spot is still a band).
3. **Not fat.** A lesion mostly of fat density (pericardial fat) is dropped.
4. **Not the dome of the liver or spleen.** Where the diaphragm bulges up into the lung, the top of the liver
   or spleen shows, through partial volume, as a round soft-tissue area inside the lung on a few axial slices.
   A connected lesion whose contact with soft tissue outside the lung lies (``dome_caudal_share`` or more) on
   its caudal face, with that face touching it at ``dome_min_contact`` or more of its voxels, is such a dome
   and is dropped. Real basal disease also touches the chest wall or the mediastinum around it.
5. **Not a small dense focus.** A connected lesion under ``dense_focus_max_ml`` whose mean HU is above
   ``dense_focus_min_hu`` (soft tissue) is a vessel segment followed across slices, a nodule or a granuloma, not
   the ground-glass / consolidation pattern measured here; it is dropped. Consolidation of pneumonia comes in
   larger areas or with ground glass around it, which lowers its mean.
6. **Not a mass.** A compact solid lesion with a narrow rim (a tumour, a nodule, a mass-like or lobar
   consolidation) is not the pattern measured here: it is taken out of the infection and listed in the summary's
   ``mass_like_lesions`` (:mod:`CovidCTLib.postprocess.masses`), so that the report names it.
7. **Minimum lesion size.** Connected lesions (26-connectivity) smaller than ``min_lesion_ml`` are dropped.

Used only for HU volumes (8-bit slices are not in HU; their results do not change). The numbers that
chose these defaults are in ``Resources/Models/infection-unet/MODEL_CARD.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.errors import InputError
from CovidCTLib.imaging.grid import block_mean, bounding_box, label_counts, upsample_nearest
from CovidCTLib.imaging.orientation import superior_axis
from CovidCTLib.labels import LEFT_LUNG, RIGHT_LUNG
from CovidCTLib.postprocess.masses import CONNECT_26, MassRule, mass_like_lesions
from CovidCTLib.volume import CTVolume

#: Version of the gate's rules and defaults (stated in report.json ``infection_gating.version``).
GATE_VERSION = "1.3.0"  # 1.3: mass-like lesions taken out and listed


@dataclass(frozen=True)
class HUGating:
    """Parameters of the HU gate (see the module docstring)."""

    enabled: bool = True
    smooth_mm: float = 1.5
    thin_mm: float = 5.0
    min_hu: float = -700.0
    soft_tissue_hu: float = -300.0
    border_mm: float = 4.0
    min_core_ml: float = 0.1
    min_core_share: float = 0.1
    min_lesion_ml: float = 0.1
    fat_min_hu: float = -200.0
    fat_max_hu: float = -40.0
    max_fat_share: float = 0.5
    dome_caudal_share: float = 0.9
    dome_min_contact: float = 0.1
    dense_focus_max_ml: float = 2.0
    dense_focus_min_hu: float = -100.0
    grid_mm: float = 1.4
    masses: MassRule = field(default_factory=MassRule)

    def as_dict(self) -> dict[str, Any]:
        """The parameters as a plain dictionary (for report.json)."""
        return asdict(self)


def _odd(size_mm: float, spacing_mm: float) -> int:
    """Odd window length (voxels) covering ``size_mm``, at least 1."""
    n = max(1, int(round(size_mm / spacing_mm)))
    return n if n % 2 == 1 else n + 1


def _box(mask: np.ndarray, margin: tuple[int, int, int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Bounding box of ``mask`` (not empty) grown by ``margin`` voxels, clipped to ``shape``."""
    found = bounding_box(mask)
    assert found is not None
    return tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(found, margin, shape, strict=True))


def opened_density(hu: np.ndarray, spacing_zyx: tuple[float, ...], params: HUGating) -> np.ndarray:
    """Smoothed HU with in-plane structures narrower than ``thin_mm`` removed (float32)."""
    sy, sx = _odd(params.smooth_mm, spacing_zyx[1]), _odd(params.smooth_mm, spacing_zyx[2])
    smooth = np.asarray(hu, dtype=np.float32)
    if sy > 1 or sx > 1:
        smooth = ndimage.uniform_filter(smooth, size=(1, sy, sx))
    ty, tx = _odd(params.thin_mm, spacing_zyx[1]), _odd(params.thin_mm, spacing_zyx[2])
    return ndimage.grey_opening(smooth, size=(1, ty, tx))


def border_band(hu: np.ndarray, lung: np.ndarray, spacing_zyx: tuple[float, ...], params: HUGating) -> np.ndarray:
    """Lung voxels within ``border_mm`` (3-D box) of soft tissue outside the lung."""
    tissue = ~lung & (np.asarray(hu) >= params.soft_tissue_hu)
    size = tuple(2 * int(round(params.border_mm / s)) + 1 for s in spacing_zyx)
    return lung & ndimage.maximum_filter(tissue, size=size)


def dome_lesions(
    lab: np.ndarray, n: int, ct: CTVolume, lungs: np.ndarray, box: tuple[slice, ...], params: HUGating
) -> np.ndarray:
    """Per label ``0 .. n`` of ``lab`` (lesions in ``box`` of the CT): True for a dome of the liver or spleen.

    Contacts are face neighbours outside the lung with HU >= ``soft_tissue_hu``; the caudal one is the
    neighbour one slice towards the feet (along the image's cranio-caudal axis). A lesion voxel with a caudal
    contact counts for the caudal face only.
    """
    axis, sign = superior_axis(ct.image)
    grown = tuple(slice(max(0, b.start - 1), min(dim, b.stop + 1)) for b, dim in zip(box, ct.shape, strict=True))
    hu = sitk.GetArrayViewFromImage(ct.image)[grown]
    tissue = ~(np.asarray(lungs)[grown] > 0) & (hu >= params.soft_tissue_hu)
    # one voxel around the box on every side (no tissue beyond the volume's edge)
    pads = [(1 - (b.start - g.start), 1 - (g.stop - b.stop)) for b, g in zip(box, grown, strict=True)]
    tissue = np.pad(tissue, pads)
    caudal = np.zeros(lab.shape, dtype=bool)
    other = np.zeros(lab.shape, dtype=bool)
    for ax in range(3):
        for step in (-1, 1):
            view = tuple(
                slice(1 + step, 1 + step + lab.shape[a]) if a == ax else slice(1, 1 + lab.shape[a]) for a in range(3)
            )
            if ax == axis and step == -sign:
                caudal |= tissue[view]
            else:
                other |= tissue[view]
    inside = lab > 0
    size = np.bincount(lab[inside], minlength=n + 1).astype(float)
    n_caudal = np.bincount(lab[inside & caudal], minlength=n + 1).astype(float)
    # a voxel that touches tissue below and beside (the rim of the dome's base) belongs to the caudal face
    n_other = np.bincount(lab[inside & other & ~caudal], minlength=n + 1).astype(float)
    share = n_caudal / np.maximum(n_caudal + n_other, 1.0)
    out = (share >= params.dome_caudal_share) & (n_caudal >= params.dome_min_contact * np.maximum(size, 1.0))
    out[0] = False
    return out


def small_dense_foci(lab: np.ndarray, n: int, hu: np.ndarray, voxel_ml: float, params: HUGating) -> np.ndarray:
    """Per label ``0 .. n``: True for a lesion under ``dense_focus_max_ml`` whose mean HU is above
    ``dense_focus_min_hu``."""
    inside = lab > 0
    ids = lab[inside]
    count = np.bincount(ids, minlength=n + 1).astype(float)
    total_hu = np.bincount(ids, weights=np.asarray(hu)[inside].astype(np.float64), minlength=n + 1)
    mean_hu = total_hu / np.maximum(count, 1)
    out = (count * voxel_ml < params.dense_focus_max_ml) & (mean_hu > params.dense_focus_min_hu)
    out[0] = False
    return out


def locate_masses(
    found: list[dict[str, Any]], lab: np.ndarray, box: tuple[slice, ...], ct: CTVolume, lungs: np.ndarray
) -> list[dict[str, Any]]:
    """The mass-like lesions of ``lab`` (a crop ``box`` of the CT) placed on the CT: voxel box and centroid,
    centroid in LPS mm, lung. Labels are dropped (they are the crop's)."""
    placed = []
    offset = np.array([b.start for b in box])
    lungs_in_box = np.asarray(lungs)[box]
    for entry in found:
        entry = dict(entry)
        label = entry.pop("label")
        low, high = entry["bbox_voxel"]
        crop = tuple(slice(a, b + 1) for a, b in zip(low, high, strict=True))  # the lesion's own box
        lesion = lab[crop] == label
        centroid = np.array(ndimage.center_of_mass(lesion)) + offset + np.array(low)
        entry["centroid_voxel"] = [round(float(c), 2) for c in centroid]
        point = ct.image.TransformContinuousIndexToPhysicalPoint([float(c) for c in centroid[::-1]])
        entry["centroid_mm"] = [round(float(c), 2) for c in point]
        entry["bbox_voxel"] = [[int(a + o) for a, o in zip(corner, offset, strict=True)] for corner in (low, high)]
        sides = lungs_in_box[crop][lesion]
        right, left = int(np.count_nonzero(sides == RIGHT_LUNG)), int(np.count_nonzero(sides == LEFT_LUNG))
        entry["lung"] = "right" if right >= left else "left"
        placed.append(entry)
    return placed


def _in_plane_factor(spacing_zyx: tuple[float, ...], params: HUGating) -> int:
    """In-plane block size that brings fine in-plane spacing to about ``grid_mm`` (speed)."""
    return max(1, int(params.grid_mm // max(min(spacing_zyx[1:]), 1e-3)))


def gate_infection_hu(
    ct: CTVolume, lungs: np.ndarray, infection: np.ndarray, params: HUGating | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Gate ``infection`` (uint8, 1 GGO / 2 consolidation) by CT physics; returns ``(infection, summary)``.

    The summary gives the parameters and the infection volume (mL) removed by each rule.
    """
    params = params or HUGating()
    infection = np.asarray(infection)
    if infection.shape != ct.shape or np.asarray(lungs).shape != ct.shape:
        raise InputError(f"mask shapes do not match the CT {ct.shape} (z, y, x); masks must be computed on this CT.")
    summary: dict[str, Any] = {
        "applied": False,
        "version": GATE_VERSION,
        "parameters": params.as_dict(),
        "removed_ml": {},
    }
    if not params.enabled or ct.intensity != "HU" or not ct.is_3d or not infection.any():
        return infection.astype(np.uint8), summary
    voxel_ml = ct.voxel_volume_ml
    spacing = ct.spacing_zyx
    margin = (0, *(int(np.ceil(params.border_mm / s)) + 2 for s in spacing[1:]))
    box = _box(infection > 0, margin, ct.shape)  # work where infection is
    hu = sitk.GetArrayViewFromImage(ct.image)[box]
    lung = np.asarray(lungs)[box] > 0
    inf = np.where(lung, infection[box], 0).astype(np.uint8)
    before = float(np.count_nonzero(inf)) * voxel_ml

    factors = (1, _in_plane_factor(spacing, params), _in_plane_factor(spacing, params))
    coarse_spacing = tuple(s * f for s, f in zip(spacing, factors, strict=True))
    hu_c = block_mean(hu, factors)
    lung_c = block_mean(lung.astype(np.uint8), factors) >= 0.5
    opened = opened_density(hu_c, coarse_spacing, params)
    dense_enough = upsample_nearest(opened >= params.min_hu, factors, hu.shape)
    gated = np.where(dense_enough, inf, 0).astype(np.uint8)
    after_density = float(np.count_nonzero(gated)) * voxel_ml

    # every later rule keeps or drops whole lesions, so one labelling serves them all
    lab, n = ndimage.label(gated > 0, structure=CONNECT_26)
    voxels = label_counts(lab, n + 1)  # per label; a dropped lesion's count becomes 0
    objects = ndimage.find_objects(lab)

    def drop(lesions: np.ndarray) -> float:
        """Remove the lesions flagged per label (label 0 never) from ``gated`` and ``lab``, each in its own
        box; mL left."""
        for label in np.flatnonzero(lesions[1:] & (voxels[1:] > 0)) + 1:
            where = objects[label - 1]
            lesion = lab[where] == label
            gated[where][lesion] = 0
            lab[where][lesion] = 0
            voxels[label] = 0
        return float(voxels[1:].sum()) * voxel_ml

    after_border = after_fat = after_dome = after_dense = after_mass = after_size = after_density
    mass_like: list[dict[str, Any]] = []
    if n:
        band = upsample_nearest(border_band(hu_c, lung_c, coarse_spacing, params), factors, hu.shape)
        core = np.bincount(lab[~band].ravel(), minlength=n + 1).astype(float) * voxel_ml
        size = voxels.astype(float) * voxel_ml
        after_border = drop(core < np.maximum(params.min_core_ml, params.min_core_share * size))

        smooth = ndimage.uniform_filter(hu_c, size=(1, 3, 3))
        fat = upsample_nearest((smooth >= params.fat_min_hu) & (smooth <= params.fat_max_hu), factors, hu.shape)
        fat_share = np.bincount(lab[fat].ravel(), minlength=n + 1) / np.maximum(voxels.astype(float), 1)
        after_fat = drop(fat_share > params.max_fat_share)

        after_dome = drop(dome_lesions(lab, n, ct, lungs, box, params))
        after_dense = drop(small_dense_foci(lab, n, hu, voxel_ml, params))

        masses, found = mass_like_lesions(lab, voxels, objects, hu, spacing, params.masses)
        mass_like = locate_masses(found, lab, box, ct, lungs)
        after_mass = drop(masses)

        after_size = drop(voxels.astype(float) * voxel_ml < params.min_lesion_ml)

    out = np.zeros(infection.shape, dtype=np.uint8)
    out[box] = gated
    summary.update(
        {
            "applied": True,
            "infection_ml_before": round(before, 3),
            "infection_ml_after": round(after_size, 3),
            "removed_ml": {
                "density_after_thin_structure_removal": round(before - after_density, 3),
                "border_band_only": round(after_density - after_border, 3),
                "fat_density": round(after_border - after_fat, 3),
                "dome_of_liver_or_spleen": round(after_fat - after_dome, 3),
                "small_dense_focus": round(after_dome - after_dense, 3),
                "mass_like_lesion": round(after_dense - after_mass, 3),
                "below_min_lesion_size": round(after_mass - after_size, 3),
            },
            "mass_like_lesions": mass_like,
        }
    )
    return out, summary
