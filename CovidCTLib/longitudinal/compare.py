"""Longitudinal comparison: order the time points, register each follow-up to the baseline, map the change.

``compare(inputs, outdir)`` accepts CT scans (anything :func:`CovidCTLib.io.loader.load_ct` reads), earlier
``covidct analyze`` output folders (their lungs.nii.gz / infection.nii.gz are reused and the CT is reloaded
from ``report.json``'s input source), or :class:`TimePoint` objects already in memory. Single 2-D slices
are compared in 2-D (see :mod:`CovidCTLib.longitudinal.quicklungs` for how their lungs are found).

Files written into ``outdir`` (atomically, refused if present unless ``overwrite``): ``compare.json``,
``compare.csv``, ``trend.png``, ``change.nii.gz`` / ``change.seg.nrrd`` (baseline vs the last follow-up; with
more than two time points also ``change_<i>.*`` for each follow-up i), ``transform_<i>.tfm`` (ITK transform
mapping baseline points to follow-up i points, the resampling convention; 3D Slicer loads it as the
follow-up's "transform from parent") and, for volumes, change surfaces ``change_<name>.vtk`` (LPS).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from CovidCTLib.atomic import write_text_atomic, write_with
from CovidCTLib.errors import InputError
from CovidCTLib.io.seg_nrrd import write_label_seg_nrrd
from CovidCTLib.longitudinal import change as chg
from CovidCTLib.longitudinal import registration as regn
from CovidCTLib.longitudinal.trend import trend_rows, write_compare_csv, write_trend_png
from CovidCTLib.privacy import source_name
from CovidCTLib.progress import Reporter
from CovidCTLib.version import DISCLAIMER, __version__
from CovidCTLib.volume import CTVolume, labelmap_like, same_geometry

NOT_ASSESSABLE = "not assessable"


@dataclass
class TimePoint:
    """One scan of the series with its lungs (1 right / 2 left) and infection (1 GGO / 2 consolidation)."""

    ct: CTVolume
    lungs: np.ndarray
    infection: np.ndarray
    label: str
    kind: str = "in-memory"  # "ct", "analysis folder" or "in-memory"
    method: str = "given"
    notes: list[str] = field(default_factory=list)

    @property
    def date(self) -> str | None:
        return self.ct.acquisition_date

    @property
    def is_slice(self) -> bool:
        return not self.ct.is_3d


@dataclass
class CompareResult:
    """Everything a comparison produced; ``timepoints[0]`` is the baseline.

    ``registrations[i]``, ``warped_lungs[i]``, ``warped_infection[i]`` and ``changes[i]`` belong to follow-up
    ``i`` (index 0 holds None); arrays are on the baseline grid (z, y, x).
    """

    timepoints: list[TimePoint]
    order: str
    registrations: list[regn.RegistrationResult | None]
    warped_lungs: list[np.ndarray | None]
    warped_infection: list[np.ndarray | None]
    changes: list[np.ndarray | None]
    report: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def baseline(self) -> TimePoint:
        return self.timepoints[0]

    @property
    def change(self) -> np.ndarray:
        """Change map baseline vs the last follow-up."""
        last = self.changes[-1]
        assert last is not None
        return last


# --------------------------------------------------------------------------------------------- loading
def _read_label(path: Path, ct: CTVolume, what: str) -> np.ndarray:
    image = sitk.ReadImage(str(path))
    if image.GetDimension() == 2 and ct.image.GetDimension() == 3:
        image = sitk.JoinSeries(image)
    if not same_geometry(image, ct.image, tol=1e-3):
        raise InputError(
            f"{path} does not lie on the grid of its CT {ct.source}; re-run `covidct analyze` on that CT or pass "
            "the CT itself to compare."
        )
    array = sitk.GetArrayFromImage(image).astype(np.uint8)
    if array.max(initial=0) > 2:
        raise InputError(f"{path} is not a CovidCT {what} labelmap (values above 2); pass the CT instead.")
    return array


def load_analysis_folder(folder: Path) -> TimePoint:
    """Reuse an earlier ``covidct analyze`` output folder (report.json, lungs.nii.gz, infection.nii.gz)."""
    from CovidCTLib.io.loader import load_checked as load_ct  # issue 12.1 hook: plausibility check

    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        source = report["input"]["source"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"{folder} looks like a CovidCT output folder but its report.json cannot be used ({error}); pass the "
            "CT scan instead."
        ) from error
    if not Path(source).exists() and (folder.parent / source).exists():  # report.json keeps only the basename
        source = str(folder.parent / source)
    if not Path(source).exists():
        raise InputError(
            f"The CT {source} named in {folder / 'report.json'} is not there any more (report.json keeps only the "
            "file name unless --include-identifiers was given); pass the CT itself."
        )
    ct = load_ct(source, require_3d=False)
    lungs = _read_label(folder / "lungs.nii.gz", ct, "lungs")
    infection = _read_label(folder / "infection.nii.gz", ct, "infection")
    return TimePoint(
        ct,
        lungs,
        infection,
        label=folder.name or str(folder),
        kind="analysis folder",
        method=str(report.get("method", "unknown")),
        notes=[f"lungs and infection reused from {folder}"],
    )


def segment_slice(ct: CTVolume) -> tuple[np.ndarray, np.ndarray, str]:
    """Lungs and infection of a single slice (1-slice volume): HU thresholds, or the 8-bit slice segmenter."""
    from CovidCTLib.longitudinal.quicklungs import quick_infection, quick_lungs

    if ct.intensity == "HU":
        lungs = quick_lungs(ct.image)
        return lungs, quick_infection(ct.image, lungs), "2-D HU thresholds (longitudinal.quicklungs)"
    from CovidCTLib.segmentation.registry import make_slice_segmenter
    from CovidCTLib.segmentation.sides import split_at_midline

    segmenter = make_slice_segmenter("classical")
    image = ct.array[0].astype(np.uint8)
    lung_mask = np.asarray(segmenter.segment_images("lung", [image])[0]) > 0
    lungs = split_at_midline(lung_mask[None], ct.image)
    infection = np.asarray(segmenter.segment_images("infection", [image])[0]).astype(np.uint8)
    infection = np.where(lungs[0] > 0, np.minimum(infection, 2), 0).astype(np.uint8)
    return lungs, infection[None], "2-D classical 8-bit slice segmenter"


def load_timepoint(path: str | os.PathLike, method: str = "auto", device: str = "auto") -> TimePoint:
    """A time point from a CT (analysed now) or from an earlier ``analyze`` output folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; give CT scans or `covidct analyze` output folders.")
    if path.is_dir() and (path / "report.json").is_file() and (path / "lungs.nii.gz").is_file():
        return load_analysis_folder(path)
    from CovidCTLib.io.loader import load_checked  # issue 12.1 hook: plausibility check

    ct = load_checked(path, require_3d=False)
    if not ct.is_3d:
        lungs, infection, how = segment_slice(ct)
        return TimePoint(ct, lungs, infection, label=path.name, kind="ct", method=how)
    from CovidCTLib.pipeline import analyze

    result = analyze(ct, method=method, device=device)
    return TimePoint(ct, result.lungs, result.infection, label=path.name, kind="ct", method=result.method)


