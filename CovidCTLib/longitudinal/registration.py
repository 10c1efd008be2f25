"""Lung-driven registration of a follow-up scan onto its baseline (SimpleITK), with quality checks.

Stages (each multi-resolution, on a downsampled copy so that it stays fast on two cores):

1. centring: the follow-up lung mask's centre of mass is moved onto the baseline's (image moments);
2. rigid (Euler, 6 / 3 parameters in 3-D / 2-D);
3. affine (12 / 6 parameters), started from the rigid result;
4. optional deformable B-spline (control points about every 70 mm, fitted at 4 mm), started from the affine
   result.

The metric is Mattes mutual information on the lung-windowed CT (HU clamped to [-1000, 0]) evaluated only
inside the baseline lung mask dilated by 10 mm, so that the lung outline, vessels and the inner chest wall
drive the fit, not the table or the arms. The returned transform maps baseline (fixed) physical points to
follow-up (moving) physical points, the ITK resampling convention: resampling follow-up data with it puts
that data on the baseline grid.

Quality is measured after the fit on a common grid of at most 2 mm: the Dice of the lung masks and the
symmetric mean surface distance (mm). :func:`check_quality` refuses (``RegistrationError``) below the
stated thresholds (:data:`QUALITY_3D`, :data:`QUALITY_2D`). :func:`check_plausible` refuses before
registering when the lung volumes (areas for 2-D slices) or craniocaudal extents differ too much.
2-D inputs (one slice per time point, stored as 1-slice volumes) are registered as 2-D images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from CovidCTLib.errors import AnalysisError
from CovidCTLib.progress import Reporter

#: B-spline control point spacing (mm) of the optional deformable stage
BSPLINE_SPACING_MM = 70.0


class RegistrationError(AnalysisError):
    """The follow-up could not be aligned with the baseline well enough to compare them."""


@dataclass(frozen=True)
class QualityThresholds:
    """Refusal thresholds for one dimensionality (documented in the report)."""

    min_lung_dice: float
    max_msd_mm: float
    max_volume_ratio: float
    max_extent_ratio: float

    def as_dict(self) -> dict[str, float]:
        return {
            "min_lung_dice": self.min_lung_dice,
            "max_mean_surface_distance_mm": self.max_msd_mm,
            "max_lung_volume_ratio": self.max_volume_ratio,
            "max_craniocaudal_extent_ratio": self.max_extent_ratio,
        }


#: 3-D volumes: lung Dice >= 0.80 and mean surface distance <= 5 mm after registration; lung volumes within a
#: factor 2 and craniocaudal lung extents within a factor 1.5 before registration.
QUALITY_3D = QualityThresholds(min_lung_dice=0.80, max_msd_mm=5.0, max_volume_ratio=2.0, max_extent_ratio=1.5)
#: 2-D slices: the two slices are rarely at exactly the same level, so the outline fits less well; lung Dice
#: >= 0.75, surface distance <= 6 mm, lung areas within a factor 2.5 (no craniocaudal check in 2-D).
QUALITY_2D = QualityThresholds(min_lung_dice=0.75, max_msd_mm=6.0, max_volume_ratio=2.5, max_extent_ratio=np.inf)


@dataclass
class RegistrationResult:
    """A fitted follow-up-to-baseline registration and its measured quality.

    ``transform`` maps baseline physical points (LPS mm) to follow-up physical points; ``rigid`` is the
    rigid stage alone. ``dimension`` is 2 for single slices (the transforms are then 2-D).
    """

    transform: sitk.Transform
    rigid: sitk.Transform
    dimension: int
    deformable: bool
    lung_dice: float
    lung_dice_per_side: dict[str, float]
    mean_surface_distance_mm: float
    stages: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (quality, rigid rotation/translation, stages)."""
        params = self.rigid.GetParameters()
        dim = self.dimension
        if dim == 3:
            angles = [float(np.degrees(a)) for a in params[:3]]
            shift = list(params[3:6])
        else:
            angles = [float(np.degrees(params[0]))]
            shift = list(params[1:3])
        return {
            "dimension": dim,
            "stages": self.stages,
            "deformable": self.deformable,
            "lung_dice": round(self.lung_dice, 4),
            "lung_dice_per_side": {k: round(v, 4) for k, v in self.lung_dice_per_side.items()},
            "mean_surface_distance_mm": round(self.mean_surface_distance_mm, 3),
            "rigid_rotation_deg": [round(a, 3) for a in angles],
            "rigid_translation_mm": [round(float(s), 3) for s in shift],
            "seconds": round(self.seconds, 2),
        }


