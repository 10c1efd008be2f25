"""Synthetic follow-up scans with a known answer (for tests and demonstrations, never for patients).

:func:`make_followup` takes a baseline (CT + lungs + infection, e.g. a :func:`CovidCTLib.phantom.make_phantom`
phantom) and returns a follow-up made by (1) changing the infection in baseline space (grow, shrink,
resolve, add lesions, with CT values painted to match) and (2) resampling everything through a known
transform ``T`` (rigid + optional smooth B-spline deformation). ``T`` maps follow-up points to baseline
points (the resampling convention), so a correct registration ``R`` (baseline -> follow-up) satisfies
``T(R(p)) == p``; :func:`displacement_error_mm` measures exactly that at the baseline lung voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.longitudinal.change import NEW, PERSISTENT, RESOLVED
from CovidCTLib.volume import CTVolume, labelmap_like

GGO_HU = -550.0
PARENCHYMA_HU = -850.0


@dataclass
class SyntheticFollowup:
    """The follow-up time point and its known answer."""

    ct: CTVolume
    lungs: np.ndarray
    infection: np.ndarray
    transform: sitk.Transform  # follow-up point -> baseline point
    truth_change: np.ndarray  # 1 persistent / 2 new / 3 resolved on the baseline grid
    truth_ml: dict[str, float] = field(default_factory=dict)
    edits: list[dict[str, Any]] = field(default_factory=list)


def known_transform(
    reference: sitk.Image,
    rotation_deg: tuple[float, float, float] = (2.0, -2.0, 5.0),
    shift_mm: tuple[float, float, float] = (8.0, -4.0, 3.0),
    deformation_mm: float = 3.0,
    seed: int = 0,
) -> sitk.Transform:
    """Rigid (about the volume centre) then a smooth B-spline on ``reference``'s box.

    The B-spline coefficients are random with standard deviation ``deformation_mm`` (clipped at twice that);
    the resulting displacement averages about half of ``deformation_mm`` inside a chest.
    """
    dim = reference.GetDimension()
    centre = reference.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in reference.GetSize()])
    if dim == 3:
        rigid = sitk.Euler3DTransform(centre, *[float(np.radians(a)) for a in rotation_deg], shift_mm)
    else:
        rigid = sitk.Euler2DTransform(centre, float(np.radians(rotation_deg[-1])), shift_mm[:2])
    composite = sitk.CompositeTransform(dim)
    if deformation_mm > 0:
        bspline = sitk.BSplineTransformInitializer(reference, [4] * dim, order=3)
        rng = np.random.default_rng(seed)
        params = rng.normal(0.0, deformation_mm, len(bspline.GetParameters()))
        bspline.SetParameters(np.clip(params, -2.0 * deformation_mm, 2.0 * deformation_mm).tolist())
        composite.AddTransform(bspline)
    composite.AddTransform(rigid)  # added last = applied first: p -> bspline(rigid(p))
    return composite


def make_followup(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    lesions: list[dict[str, Any]],
    transform: sitk.Transform | None = None,
    grow_mm: float = 4.0,
    shrink_mm: float = 4.0,
    new_radius_mm: float = 12.0,
    noise: float = 20.0,
    seed: int = 1,
) -> SyntheticFollowup:
    """Follow-up with lesion 0 grown by ``grow_mm``, lesion 1 resolved, lesion 2 shrunk by ``shrink_mm``
    and one new ground-glass lesion of ``new_radius_mm``, then resampled through ``transform``."""
    rng = np.random.default_rng(seed)
    hu = ct.array.astype(np.float32)
    spacing = ct.spacing_zyx
    in_lung = lungs > 0
    infected = infection > 0
    labels, _ = ndimage.label(infected)
    new_inf = infection.copy()
    edits: list[dict[str, Any]] = []

    def lesion_mask(k: int) -> np.ndarray:
        z, y, x = (int(round(c)) for c in lesions[k]["centre_voxel"])
        z, y, x = min(z, hu.shape[0] - 1), min(y, hu.shape[1] - 1), min(x, hu.shape[2] - 1)
        lab = labels[z, y, x]
        if lab == 0:  # centre on a spared vessel: take the component nearest the centre
            dist = ndimage.distance_transform_edt(labels == 0, return_indices=True)[1]
            lab = labels[tuple(dist[:, z, y, x])]
        return labels == lab

    def paint(mask: np.ndarray, value: float) -> None:
        hu[mask] = value + rng.normal(0.0, noise, int(mask.sum()))

    def within(mask: np.ndarray, mm: float) -> np.ndarray:
        """Voxels within ``mm`` of ``mask`` (distance transform: fast for any radius)."""
        return ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm

    if len(lesions) > 0 and grow_mm > 0:
        m = lesion_mask(0)
        grown = within(m, grow_mm) & in_lung & ~infected
        paint(grown, GGO_HU)
        new_inf[grown] = 1
        edits.append({"lesion": 0, "edit": "grown", "by_mm": grow_mm})
    if len(lesions) > 1:
        m = lesion_mask(1)
        paint(m, PARENCHYMA_HU)
        new_inf[m] = 0
        edits.append({"lesion": 1, "edit": "resolved"})
    if len(lesions) > 2 and shrink_mm > 0:
        m = lesion_mask(2)
        gone = m & (ndimage.distance_transform_edt(m, sampling=spacing) <= shrink_mm)
        paint(gone, PARENCHYMA_HU)
        new_inf[gone] = 0
        edits.append({"lesion": 2, "edit": "shrunk", "by_mm": shrink_mm})
    if new_radius_mm > 0:
        # centre of the new lesion: the lung voxel farthest from the lung wall and from any infection
        free = in_lung & ~within(infected, new_radius_mm + 10.0)
        depth = ndimage.distance_transform_edt(free, sampling=spacing)
        centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
        seed_mask = np.zeros(hu.shape, bool)
        seed_mask[centre] = True
        ball = within(seed_mask, new_radius_mm) & in_lung
        paint(ball, GGO_HU)
        new_inf[ball] = 1
        edits.append({"edit": "new", "centre_voxel": [int(c) for c in centre], "radius_mm": new_radius_mm})

    truth = np.zeros(hu.shape, np.uint8)
    truth[infected & (new_inf > 0)] = PERSISTENT
    truth[~infected & (new_inf > 0)] = NEW
    truth[infected & (new_inf == 0)] = RESOLVED
    voxel_ml = ct.voxel_volume_ml
    truth_ml = {
        name: float((truth == v).sum()) * voxel_ml
        for v, name in ((PERSISTENT, "persistent"), (NEW, "new"), (RESOLVED, "resolved"))
    }

    if transform is None:
        transform = known_transform(ct.image, seed=seed)
    transform = as_displacement_field(transform, ct.image)
    edited = sitk.GetImageFromArray(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
    edited.CopyInformation(ct.image)
    follow_image = sitk.Resample(edited, ct.image, transform, sitk.sitkLinear, -1000.0, sitk.sitkInt16)
    follow_lungs = sitk.Resample(labelmap_like(lungs, ct.image), ct.image, transform, sitk.sitkNearestNeighbor, 0)
    follow_inf = sitk.Resample(labelmap_like(new_inf, ct.image), ct.image, transform, sitk.sitkNearestNeighbor, 0)
    follow_ct = CTVolume(follow_image, "HU", source=f"{ct.source} (synthetic follow-up)")
    return SyntheticFollowup(
        follow_ct,
        sitk.GetArrayFromImage(follow_lungs),
        sitk.GetArrayFromImage(follow_inf),
        transform,
        truth,
        truth_ml,
        edits,
    )


def as_displacement_field(transform: sitk.Transform, reference: sitk.Image, spacing_mm: float = 3.0) -> sitk.Transform:
    """A deformable ``transform`` sampled once as a displacement field on a <= ``spacing_mm`` grid.

    Resampling a large volume through a B-spline composite is slow; through a sampled field it is fast.
    The field transform is what :func:`make_followup` really applies and returns as the known answer.
    Linear transforms are returned unchanged.
    """
    if isinstance(transform, (sitk.Euler3DTransform, sitk.Euler2DTransform, sitk.AffineTransform)):
        return transform
    from CovidCTLib.longitudinal.registration import resample_to_spacing

    grid = resample_to_spacing(reference, spacing_mm, sitk.sitkNearestNeighbor)
    # pad the grid by two nodes so the field covers the whole reference box
    spacing = np.array(grid.GetSpacing())
    direction = np.array(grid.GetDirection()).reshape(grid.GetDimension(), -1)
    origin = np.array(grid.GetOrigin()) - direction @ (2 * spacing)
    size = [int(n) + 4 for n in grid.GetSize()]
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, size, origin.tolist(), spacing.tolist(), grid.GetDirection()
    )
    return sitk.DisplacementFieldTransform(field)


def displacement_error_mm(
    estimated: sitk.Transform, truth: sitk.Transform, reference: sitk.Image, mask: np.ndarray, step: int = 7
) -> tuple[float, float]:
    """(mean, 95th percentile) of ``|truth(estimated(p)) - p|`` over every ``step``-th voxel of ``mask``."""
    points = np.argwhere(mask)[::step]
    errors = []
    for index in points:
        p = reference.TransformIndexToPhysicalPoint([int(v) for v in index[::-1]])
        q = truth.TransformPoint(estimated.TransformPoint(p))
        errors.append(float(np.linalg.norm(np.subtract(q, p))))
    return float(np.mean(errors)), float(np.percentile(errors, 95))
