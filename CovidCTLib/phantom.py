"""Deterministic synthetic chest CT ("phantom") with known lung and infection masks.

Used by the tests and the ``covidct demo`` command instead of patient data.

Geometry and orientation (read this before using the masks):

* Arrays are ``(z, y, x)``; the image direction is the identity (LPS) unless ``oblique=True``.
  With the identity direction the array axes point: x -> patient **Left**, y -> **Posterior**,
  z -> **Superior** (the lung apices and the trachea are at the *high* z indices).
* The **right lung (label 1) is therefore at the SMALL x indices** (the left side of an axial image shown
  in radiological convention), the left lung (label 2) at the large x indices.

Anatomy (all sizes scale with the field of view; values in HU before blur and noise): air outside the body
(-1000), a patient table, an elliptical body of soft tissue (+40) with a subcutaneous fat rim (-100), a
spine and ribs (+700), two lungs of parenchyma (-870 anterior to -830 posterior, a gravity gradient) with a
domed diaphragm, the heart indenting the left lung, a mediastinum that narrows anteriorly so that the two
lungs **touch** (anterior junction) over part of the cranio-caudal range, the trachea and both main
bronchi (-1000) entering the lungs at the hilum from above, and branching vessel trees (+40) inside the
lungs. Lesions: patchy ground-glass blobs (about -550), a mixed lesion (a consolidation core inside
ground glass) and a dense (+30) consolidation lying against the posterior pleura, so a plain threshold
would cut it out of the lung.

Truth masks:

* ``lungs``: the lung region (parenchyma + intrapulmonary vessels + lesions), **excluding** the trachea and
  main bronchi (the air tubes are removed from the mask even where the bronchus has entered the lung).
* ``lobes`` (only with ``fissures=True``, else None): 1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL, partitioning
  ``lungs``; the lobes are cut by smooth fissure surfaces (see :mod:`CovidCTLib.phantom_fissures`), which are
  drawn as thin bright sheets (the right horizontal fissure is incomplete medially, as it often is).
* ``infection``: 1 ground glass, 2 consolidation, always inside ``lungs``. Ground glass excludes the
  vessels running through it (they stay visible in GGO); consolidation includes vessels it engulfs (they
  are indistinguishable in HU). A lesion voxel belongs to the truth where the lesion's soft edge weight
  is at least 0.5 (the edge is about 2 mm wide, like partial volume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.atomic import write_with
from CovidCTLib.labels import CONSOLIDATION, GGO, LEFT_LUNG, RIGHT_LUNG
from CovidCTLib.volume import CTVolume, labelmap_like

AIR_HU = -1000.0
SOFT_TISSUE_HU = 40.0
FAT_HU = -100.0
BONE_HU = 700.0
VESSEL_HU = 40.0
GGO_HU = -550.0
CONSOLIDATION_HU = 0.0
DENSE_CONSOLIDATION_HU = 30.0

# Lung shape in normalised coordinates (u: x, v: y, w: z; each -1..1 over the field of view).
_LUNG_U, _LUNG_RU, _LUNG_RV = 0.44, 0.34, 0.5
_LUNG_W0, _LUNG_RW = -0.05, 0.85


@dataclass
class Phantom:
    """A synthetic CT with its ground truth.

    Attributes:
        ct: the CT volume (int16 HU).
        lungs: uint8 ``(z, y, x)``, 1 right lung (small x indices), 2 left lung.
        infection: uint8 ``(z, y, x)``, 1 ground glass, 2 consolidation (inside ``lungs``).
        lesions: one dict per lesion: ``type`` ("GGO", "mixed", "consolidation"), ``lung`` ("right"/"left"),
            ``centre_voxel`` (z, y, x), ``centre_mm`` (LPS), ``radius_mm``, ``volume_ml`` (truth voxels of the
            lesion inside the lung), ``ggo_ml`` / ``consolidation_ml``, ``pleural`` (touches the chest wall).
        airways: uint8 mask of the trachea and main bronchi (not part of ``lungs``).
        vessels: uint8 mask of the intrapulmonary vessels (part of ``lungs``).
        lobes: uint8 lobe labels (1 RUL .. 5 LLL) when made with ``fissures=True``, else None.
    """

    ct: CTVolume
    lungs: np.ndarray
    infection: np.ndarray
    lesions: list[dict[str, Any]] = field(default_factory=list)
    airways: np.ndarray | None = None
    vessels: np.ndarray | None = None
    lobes: np.ndarray | None = None

    def write(self, folder: str | Path, overwrite: bool = True) -> dict[str, Path]:
        """Write ``ct.nrrd``, ``lungs.nrrd`` and ``infection.nrrd`` into ``folder`` (atomic writes)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        images = {
            "ct": self.ct.image,
            "lungs": labelmap_like(self.lungs, self.ct.image),
            "infection": labelmap_like(self.infection, self.ct.image),
        }
        paths: dict[str, Path] = {}
        for name, image in images.items():
            path = folder / f"{name}.nrrd"
            write_with(path, lambda tmp, im=image: sitk.WriteImage(im, str(tmp), True), overwrite)
            paths[name] = path
        return paths