# ----------------------------------------------------------------------------------------------- helpers
def as_registration_image(image: sitk.Image) -> sitk.Image:
    """A 1-slice 3-D volume becomes a 2-D image (same in-plane geometry); other images are returned as is."""
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        return image[:, :, 0]
    return image


LUNG_WINDOW = (-1000.0, 0.0)
#: used when a slice shows no lung and the body outline drives the registration (2-D only)
BODY_WINDOW = (-200.0, 300.0)


def lung_window(ct: sitk.Image, window: tuple[float, float] = LUNG_WINDOW) -> sitk.Image:
    """Float CT clamped to ``window`` (default [-1000, 0] HU: lung parenchyma, vessels and lung wall)."""
    return sitk.Clamp(sitk.Cast(ct, sitk.sitkFloat32), sitk.sitkFloat32, window[0], window[1])


def resample_to_spacing(image: sitk.Image, spacing: float, interpolator: int, default: float = 0.0) -> sitk.Image:
    """Resample onto the same box with spacing ``max(original, spacing)`` per axis (smoothing first if linear)."""
    old = np.array(image.GetSpacing(), float)
    new = np.maximum(old, spacing)
    if np.allclose(new, old):
        return image
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old / new)).astype(int)
    if interpolator != sitk.sitkNearestNeighbor:
        sigma = [max(float(n * n - o * o) ** 0.5 / 2.0, 0.01 * o) for n, o in zip(new, old, strict=True)]
        image = sitk.SmoothingRecursiveGaussian(image, sigma)
    # keep the box centre: shift the origin by half the spacing change along each axis
    direction = np.array(image.GetDirection()).reshape(image.GetDimension(), image.GetDimension())
    origin = np.array(image.GetOrigin()) + direction @ ((new - old) / 2.0)
    return sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        interpolator,
        origin.tolist(),
        new.tolist(),
        image.GetDirection(),
        default,
        image.GetPixelID(),
    )