def order_timepoints(timepoints: list[TimePoint]) -> tuple[list[TimePoint], str]:
    """Sort by acquisition date when every date is known and distinct, else keep the given order."""
    dates = [tp.date for tp in timepoints]
    if all(dates) and len(set(dates)) == len(dates):
        return sorted(timepoints, key=lambda tp: tp.date or ""), "acquisition date (from DICOM)"
    missing = [tp.label for tp in timepoints if not tp.date]
    why = f"dates unknown for {', '.join(missing)}" if missing else "two inputs share a date"
    return list(timepoints), f"as given ({why})"


def _check_same_patient(a: TimePoint, b: TimePoint) -> None:
    ida = a.ct.patient.get("id") or a.ct.patient.get("patient_id")
    idb = b.ct.patient.get("id") or b.ct.patient.get("patient_id")
    if ida and idb and ida != idb:
        raise regn.RegistrationError(
            f"{a.label} and {b.label} have different DICOM patient IDs; a comparison needs scans of the same "
            "patient. Check the inputs."
        )


# ------------------------------------------------------------------------------------------ computing
def _followup_on_baseline(
    base: TimePoint, follow: TimePoint, transform: sitk.Transform
) -> tuple[np.ndarray, np.ndarray]:
    """Follow-up lungs and infection resampled onto the baseline grid (nearest neighbour)."""
    ref = regn.as_registration_image(base.ct.image)
    out = []
    for array in (follow.lungs, follow.infection):
        moving = regn.as_registration_image(labelmap_like(array, follow.ct.image))
        warped = sitk.GetArrayFromImage(regn.warp_labels(moving, ref, transform))
        out.append(warped.reshape(base.lungs.shape).astype(np.uint8))
    return out[0], out[1]


