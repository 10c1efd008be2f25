"""The analysis pipeline: one CT in, lungs + infection + classification + numbers out.

``analyze`` runs :data:`STAGES` (load, harmonise, lungs, infection, infection_gating, classify, explain,
quantify, assessment, lobes, anatomy; progress from their weights)
and returns an :class:`~CovidCTLib.results.AnalysisResult`; ``write_outputs`` writes its files.
The segmenters come from :mod:`CovidCTLib.segmentation.registry`.
The trained models are used when installed (``method="auto"``), the classical HU method otherwise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from CovidCTLib.errors import AnalysisError, CovidCTError, NotCTError
from CovidCTLib.fallbacks import classifier_fallback, segmentation_fallback
from CovidCTLib.models.runtime.device import DEVICES
from CovidCTLib.progress import Reporter
from CovidCTLib.results import AnalysisResult
from CovidCTLib.segmentation.registry import (
    METHODS,
    Segmenters,
    make_segmenters,
    trained_segmentation_available,
)
from CovidCTLib.volume import CTVolume

#: Smallest plausible lung volume (mL) below which the result is refused as "no lung found".
MIN_LUNG_ML = 50.0


def segmentation_models_available() -> bool:
    """True when the trained lung and infection models are installed and verify."""
    return trained_segmentation_available()


def classifier_available() -> bool:
    """True when the trained COVID classifier is installed and verifies."""
    from CovidCTLib.models.runtime.classifier_inference import classifier_available as available

    return bool(available())


@dataclass
class AnalysisState:
    """What the stages of one analysis have produced so far."""

    source: str | os.PathLike | CTVolume
    method: str
    device: str
    classify: bool
    infection_thresholds: Any | None
    reporter: Reporter
    harmonise_kernel: bool = True
    ct: CTVolume | None = None  # the CT the stages analyse (kernel-harmonised when its kernel is sharp)
    original_ct: CTVolume | None = None  # the CT as loaded: what the result and its pictures show
    segmenters: Segmenters | None = None
    lungs: np.ndarray | None = None
    infection: np.ndarray | None = None
    scan: Any | None = None  # the classifier's ScanClassification
    lobes: np.ndarray | None = None
    peripheral: Any | None = None  # the outer-third map (anatomy.peripheral), shared by assessment and anatomy
    gating: dict[str, Any] = field(default_factory=dict)  # what the HU gate removed (issue 13)
    harmonisation: dict[str, Any] = field(default_factory=dict)  # the kernel harmonisation (issue 13)
    assessment: dict[str, Any] = field(default_factory=dict)  # the scan-level COVID assessment
    numbers: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)  # every fallback, stated (notes, console, panel)
    explain: bool = True  # Grad-CAM heatmap and top slices of the classifier (issue 16.2)
    top_k: int = 5
    heatmap: np.ndarray | None = None
    explanation: dict[str, Any] | None = None


@dataclass(frozen=True)
class Stage:
    """One step of the analysis: its name, its share of the progress bar, its message and its work."""

    name: str
    weight: float
    message: str
    run: Callable[[AnalysisState], None]


def _stage_load(state: AnalysisState) -> None:
    state.ct = _load(state.source, state.reporter)
    if not state.ct.is_3d:
        raise NotCTError(
            f"{state.ct.source} is a 2-D image; `covidct analyze` needs a 3-D chest CT. "
            "Use `covidct segment-slices` or `covidct classify` for 2-D images."
        )
    state.segmenters = make_segmenters(state.method, state.device, infection_thresholds=state.infection_thresholds)
    fallback = segmentation_fallback(state.method, state.segmenters.method)  # issue 12: never silent
    if fallback:
        state.fallbacks.append(fallback)
    if state.segmenters.method == "classical" and state.ct.intensity != "HU":
        raise NotCTError(
            f"{state.ct.source} is not in Hounsfield units (8-bit intensities); the classical method needs HU. "
            "Use the original DICOM/NIfTI in HU, or --method model with trained models installed."
        )


def _stage_harmonise(state: AnalysisState) -> None:
    """Smooth a sharp-kernel HU volume to a standard kernel's texture (kept: the original, for the result)."""
    from CovidCTLib.imaging.kernel import KernelHarmonisation, harmonisation_note, harmonise_kernel

    state.original_ct = state.ct
    state.ct, state.harmonisation = harmonise_kernel(state.ct, KernelHarmonisation(enabled=state.harmonise_kernel))
    note = harmonisation_note(state.harmonisation)
    if note:
        state.notes.append(note)