def warp_labels(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Nearest-neighbour resampling of a follow-up labelmap onto the baseline grid (uint8)."""
    return sitk.Resample(moving, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def warp_image(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform, default: float) -> sitk.Image:
    """Linear resampling of a follow-up CT onto the baseline grid (float32)."""
    return sitk.Resample(
        sitk.Cast(moving, sitk.sitkFloat32), reference, transform, sitk.sitkLinear, default, sitk.sitkFloat32
    )


def _mask_stats(mask: sitk.Image) -> tuple[float, float]:
    """(measure, craniocaudal extent mm): volume in mL (area in cm2 for 2-D) and the z extent (0 in 2-D)."""
    arr = sitk.GetArrayFromImage(mask) > 0
    spacing = mask.GetSpacing()
    count = float(arr.sum())
    if mask.GetDimension() == 2:
        return count * spacing[0] * spacing[1] / 100.0, 0.0
    zs = np.nonzero(arr.any(axis=(1, 2)))[0]
    extent = float((zs.max() - zs.min() + 1) * spacing[2]) if zs.size else 0.0
    return count * spacing[0] * spacing[1] * spacing[2] / 1000.0, extent


def check_plausible(fixed_lungs: sitk.Image, moving_lungs: sitk.Image, thresholds: QualityThresholds) -> dict:
    """Refuse pairs whose lungs are implausibly different before spending time on registration."""
    fixed_lungs, moving_lungs = as_registration_image(fixed_lungs), as_registration_image(moving_lungs)
    fv, fe = _mask_stats(fixed_lungs)
    mv, me = _mask_stats(moving_lungs)
    unit = "cm2" if fixed_lungs.GetDimension() == 2 else "mL"
    if fv <= 0 or mv <= 0:
        raise RegistrationError(
            "No lung was found in the baseline or the follow-up, so they cannot be registered; check that both "
            "inputs are chest CT scans that include the lungs."
        )
    ratio = max(fv, mv) / min(fv, mv)
    info = {"baseline_lung": round(fv, 2), "followup_lung": round(mv, 2), "unit": unit, "ratio": round(ratio, 3)}
    if ratio > thresholds.max_volume_ratio:
        raise RegistrationError(
            f"The lung {'areas' if unit == 'cm2' else 'volumes'} differ implausibly (baseline {fv:.1f} {unit}, "
            f"follow-up {mv:.1f} {unit}, ratio {ratio:.2f} > {thresholds.max_volume_ratio}): the scans may be of "
            "different patients or one is a partial scan. Check the inputs; the comparison was not made."
        )
    if fe > 0 and me > 0:
        eratio = max(fe, me) / min(fe, me)
        info.update(
            {"baseline_extent_mm": round(fe, 1), "followup_extent_mm": round(me, 1), "extent_ratio": round(eratio, 3)}
        )
        if eratio > thresholds.max_extent_ratio:
            raise RegistrationError(
                f"The craniocaudal lung extents differ implausibly (baseline {fe:.0f} mm, follow-up {me:.0f} mm, "
                f"ratio {eratio:.2f} > {thresholds.max_extent_ratio}): one scan is probably partial (does not "
                "cover the whole chest) or they are of different patients. The comparison was not made."
            )
    return info


def mask_overlap(a: sitk.Image, b: sitk.Image) -> tuple[float, float]:
    """(Dice, symmetric mean surface distance in mm) of two binary masks on the same grid."""
    a = sitk.Cast(a > 0, sitk.sitkUInt8)
    b = sitk.Cast(b > 0, sitk.sitkUInt8)
    aa = sitk.GetArrayFromImage(a).astype(bool)
    bb = sitk.GetArrayFromImage(b).astype(bool)
    total = aa.sum() + bb.sum()
    dice = 2.0 * float((aa & bb).sum()) / float(total) if total else 1.0
    if not aa.any() or not bb.any():
        return dice, float("inf")
    dist_a = sitk.GetArrayFromImage(sitk.Abs(sitk.SignedMaurerDistanceMap(a, False, False, True)))
    dist_b = sitk.GetArrayFromImage(sitk.Abs(sitk.SignedMaurerDistanceMap(b, False, False, True)))
    surf_a = sitk.GetArrayFromImage(sitk.LabelContour(a)) > 0
    surf_b = sitk.GetArrayFromImage(sitk.LabelContour(b)) > 0
    total_distance = dist_b[surf_a].astype(np.float64).sum() + dist_a[surf_b].astype(np.float64).sum()
    msd = float(total_distance) / float(surf_a.sum() + surf_b.sum())
    return dice, (msd if np.isfinite(msd) and msd >= 0 else float("inf"))


def registration_quality(
    fixed_lungs: sitk.Image, moving_lungs: sitk.Image, transform: sitk.Transform
) -> tuple[float, dict[str, float], float]:
    """Lung Dice (all, per side) and mean surface distance after registration, on a grid of at most 2 mm."""
    fixed_lungs, moving_lungs = as_registration_image(fixed_lungs), as_registration_image(moving_lungs)
    grid = resample_to_spacing(fixed_lungs, 2.0, sitk.sitkNearestNeighbor)
    warped = warp_labels(moving_lungs, grid, transform)
    dice, msd = mask_overlap(grid > 0, warped > 0)
    per_side = {}
    for label, name in ((1, "right"), (2, "left")):
        g = sitk.GetArrayFromImage(grid) == label
        w = sitk.GetArrayFromImage(warped) == label
        if g.any() or w.any():
            per_side[name] = 2.0 * float((g & w).sum()) / float(g.sum() + w.sum())
    return dice, per_side, msd


def check_quality(result: RegistrationResult, thresholds: QualityThresholds) -> None:
    """Raise :class:`RegistrationError` when the registration is not good enough to compare the scans."""
    if result.lung_dice < thresholds.min_lung_dice or result.mean_surface_distance_mm > thresholds.max_msd_mm:
        raise RegistrationError(
            f"Registration failed: after alignment the lung Dice is {result.lung_dice:.3f} (needs >= "
            f"{thresholds.min_lung_dice}) and the mean lung surface distance {result.mean_surface_distance_mm:.1f} mm "
            f"(needs <= {thresholds.max_msd_mm} mm). The scans may be of different patients or one is a "
            "partial scan; check the inputs (or try --deformable for large breathing differences)."
        )


# ------------------------------------------------------------------------------------------ registration
def _method(
    fixed_mask: sitk.Image, shrink: list[int], smooth: list[float], sampling: float = 0.25, seed: int = 7
) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=40)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed)
    reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(smooth)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def _stage(
    name: str,
    reg: sitk.ImageRegistrationMethod,
    fixed: sitk.Image,
    moving: sitk.Image,
    reporter: Reporter | None,
    fraction: float,
) -> dict[str, Any]:
    if reporter is not None:
        reporter.update("register", fraction, f"registration: {name}")
    start = time.perf_counter()
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as error:  # issue 12.10: e.g. "Zero-valued spacing" on a blank image
        reason = (str(error).strip().splitlines() or ["unknown"])[-1][:160]
        raise RegistrationError(
            f"Registration ({name}) could not run on these scans ({reason}); one of them is probably blank or not "
            "a chest CT. Check every input."
        ) from error
    return {
        "stage": name,
        "metric": round(float(reg.GetMetricValue()), 5),
        "iterations": int(reg.GetOptimizerIteration()),
        "stop": reg.GetOptimizerStopConditionDescription()[:160],
        "seconds": round(time.perf_counter() - start, 2),
    }


def register_followup(
    fixed_ct: sitk.Image,
    fixed_lungs: sitk.Image,
    moving_ct: sitk.Image,
    moving_lungs: sitk.Image,
    deformable: bool = False,
    spacing_mm: float | None = None,
    reporter: Reporter | None = None,
    window: tuple[float, float] = LUNG_WINDOW,
) -> RegistrationResult:
    """Register the follow-up (moving) onto the baseline (fixed); 1-slice volumes are registered in 2-D.

    ``spacing_mm`` is the working resolution (default 2.5 mm in 3-D, 1.5 mm in 2-D). The quality is
    measured but not checked: call :func:`check_quality` to refuse poor fits. ``fixed_lungs`` /
    ``moving_lungs`` are the driving masks (lungs; the body outline for slices without lung, with
    ``window=BODY_WINDOW``).
    """
    start = time.perf_counter()
    f_ct, m_ct = as_registration_image(fixed_ct), as_registration_image(moving_ct)
    f_lu, m_lu = as_registration_image(fixed_lungs), as_registration_image(moving_lungs)
    dim = f_ct.GetDimension()
    if m_ct.GetDimension() != dim:
        raise RegistrationError(
            "One input is a single slice and the other a volume; compare slices with slices and volumes with volumes."
        )
    spacing = spacing_mm or (2.5 if dim == 3 else 1.5)
    fixed = resample_to_spacing(lung_window(f_ct, window), spacing, sitk.sitkLinear, window[0])
    moving = resample_to_spacing(lung_window(m_ct, window), spacing, sitk.sitkLinear, window[0])
    f_mask_lr = resample_to_spacing(sitk.Cast(f_lu > 0, sitk.sitkUInt8), spacing, sitk.sitkNearestNeighbor)
    m_mask_lr = resample_to_spacing(sitk.Cast(m_lu > 0, sitk.sitkUInt8), spacing, sitk.sitkNearestNeighbor)
    radius = [max(1, int(round(10.0 / s))) for s in f_mask_lr.GetSpacing()]
    fixed_mask = sitk.BinaryDilate(f_mask_lr, radius)
    stages: list[dict[str, Any]] = []

    # 1. centre by lung-mask moments
    rigid: sitk.Transform = sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()
    rigid = sitk.CenteredTransformInitializer(
        sitk.Cast(f_mask_lr, sitk.sitkFloat32),
        sitk.Cast(m_mask_lr, sitk.sitkFloat32),
        rigid,
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    stages.append({"stage": "moments", "translation_mm": [round(t, 3) for t in rigid.GetTranslation()]})

    # 2. rigid
    reg = _method(fixed_mask, [4, 2, 1], [2.0, 1.0, 0.0])
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=4.0,
        minStep=0.01,
        numberOfIterations=120,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(rigid, inPlace=True)
    stages.append(_stage("rigid", reg, fixed, moving, reporter, 0.1))
    rigid = sitk.Euler3DTransform(rigid) if dim == 3 else sitk.Euler2DTransform(rigid)

    # 3. affine from the rigid result
    affine = sitk.AffineTransform(dim)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    reg = _method(fixed_mask, [2, 1], [1.0, 0.0])
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=0.005,
        numberOfIterations=100,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(affine, inPlace=True)
    stages.append(_stage("affine", reg, fixed, moving, reporter, 0.4))
    final: sitk.Transform = sitk.AffineTransform(affine)

    # 4. optional B-spline on top of the affine, at a coarser working resolution (speed on two cores)
    if deformable:
        coarse = max(spacing, 4.0)
        fixed_c = resample_to_spacing(fixed, coarse, sitk.sitkLinear, window[0])
        moving_c = resample_to_spacing(moving, coarse, sitk.sitkLinear, window[0])
        mask_c = sitk.Resample(fixed_mask, fixed_c, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        extent = np.array(fixed_c.GetSize()) * np.array(fixed_c.GetSpacing())
        mesh = [int(max(2, round(e / BSPLINE_SPACING_MM))) for e in extent]
        bspline = sitk.BSplineTransformInitializer(fixed_c, mesh, order=3)
        reg = _method(mask_c, [2, 1], [1.0, 0.0], sampling=0.15)
        reg.SetOptimizerAsLBFGSB(
            gradientConvergenceTolerance=1e-5,
            numberOfIterations=30,
            maximumNumberOfCorrections=5,
            maximumNumberOfFunctionEvaluations=60,
        )
        reg.SetMovingInitialTransform(affine)
        reg.SetInitialTransform(bspline, inPlace=True)
        stages.append(_stage(f"bspline mesh {mesh}", reg, fixed_c, moving_c, reporter, 0.7))
        composite = sitk.CompositeTransform(dim)
        composite.AddTransform(sitk.AffineTransform(affine))
        composite.AddTransform(bspline)  # applied first: p -> affine(bspline(p))
        final = composite

    if reporter is not None:
        reporter.update("register", 0.95, "registration quality")
    dice, per_side, msd = registration_quality(f_lu, m_lu, final)
    return RegistrationResult(
        transform=final,
        rigid=rigid,
        dimension=dim,
        deformable=deformable,
        lung_dice=dice,
        lung_dice_per_side=per_side,
        mean_surface_distance_mm=msd,
        stages=stages,
        seconds=time.perf_counter() - start,
    )