#: a slice with less lung than this (cm^2) is "no lung visible": the body outline drives its registration
MIN_SLICE_LUNG_CM2 = 20.0


def _driver(base: TimePoint, follow: TimePoint) -> tuple[sitk.Image, sitk.Image, tuple[float, float], str | None]:
    """Masks and CT window that drive the registration, and why the lungs cannot be compared (or None)."""
    f_lungs = labelmap_like(base.lungs, base.ct.image)
    m_lungs = labelmap_like(follow.lungs, follow.ct.image)
    if not base.is_slice:
        return f_lungs, m_lungs, regn.LUNG_WINDOW, None
    from CovidCTLib.longitudinal.quicklungs import quick_body

    per, _ = chg.unit_measure(base.ct.image)
    areas = [float((tp.lungs > 0).sum()) * chg.unit_measure(tp.ct.image)[0] for tp in (base, follow)]
    if min(areas) >= MIN_SLICE_LUNG_CM2:
        return f_lungs, m_lungs, regn.LUNG_WINDOW, None
    reason = (
        f"no lung visible in a slice (lung area {areas[0]:.1f} and {areas[1]:.1f} cm2, needs >= "
        f"{MIN_SLICE_LUNG_CM2} cm2 each); registered on the body outline, infection not assessable"
    )
    bodies = [labelmap_like(quick_body(tp.ct.image), tp.ct.image) for tp in (base, follow)]
    return bodies[0], bodies[1], regn.BODY_WINDOW, reason


def run_comparison(
    timepoints: list[TimePoint],
    deformable: bool = False,
    check: bool = True,
    reporter: Reporter | None = None,
    order: str = "as given",
) -> CompareResult:
    """Register every follow-up to ``timepoints[0]`` and compute change maps and numbers (no files).

    With ``check`` a failed plausibility or quality check raises ``RegistrationError``; without it the
    failure is recorded in the report and the verdicts of that follow-up become "not assessable".
    """
    if len(timepoints) < 2:
        raise InputError("compare needs at least two time points (a baseline and a follow-up).")
    slices = {tp.is_slice for tp in timepoints}
    if len(slices) > 1:
        raise InputError("Some inputs are single slices and some are volumes; compare like with like.")
    thresholds = regn.QUALITY_2D if timepoints[0].is_slice else regn.QUALITY_3D
    base = timepoints[0]
    regs: list[regn.RegistrationResult | None] = [None]
    wl: list[np.ndarray | None] = [None]
    wi: list[np.ndarray | None] = [None]
    changes: list[np.ndarray | None] = [None]
    extra: list[dict[str, Any]] = [{}]
    n = len(timepoints) - 1
    for i, follow in enumerate(timepoints[1:], start=1):
        if reporter is not None:
            reporter.stage(
                "register", 0.1 + 0.8 * (i - 1) / n, 0.1 + 0.8 * i / n, f"registering {follow.label} to {base.label}"
            )
        _check_same_patient(base, follow)
        f_mask, m_mask, window, not_assessable = _driver(base, follow)
        info: dict[str, Any] = {"driver": "body outline" if not_assessable else "lungs", "quality_passed": True}
        try:
            info["plausibility"] = regn.check_plausible(f_mask, m_mask, thresholds)
        except regn.RegistrationError as error:
            if check:
                raise
            info.update(quality_passed=False, failure=str(error))
        result = regn.register_followup(
            base.ct.image, f_mask, follow.ct.image, m_mask, deformable=deformable, reporter=reporter, window=window
        )
        try:
            regn.check_quality(result, thresholds)
        except regn.RegistrationError as error:
            if check:
                raise
            info.update(quality_passed=False, failure=info.get("failure") or str(error))
        if not_assessable or not info["quality_passed"]:
            info["not_assessable"] = not_assessable or "registration quality below the thresholds"
        lungs_w, inf_w = _followup_on_baseline(base, follow, result.transform)
        regs.append(result)
        wl.append(lungs_w)
        wi.append(inf_w)
        changes.append(chg.change_map(base.infection, inf_w))
        extra.append(info)
    report = build_report(timepoints, order, regs, changes, extra, thresholds, deformable)
    return CompareResult(timepoints, order, regs, wl, wi, changes, report)