def _stage_lungs(state: AnalysisState) -> None:
    state.lungs = state.segmenters.lungs.segment(state.ct, reporter=state.reporter).astype(np.uint8)
    _check_lungs(state.ct, state.lungs)


def _stage_infection(state: AnalysisState) -> None:
    infection = state.segmenters.infection.segment(state.ct, state.lungs, reporter=state.reporter)
    state.infection = np.where(state.lungs > 0, infection, 0).astype(np.uint8)


def _stage_gating(state: AnalysisState) -> None:
    from CovidCTLib.postprocess.stages import clean_infection

    state.infection, state.gating = clean_infection(state.ct, state.lungs, state.infection, state.segmenters.method)


def _stage_classify(state: AnalysisState) -> None:
    if not (state.classify and classifier_available()):
        fallback = classifier_fallback(state.classify)
        if fallback:
            state.fallbacks.append(fallback)
        state.notes.append(
            "No COVID classifier ran (none installed or disabled): covid_probability is the "
            "assessment's category prior."
        )
        return
    from CovidCTLib.models.runtime.classifier_inference import classify_scan

    state.scan = classify_scan(
        state.ct, state.lungs, device=state.device, reporter=state.reporter, explain=state.explain
    )


def _stage_explain(state: AnalysisState) -> None:
    """Issue 16.2 hook: the heatmap and the ``explanation`` section (:mod:`CovidCTLib.explain`)."""
    if not state.explain or state.scan is None:
        return
    from CovidCTLib.explain.hooks import explain_classification

    state.heatmap, state.explanation = explain_classification(
        state.ct, state.lungs, state.infection, state.scan, state.top_k
    )


def _stage_quantify(state: AnalysisState) -> None:
    from CovidCTLib.postprocess.stages import DEFAULT_FLOOR
    from CovidCTLib.quantify import quantify

    state.numbers = quantify(state.ct, state.lungs, state.infection, min_lesion_ml=DEFAULT_FLOOR.min_lesion_ml)


def _stage_assessment(state: AnalysisState) -> None:
    """Zone noise floor and the scan-level COVID assessment (its probability is the top-level one)."""
    from CovidCTLib.anatomy.peripheral import peripheral_mask
    from CovidCTLib.io.notices import warning
    from CovidCTLib.postprocess.masses import mass_note
    from CovidCTLib.postprocess.stages import score_scan

    probability = None if state.scan is None else float(state.scan.probability)
    state.peripheral = peripheral_mask(state.ct, state.lungs)
    masses = state.gating.get("mass_like_lesions") or []
    state.numbers, state.assessment = score_scan(
        state.ct, state.lungs, state.infection, state.numbers, probability, peripheral=state.peripheral, masses=masses
    )
    if masses:  # a warning: also printed on the console and listed in the done event
        state.notes.append(warning(mass_note(masses)))
    state.numbers["infection_gating"] = state.gating
    state.numbers["kernel_harmonisation"] = state.harmonisation
    state.numbers["covid_assessment"] = state.assessment


def _stage_lobes(state: AnalysisState) -> None:
    from CovidCTLib.lobes.hooks import analyze_lobes
    from CovidCTLib.postprocess.stages import DEFAULT_FLOOR

    # the zones' noise floor applies to the lobes too: a lobe scores 1 only from 1 %
    state.lobes, lobe_numbers = analyze_lobes(
        state.ct, state.lungs, state.infection, state.reporter, min_percent=DEFAULT_FLOOR.min_zone_percent
    )
    state.numbers.update(lobe_numbers)