def _rotation(deg_x: float, deg_z: float) -> np.ndarray:
    ax, az = math.radians(deg_x), math.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rx @ rz


class _Grid:
    """Normalised and millimetre coordinates of a bounding box of the volume."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=float)
        self.half = np.array([n * s / 2.0 for n, s in zip(shape, spacing, strict=True)])  # half field of view, mm

    def norm_axes(self, sl: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, ...]:
        """Broadcastable normalised coordinates (w, v, u) for the voxels of ``sl`` (z, y, x)."""
        sl = sl or tuple(slice(0, n) for n in self.shape)
        out = []
        for axis, s in enumerate(sl):
            idx = np.arange(s.start, s.stop, dtype=np.float32)
            c = ((idx + 0.5) * self.spacing[axis] - self.half[axis]) / self.half[axis]
            sh = [1, 1, 1]
            sh[axis] = -1
            out.append(c.reshape(sh).astype(np.float32))
        return tuple(out)

    def to_voxel(self, wvu: np.ndarray) -> np.ndarray:
        """Normalised (w, v, u) -> fractional voxel index (z, y, x)."""
        return (np.asarray(wvu) * self.half + self.half) / self.spacing - 0.5

    def box(self, centre_wvu: np.ndarray, radius_mm: float) -> tuple[slice, slice, slice]:
        """Voxel bounding box around a normalised centre with a radius in mm (clipped to the volume)."""
        c = self.to_voxel(centre_wvu)
        r = radius_mm / self.spacing
        return tuple(
            slice(int(max(0, math.floor(ci - ri - 1))), int(min(n, math.ceil(ci + ri + 2))))
            for ci, ri, n in zip(c, r, self.shape, strict=True)
        )


def _segment_tube(grid: _Grid, mask: np.ndarray, p0: np.ndarray, p1: np.ndarray, r_mm: float) -> None:
    """Set ``mask`` True inside a cylinder with round ends from p0 to p1 (normalised coordinates)."""
    a = p0 * grid.half
    b = p1 * grid.half
    lo = np.minimum(a, b) - r_mm
    hi = np.maximum(a, b) + r_mm
    sl = grid.box((lo + hi) / 2.0 / grid.half, float(np.max((hi - lo) / 2.0)))
    if any(s.stop <= s.start for s in sl):
        return
    w, v, u = grid.norm_axes(sl)
    pz, py, px = w * grid.half[0], v * grid.half[1], u * grid.half[2]
    d = b - a
    L2 = float(d @ d) or 1e-9
    t = ((pz - a[0]) * d[0] + (py - a[1]) * d[1] + (px - a[2]) * d[2]) / L2
    t = np.clip(t, 0.0, 1.0)
    dist2 = (pz - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2 + (px - a[2] - t * d[2]) ** 2
    mask[sl] |= dist2 <= r_mm * r_mm


def _lung_shapes(grid: _Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right and left lung regions (before airway removal) and the heart."""
    w, v, u = grid.norm_axes()
    # cross-section scale: dome above the lung centre, full width below
    s = np.where(w > _LUNG_W0, np.sqrt(np.clip(1.0 - ((w - _LUNG_W0) / _LUNG_RW) ** 2, 0.0, 1.0)), 1.0)
    s = np.maximum(s, 1e-3)
    shapes = []
    for side in (-1.0, 1.0):  # -1: right lung (small x), +1: left lung
        r2 = ((u - side * _LUNG_U) / (_LUNG_RU * s)) ** 2 + (v / (_LUNG_RV * s)) ** 2
        # domed diaphragm, highest medially so that the liver/heart dome opens towards the mediastinum
        dome2 = ((u - side * (_LUNG_U - 0.3)) / 0.5) ** 2 + (v / 0.6) ** 2
        base = -0.80 + 0.3 * np.clip(1.0 - dome2, 0.0, 1.0) * (s > 0.999)
        lung = (r2 <= 1.0) & (w >= base) & (w <= _LUNG_W0 + _LUNG_RW)
        # anterior junction: the lungs bulge to the midline and touch over part of the z range
        junction = (((u - side * 0.15) / 0.17) ** 2 + ((v + 0.3) / 0.12) ** 2 <= 1.0) & (w > -0.05) & (w < 0.4)
        junction &= (side * u) >= 0.0
        shapes.append(lung | junction)
    heart = ((u - 0.08) / 0.3) ** 2 + ((v + 0.12) / 0.27) ** 2 + ((w + 0.45) / 0.38) ** 2 <= 1.0
    return shapes[0] & ~heart, shapes[1] & ~heart, heart


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth random field scaled to about -1..1."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return field_ / (np.abs(field_).max() + 1e-6)