def _lobe_statistics(point: TimePoint) -> list[dict[str, Any]] | None:
    """Per-lobe burden of one time point on its own grid (None for single slices or 8-bit scans)."""
    if point.is_slice or point.ct.intensity != "HU":
        return None
    from CovidCTLib.lobes import lobe_statistics, segment_lobes
    from CovidCTLib.postprocess.stages import DEFAULT_FLOOR

    # the same noise floor as the analysis: a lobe scores 1 from 1 %
    return lobe_statistics(
        point.ct, point.lungs, point.infection, segment_lobes(point.ct, point.lungs), DEFAULT_FLOOR.min_zone_percent
    )


def _lobe_change(
    before: list[dict[str, Any]] | None,
    after: list[dict[str, Any]] | None,
) -> list[dict[str, Any]] | None:
    """Per-lobe change of infection (follow-up minus baseline), None when a time point has no lobes."""
    if before is None or after is None:
        return None
    from CovidCTLib.lobes import lobe_change

    return lobe_change(before, after)


def build_report(
    timepoints: list[TimePoint],
    order: str,
    regs: list[regn.RegistrationResult | None],
    changes: list[np.ndarray | None],
    extra: list[dict[str, Any]],
    thresholds: regn.QualityThresholds,
    deformable: bool,
) -> dict[str, Any]:
    """The content of compare.json."""
    base = timepoints[0]
    numbers = [chg.timepoint_numbers(tp.lungs, tp.infection, tp.ct.image) for tp in timepoints]
    lobes = [_lobe_statistics(tp) for tp in timepoints]
    tps = []
    for i, tp in enumerate(timepoints):
        entry: dict[str, Any] = {
            "index": i,
            "label": tp.label,
            "date": tp.date,
            "source": source_name(tp.ct.source),
            "kind": tp.kind,
            "segmentation_method": tp.method,
            "numbers": numbers[i],
            "lobes": lobes[i],
        }
        if i > 0:
            reg = regs[i]
            assert reg is not None
            entry["registration"] = reg.summary() | extra[i]
            entry["percent_change_points_vs_baseline"] = round(
                numbers[i]["regions"]["total"]["percent"] - numbers[0]["regions"]["total"]["percent"], 3
            )
            entry["verdict_vs_baseline"] = chg.verdict(
                numbers[0]["regions"]["total"]["percent"], numbers[i]["regions"]["total"]["percent"]
            )
            entry["verdict_vs_previous"] = chg.verdict(
                numbers[i - 1]["regions"]["total"]["percent"], numbers[i]["regions"]["total"]["percent"]
            )
            if extra[i].get("not_assessable"):
                entry["verdict_vs_baseline"] = entry["verdict_vs_previous"] = NOT_ASSESSABLE
        tps.append(entry)
    change_entries = []
    for i in range(1, len(timepoints)):
        change = changes[i]
        assert change is not None
        entry = {
            "baseline": 0,
            "followup": i,
            "followup_label": timepoints[i].label,
            "not_assessable": extra[i].get("not_assessable"),
            "change_map_on_baseline_grid": chg.change_numbers(change, base.lungs, base.ct.image),
            "regions_vs_baseline": chg.region_changes(numbers[0], numbers[i]),
            "regions_vs_previous": chg.region_changes(numbers[i - 1], numbers[i]),
            "lobes_vs_baseline": _lobe_change(lobes[0], lobes[i]),
        }
        if entry["not_assessable"]:
            for key in ("regions_vs_baseline", "regions_vs_previous"):
                for region in entry[key].values():
                    region["verdict"] = NOT_ASSESSABLE
        change_entries.append(entry)
    last = change_entries[-1]["regions_vs_baseline"]
    return {
        "kind": "CovidCT longitudinal comparison",
        "disclaimer": DISCLAIMER,
        "note": "research software, not for diagnosis",
        "versions": {"covidct": __version__, "simpleitk": sitk.Version_VersionString()},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dimension": 2 if base.is_slice else 3,
        "inputs": [
            {"index": i, "label": tp.label, "kind": tp.kind, "notes": tp.notes, "ct": tp.ct.identity()}
            for i, tp in enumerate(timepoints)
        ],
        "order": {"by": order, "labels": [tp.label for tp in timepoints], "dates": [tp.date for tp in timepoints]},
        "registration": {
            "method": "lung-mask moments centring, rigid, affine"
            + (", B-spline" if deformable else "")
            + "; Mattes MI on HU clamped to [-1000, 0] inside the baseline lungs dilated by 10 mm; "
            "multi-resolution at 2.5 mm (volumes) / 1.5 mm (slices)",
            "transform_convention": "maps baseline (fixed) LPS points to follow-up points (ITK resampling)",
            "refusal_thresholds": thresholds.as_dict(),
        },
        "change_labels": {str(k): v for k, v in chg.CHANGE_NAMES.items()},
        "verdict_thresholds": chg.VerdictThresholds().as_dict(),
        "slice_lung_minimum_cm2": MIN_SLICE_LUNG_CM2 if base.is_slice else None,
        "percent_definition": "infected part of each region's own lung in that scan's own space "
        "(per-time-point numbers); the change map is measured on the baseline grid",
        "timepoints": tps,
        "changes": change_entries,
        "overall": {name: last[name]["verdict"] for name in ("total", "right", "left") if name in last},
    }