def _stage_anatomy(state: AnalysisState) -> None:
    """Issue 14: peripheral vs central involvement per lung and lobe, and the landmark zones."""
    from CovidCTLib.anatomy.hooks import analyze_anatomy
    from CovidCTLib.postprocess.stages import DEFAULT_FLOOR

    state.numbers.update(
        analyze_anatomy(
            state.ct,
            state.lungs,
            state.infection,
            state.lobes,
            state.peripheral,
            min_percent=DEFAULT_FLOOR.min_zone_percent,
        )
    )
    if state.numbers["anatomical_zones"].get("fallback"):
        state.notes.append(state.numbers["anatomical_zones"]["fallback"])


#: the analysis, in order; progress fractions come from the weights (measured share of the run time)
STAGES: tuple[Stage, ...] = (
    Stage("load", 10, "Reading the CT", _stage_load),
    Stage("harmonise", 1, "Checking the reconstruction kernel", _stage_harmonise),
    Stage("lungs", 35, "Segmenting the lungs", _stage_lungs),
    Stage("infection", 25, "Segmenting infection", _stage_infection),
    Stage("infection_gating", 3, "Checking infection against CT densities", _stage_gating),
    Stage("classify", 15, "Classifying COVID vs non-COVID", _stage_classify),
    Stage("explain", 3, "Explaining the COVID score (Grad-CAM heatmap)", _stage_explain),
    Stage("quantify", 12, "Measuring volumes, zones and lesions", _stage_quantify),
    Stage("assessment", 2, "Scan-level COVID assessment", _stage_assessment),
    Stage("lobes", 4, "Segmenting the lobes", _stage_lobes),
    Stage("anatomy", 2, "Anatomical zones and peripheral involvement", _stage_anatomy),
)


def run_stages(state: AnalysisState, stages: tuple[Stage, ...] = STAGES) -> dict[str, float]:
    """Run ``stages`` on ``state``; progress spans 0..0.97 by weight. Returns seconds per stage."""
    total = sum(stage.weight for stage in stages) / 0.97
    timings: dict[str, float] = {}
    done = 0.0
    for stage in stages:
        state.reporter.stage(stage.name, done / total, (done + stage.weight) / total, stage.message)
        t0 = time.perf_counter()
        stage.run(state)
        timings[stage.name] = time.perf_counter() - t0
        done += stage.weight
    return timings


def _load(source: str | os.PathLike | CTVolume, reporter: Reporter) -> CTVolume:
    # issue 12.1 hook: refuse what cannot be a chest CT before any analysis (CovidCTLib.io.plausibility)
    from CovidCTLib.io.loader import load_checked
    from CovidCTLib.io.plausibility import check_plausible

    if isinstance(source, CTVolume):
        return check_plausible(source)
    return load_checked(source, require_3d=True, reporter=reporter)