def _lesion_specs(rng: np.random.Generator) -> list[dict[str, Any]]:
    """Lesion placements (normalised centres) in both lungs and all zones; jittered by the seed."""

    def jit(x: float, amount: float = 0.03) -> float:
        return float(x + rng.uniform(-amount, amount))

    # side -1 right / +1 left; (w, v, u-offset from the lung centre towards lateral)
    return [
        {"type": "GGO", "side": -1, "w": jit(-0.45), "v": jit(0.25), "lat": 0.22, "r": 0.17},
        {"type": "GGO", "side": 1, "w": jit(0.42), "v": jit(-0.05), "lat": 0.19, "r": 0.13},
        {"type": "GGO", "side": 1, "w": jit(-0.3), "v": jit(-0.2), "lat": 0.2, "r": 0.15},
        {"type": "mixed", "side": -1, "w": jit(0.05), "v": jit(-0.1), "lat": 0.2, "r": 0.15, "core": 0.6},
        {"type": "consolidation", "side": 1, "w": jit(-0.5), "v": 0.5, "lat": 0.0, "r": 0.16, "pleural": True},
    ]


def make_phantom(
    shape: tuple[int, int, int] = (64, 128, 128),
    spacing: tuple[float, float, float] = (2.5, 1.5, 1.5),
    noise: float = 20.0,
    seed: int = 0,
    lesions: bool = True,
    oblique: bool = False,
    origin: tuple[float, float, float] | None = None,
    fissures: bool = False,
) -> Phantom:
    """Build a synthetic chest CT with known lungs and infection masks (deterministic for ``seed``).

    Args:
        shape: array size ``(z, y, x)``; anatomy scales with the field of view (keep y, x >= 64).
        spacing: voxel size in mm ``(z, y, x)``.
        noise: standard deviation of the added Gaussian noise in HU.
        seed: random seed (vessel tree, lesion jitter, texture, noise).
        lesions: add the COVID-like lesions (otherwise ``infection`` is all zero).
        oblique: use a rotated direction matrix (15 degrees about x, then 10 about z) and a non-zero
            origin; the voxel content is unchanged, only the physical placement differs.
        origin: physical origin in mm ``(x, y, z)`` (LPS); default centres the volume at 0 (or an
            off-centre origin when ``oblique``).
        fissures: draw the interlobar fissures and return the known ``lobes`` (off by default: the other
            outputs are then identical to a phantom made without this option).
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"phantom shape must be 3 sizes (z, y, x) of at least 8 voxels, got {shape}")
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    rng = np.random.default_rng(seed)
    grid = _Grid(shape, spacing)
    w, v, u = grid.norm_axes()

    # --- body, fat, bone, table --------------------------------------------------------------
    body_r2 = (u / 0.9) ** 2 + ((v - 0.04) / 0.72) ** 2
    body = np.broadcast_to(body_r2 <= 1.0, shape)
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    hu[body] = SOFT_TISSUE_HU
    fat = np.broadcast_to((body_r2 <= 1.0) & (body_r2 > 0.83), shape)
    hu[fat] = FAT_HU
    table = np.broadcast_to((v > 0.8) & (v < 0.84) & (np.abs(u) < 0.85), shape)
    hu[table] = 150.0
    spine = np.broadcast_to((u / 0.09) ** 2 + ((v - 0.6) / 0.1) ** 2 <= 1.0, shape)
    rib_r2 = (u / 0.84) ** 2 + ((v - 0.02) / 0.62) ** 2
    rib_band = (rib_r2 >= 1.0) & (rib_r2 <= 1.1)
    rib_phase = np.mod(w * 6.0 + 0.8 * v, 1.0)
    ribs = rib_band & (rib_phase < 0.35) & (w < 0.85)
    sternum = (u / 0.06) ** 2 + ((v + 0.63) / 0.04) ** 2 <= 1.0
    hu[np.broadcast_to(spine, shape) | ribs | np.broadcast_to(sternum, shape)] = BONE_HU

    # --- lungs, heart ------------------------------------------------------------------------
    right, left, heart = _lung_shapes(grid)
    lung_any = right | left
    hu[heart] = SOFT_TISSUE_HU
    parenchyma_hu = (-850.0 + 20.0 * v).astype(np.float32)  # -870 anterior .. -830 posterior
    texture = 8.0 * _smooth_noise(rng, shape, 2.0)
    hu = np.where(lung_any, parenchyma_hu + texture, hu)
    lobe_truth = None
    if fissures:  # lobes + fissure sheets (no random numbers drawn: the other outputs stay the same)
        from CovidCTLib.phantom_fissures import draw_fissures

        lobe_truth = draw_fissures(hu, right, left, (w, v, u), grid.half, spacing)

    # --- airways: trachea from the top down to the carina, main bronchi to the hilum ----------
    airways = np.zeros(shape, dtype=bool)
    carina = np.array([0.3, -0.05, 0.0])
    _segment_tube(grid, airways, np.array([1.2, -0.05, 0.0]), carina, 0.075 * grid.half[2])
    hila = {}
    for side in (-1.0, 1.0):
        hilum = np.array([0.12, 0.0, side * 0.16])
        hila[side] = hilum
        _segment_tube(grid, airways, carina, hilum, 0.05 * grid.half[2])
    hu[airways] = AIR_HU

    # --- vessel trees from each hilum ---------------------------------------------------------
    vessels = np.zeros(shape, dtype=bool)
    min_r = 0.55 * float(min(spacing[1], spacing[2]))
    for side in (-1.0, 1.0):
        start = hila[side] + np.array([-0.03, 0.04, side * 0.02])
        branches = [
            (start, np.array(d, dtype=float), 0.024, 0.3)
            for d in ((0.8, 0.1, side * 0.6), (0.0, 0.2, side * 1.0), (-0.8, 0.3, side * 0.5), (-0.5, -0.5, side * 0.5))
        ]
        for _generation in range(3):
            children = []
            for p0, direction, radius, length in branches:
                direction = direction + rng.normal(0.0, 0.15, 3)
                direction /= np.linalg.norm(direction)
                p1 = p0 + direction * length
                _segment_tube(grid, vessels, p0, p1, max(radius * grid.half[2], min_r))
                for turn in (-0.6, 0.6):
                    perp = np.cross(direction, np.array([0.3, 1.0, 0.2]))
                    perp /= np.linalg.norm(perp) + 1e-9
                    children.append((p1, direction + turn * perp, radius * 0.72, length * 0.65))
            branches = children
    vessels &= lung_any & ~airways
    hu[vessels] = VESSEL_HU

    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[right & ~airways] = RIGHT_LUNG
    lungs[left & ~airways] = LEFT_LUNG
    in_lung = lungs > 0
    if lobe_truth is not None:
        lobe_truth[~in_lung] = 0

    # --- lesions --------------------------------------------------------------------------------
    infection = np.zeros(shape, dtype=np.uint8)
    lesion_list: list[dict[str, Any]] = []
    if lesions:
        edge_mm = 2.0
        for spec in _lesion_specs(rng):
            side = spec["side"]
            wc, vc = spec["w"], spec["v"]
            s = 1.0 if wc <= _LUNG_W0 else math.sqrt(max(1.0 - ((wc - _LUNG_W0) / _LUNG_RW) ** 2, 0.05))
            if spec.get("pleural"):
                # centred on the posterior pleura of the lung's lower part
                uc = side * _LUNG_U
                vc = _LUNG_RV * s
            else:
                uc = side * (_LUNG_U + spec["lat"] * _LUNG_RU * s)
            centre = np.array([wc, vc, uc])
            radius_mm = spec["r"] * grid.half[2]
            sl = grid.box(centre, radius_mm * 1.5)
            bw, bv, bu = grid.norm_axes(sl)
            dist = np.sqrt(
                ((bw - wc) * grid.half[0]) ** 2 + ((bv - vc) * grid.half[1]) ** 2 + ((bu - uc) * grid.half[2]) ** 2
            )
            box_shape = tuple(s_.stop - s_.start for s_ in sl)
            wobble = 1.0 + 0.18 * _smooth_noise(rng, box_shape, 3.0)  # irregular (patchy) outline
            weight = np.clip((radius_mm * wobble - dist) / edge_mm + 0.5, 0.0, 1.0)
            lung_box = in_lung[sl]
            vessel_box = vessels[sl]
            sub = hu[sl]
            truth = infection[sl]
            kind = spec["type"]
            if kind == "GGO" or kind == "mixed":
                inner = GGO_HU + 70.0 * _smooth_noise(rng, box_shape, 2.0)  # patchy density
                paint = lung_box & ~vessel_box
                sub[paint] = (sub * (1 - weight) + inner * weight)[paint]
                truth[paint & (weight >= 0.5)] = GGO
            if kind == "mixed":
                core_r = radius_mm * spec["core"]
                cw = np.clip((core_r * wobble - dist) / edge_mm + 0.5, 0.0, 1.0)
                sub[lung_box] = (sub * (1 - cw) + CONSOLIDATION_HU * cw)[lung_box]
                truth[lung_box & (cw >= 0.5)] = CONSOLIDATION
            if kind == "consolidation":
                sub[lung_box] = (sub * (1 - weight) + DENSE_CONSOLIDATION_HU * weight)[lung_box]
                truth[lung_box & (weight >= 0.5)] = CONSOLIDATION
            lesion_mask = (weight >= 0.5) & lung_box & (truth > 0)
            n_ggo = int(np.count_nonzero(lesion_mask & (truth == GGO)))
            n_con = int(np.count_nonzero(lesion_mask & (truth == CONSOLIDATION)))
            lesion_list.append(
                {
                    "type": kind,
                    "lung": "right" if side < 0 else "left",
                    "centre_norm": [float(c) for c in centre],
                    "centre_voxel": [float(c) for c in grid.to_voxel(centre)],
                    "radius_mm": float(radius_mm),
                    "pleural": bool(spec.get("pleural", False)),
                    "_n_ggo": n_ggo,
                    "_n_con": n_con,
                }
            )

    # --- blur (scanner resolution) and noise ----------------------------------------------------
    hu = ndimage.gaussian_filter(hu, sigma=(0.4, 0.6, 0.6))
    if noise > 0:
        hu += rng.normal(0.0, noise, shape).astype(np.float32)
    hu_i16 = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    image = sitk.GetImageFromArray(hu_i16)
    image.SetSpacing((float(spacing[2]), float(spacing[1]), float(spacing[0])))
    size_mm = np.array([shape[2] * spacing[2], shape[1] * spacing[1], shape[0] * spacing[0]])
    if oblique:
        direction = _rotation(15.0, 10.0)
        image.SetDirection(tuple(float(x) for x in direction.ravel()))
        default_origin = (-120.5, 35.25, -410.0)
    else:
        direction = np.eye(3)
        default_origin = tuple(float(x) for x in (-size_mm / 2.0))
    image.SetOrigin(tuple(float(o) for o in (origin if origin is not None else default_origin)))

    voxel_ml = float(np.prod(spacing)) / 1000.0
    for lesion in lesion_list:
        zc, yc, xc = lesion["centre_voxel"]
        lesion["centre_mm"] = list(image.TransformContinuousIndexToPhysicalPoint((xc, yc, zc)))
        n_ggo, n_con = lesion.pop("_n_ggo"), lesion.pop("_n_con")
        lesion["ggo_ml"] = n_ggo * voxel_ml
        lesion["consolidation_ml"] = n_con * voxel_ml
        lesion["volume_ml"] = (n_ggo + n_con) * voxel_ml

    ct = CTVolume(
        image=image,
        intensity="HU",
        source=f"phantom:seed={seed}",
        modality="CT",
        notes=[
            "Synthetic phantom (not patient data): "
            f"shape={shape}, spacing={tuple(spacing)}, noise={noise} HU, lesions={lesions}, oblique={oblique}"
            + (", fissures=True." if fissures else "."),
            "Right lung at small x indices (patient right = -x in LPS); apex at high z indices.",
        ],
        metadata={"phantom": True, "seed": seed},
    )
    return Phantom(
        ct=ct,
        lungs=lungs,
        infection=infection,
        lesions=lesion_list,
        airways=airways.astype(np.uint8),
        vessels=vessels.astype(np.uint8),
        lobes=lobe_truth,
    )