# ------------------------------------------------------------------------------------------- writing
def _output_names(n_followups: int, with_surfaces: bool) -> list[str]:
    names = ["compare.json", "compare.csv", "trend.png", "change.nii.gz", "change.seg.nrrd"]
    names += [f"transform_{i}.tfm" for i in range(1, n_followups + 1)]
    names += [f"timepoint_{i}_{part}.nii.gz" for i in range(n_followups + 1) for part in ("lungs", "infection")]
    if n_followups > 1:
        names += [f"change_{i}{ext}" for i in range(1, n_followups + 1) for ext in (".nii.gz", ".seg.nrrd")]
    if with_surfaces:
        names += [f"change_{name}.vtk" for name in chg.CHANGE_NAMES.values()]
    return names


def _surfaces_available() -> bool:
    try:
        from CovidCTLib.surfaces import labelmap_to_polydata  # noqa: F401
    except ImportError:
        return False
    return True


def _write_surface(mask: np.ndarray, reference: sitk.Image, path: Path, overwrite: bool) -> None:
    import vtk

    from CovidCTLib.surfaces import labelmap_to_polydata

    poly = labelmap_to_polydata(mask, reference, coordinate_system="LPS")

    def _write(tmp: Path) -> None:
        writer = vtk.vtkPolyDataWriter()
        writer.SetFileName(str(tmp))
        writer.SetInputData(poly)
        writer.SetHeader(f"SPACE=LPS CovidCT {__version__} change surface; research software, not for diagnosis")
        writer.SetFileTypeToBinary()
        if not writer.Write():
            raise OSError(f"could not write {path}")

    write_with(path, _write, overwrite=overwrite)


def _write_change(change: np.ndarray, base: TimePoint, stem: str, outdir: Path, overwrite: bool) -> dict[str, Path]:
    image = labelmap_like(change, base.ct.image)
    nii = write_with(outdir / f"{stem}.nii.gz", lambda tmp: sitk.WriteImage(image, str(tmp), True), overwrite)
    segments = [(v, f"{name.capitalize()} infection", chg.CHANGE_COLORS[v]) for v, name in chg.CHANGE_NAMES.items()]
    seg = write_label_seg_nrrd(change, base.ct.image, segments, outdir / f"{stem}.seg.nrrd", overwrite)
    return {f"{stem}_nifti": nii, f"{stem}_seg": seg}


def write_outputs(result: CompareResult, outdir: str | os.PathLike, overwrite: bool = False) -> dict[str, Path]:
    """Write every comparison file as one output set (:mod:`CovidCTLib.outputs.output_set`): OUTDIR holds the
    complete old or the complete new comparison, never a mix."""
    from CovidCTLib.outputs.output_set import check_output_dir, output_set

    outdir = Path(outdir)
    n = len(result.timepoints) - 1
    surfaces = _surfaces_available() and not result.baseline.is_slice
    snapshot = check_output_dir(outdir, overwrite, frozenset(_output_names(n, surfaces)))
    with output_set(outdir, overwrite, snapshot) as staging:
        written = _write_files(result, staging, n, surfaces, overwrite=True)
    result.paths = {key: outdir / path.relative_to(staging) for key, path in written.items()}
    return result.paths