def analyze(
    source: str | os.PathLike | CTVolume,
    method: str = "auto",
    device: str = "auto",
    reporter: Reporter | None = None,
    classify: bool = True,
    infection_thresholds: Any | None = None,
    harmonise_kernel: bool = True,
    explain: bool = True,
    top_slices: int = 5,
) -> AnalysisResult:
    """Analyse one chest CT volume.

    Args:
        source: a path any loader input accepts, or an already loaded :class:`CTVolume`.
        method: ``auto`` (models when installed, else classical), ``classical`` or ``model``.
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda`` (models only).
        reporter: progress/cancellation reporter.
        classify: run the COVID classifier when one is installed.
        infection_thresholds: :class:`CovidCTLib.classical.infection.InfectionThresholds` (classical only).
        harmonise_kernel: smooth a sharp-kernel HU volume to a standard kernel's lung texture first
            (:mod:`CovidCTLib.imaging.kernel`); stated in report.json ``kernel_harmonisation``.
        explain: compute the classifier's Grad-CAM heatmap and report.json ``explanation`` (when it runs).
        top_slices: how many top slices the explanation lists.
    """
    if device not in DEVICES:
        raise CovidCTError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
    if method not in METHODS:
        raise CovidCTError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    reporter = reporter or Reporter()
    started = time.perf_counter()
    if top_slices < 1:
        raise CovidCTError(f"--top-slices must be at least 1, not {top_slices}.")
    state = AnalysisState(
        source,
        method,
        device,
        classify,
        infection_thresholds,
        reporter,
        harmonise_kernel=harmonise_kernel,
        explain=explain,
        top_k=int(top_slices),
    )
    timings = run_stages(state)
    timings["total"] = time.perf_counter() - started
    ct, scan = state.original_ct or state.ct, state.scan
    model_versions: dict[str, str] = {}
    model_versions.update(state.segmenters.lungs.versions())
    model_versions.update(state.segmenters.infection.versions())
    covid_probability, classification, slice_probabilities = None, None, {}
    if scan is not None:
        covid_probability = float(scan.probability)
        slice_probabilities = dict(scan.slice_probabilities)
        classification = {
            "probability_mean": round(float(scan.probability), 4),
            "probability_top_k_mean": round(float(scan.top_k_mean), 4),
            "pooling": f"mean over the scored axial slices ({scan.scored_slices}); top-k mean also given",
            "n_slices": int(scan.n_slices),
            "model": scan.model_name,
            "model_version": scan.model_version,
            "meaning": "Model output for COVID-19 pneumonia pattern; research use only, not a diagnosis.",
        }
        model_versions["classifier"] = f"{scan.model_name} {scan.model_version}"

    from CovidCTLib.report.report_json import build_report

    if state.assessment:  # issue 13: the assessment's calibrated probability is the top-level one
        covid_probability = state.assessment["probability"]
    notes = list(ct.notes) + state.fallbacks + state.notes
    resolved = state.segmenters.method
    report = build_report(
        ct.identity(), state.numbers, resolved, model_versions, timings, covid_probability, classification, notes
    )
    report["fallbacks"] = list(state.fallbacks)  # also in notes; the console and the Slicer panel show them
    report["explanation"] = state.explanation  # issue 16.2: None when no classifier ran or explain is off
    reporter.stage("done", 1.0, 1.0, "Analysis finished")
    return AnalysisResult(
        ct=ct,
        lungs=state.lungs,
        infection=state.infection,
        report=report,
        covid_probability=covid_probability,
        slice_probabilities=slice_probabilities,
        method=resolved,
        model_versions=model_versions,
        lobes=state.lobes,
        heatmap=state.heatmap,
    )


def _check_lungs(ct: CTVolume, lungs: np.ndarray) -> None:
    """Refuse results with no plausible lung: the input is probably not a chest CT."""
    lung_ml = float(np.count_nonzero(lungs)) * ct.voxel_volume_ml
    if lung_ml < MIN_LUNG_ML:
        raise AnalysisError(
            f"No lung found in {ct.source} ({lung_ml:.1f} mL of lung tissue). Check that the input is "
            "a chest CT covering the lungs, in Hounsfield units, not a cropped region."
        )


def write_outputs(
    result: AnalysisResult,
    outdir: str | os.PathLike,
    overwrite: bool = False,
    reports: bool = True,
    dicom_seg: bool = True,
    surfaces: str | None = None,
    points_csv: bool = False,
    include_identifiers: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Path]:
    """Write every output file of one analysis as one output set (:func:`CovidCTLib.outputs.registry.write_outputs`)."""
    from CovidCTLib.outputs.base import OutputOptions
    from CovidCTLib.outputs.registry import write_outputs as write_set

    options = OutputOptions(reports, dicom_seg, surfaces, points_csv, include_identifiers)
    return write_set(result, outdir, overwrite, options, reporter)