def _write_files(result: CompareResult, outdir: Path, n: int, surfaces: bool, overwrite: bool) -> dict[str, Path]:
    """The comparison's files in ``outdir`` (the staging folder of the output set)."""
    paths: dict[str, Path] = {}
    base = result.baseline
    for i, point in enumerate(result.timepoints):  # each on its own grid: the comparison can be shown from files
        for part, array in (("lungs", point.lungs), ("infection", point.infection)):
            image = labelmap_like(array, point.ct.image)
            paths[f"timepoint_{i}_{part}"] = write_with(
                outdir / f"timepoint_{i}_{part}.nii.gz",
                lambda tmp, im=image: sitk.WriteImage(im, str(tmp), True),
                overwrite,
            )
    for i in range(1, n + 1):
        reg = result.registrations[i]
        change = result.changes[i]
        assert reg is not None and change is not None
        paths[f"transform_{i}"] = write_with(
            outdir / f"transform_{i}.tfm", lambda tmp, t=reg.transform: sitk.WriteTransform(t, str(tmp)), overwrite
        )
        if n > 1:
            paths.update(_write_change(change, base, f"change_{i}", outdir, overwrite))
    paths.update(_write_change(result.change, base, "change", outdir, overwrite))
    if surfaces:
        for value, name in chg.CHANGE_NAMES.items():
            path = outdir / f"change_{name}.vtk"
            _write_surface(result.change == value, base.ct.image, path, overwrite)
            paths[f"surface_{name}"] = path
    rows = trend_rows(result.report["timepoints"])
    paths["csv"] = write_compare_csv(rows, outdir / "compare.csv", overwrite)
    paths["trend"] = write_trend_png(rows, outdir / "trend.png", overwrite)
    result.report["files"] = {key: path.name for key, path in sorted(paths.items())} | {"json": "compare.json"}
    paths["json"] = write_text_atomic(outdir / "compare.json", json.dumps(result.report, indent=2), overwrite)
    return paths


def compare(
    inputs: Sequence[str | os.PathLike | TimePoint],
    outdir: str | os.PathLike | None = None,
    deformable: bool = False,
    method: str = "auto",
    device: str = "auto",
    overwrite: bool = False,
    reporter: Reporter | None = None,
    check: bool = True,
) -> CompareResult:
    """Compare two or more scans of one patient; write the outputs into ``outdir`` when given.

    Inputs are paths (CTs or ``analyze`` output folders) or :class:`TimePoint` objects. They are ordered by
    DICOM acquisition date when every date is known (else as given); the first is the baseline.
    ``check=False`` skips the plausibility and quality refusals (the numbers are still reported).
    Raises :class:`~CovidCTLib.longitudinal.registration.RegistrationError` when the scans cannot be aligned.
    """
    start = time.perf_counter()
    if len(inputs) < 2:
        raise InputError("compare needs at least two inputs: a baseline and a follow-up.")
    if outdir is not None:  # refuse an unusable OUTDIR before the (slow) registration
        from CovidCTLib.outputs.output_set import check_output_dir

        check_output_dir(outdir, overwrite, frozenset(_output_names(len(inputs) - 1, True)))
    timepoints = []
    for k, item in enumerate(inputs):
        if reporter is not None:
            reporter.stage("load", 0.1 * k / len(inputs), 0.1 * (k + 1) / len(inputs), f"loading {item}")
        timepoints.append(item if isinstance(item, TimePoint) else load_timepoint(item, method, device))
    ordered, order = order_timepoints(timepoints)
    result = run_comparison(ordered, deformable=deformable, check=check, reporter=reporter, order=order)
    result.report["seconds"] = round(time.perf_counter() - start, 2)
    if outdir is not None:
        if reporter is not None:
            reporter.stage("write", 0.9, 1.0, "writing outputs")
        write_outputs(result, outdir, overwrite)
    if reporter is not None:
        reporter.update("write", 1.0, "done")
    return result
