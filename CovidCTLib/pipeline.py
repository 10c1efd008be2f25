"""The analysis pipeline: one CT in, lungs + infection + classification + numbers out.

``analyze`` computes an :class:`~CovidCTLib.results.AnalysisResult`; ``write_outputs`` writes its files.
The trained models are used when installed (``method="auto"``), the classical HU method otherwise.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from CovidCTLib.atomic import check_writable
from CovidCTLib.errors import AnalysisError, CovidCTError, ModelError, NotCTError
from CovidCTLib.progress import Reporter
from CovidCTLib.results import AnalysisResult
from CovidCTLib.volume import CTVolume

METHODS = ("auto", "classical", "model")
DEVICES = ("auto", "cpu", "cuda")

#: Smallest plausible lung volume (mL) below which the result is refused as "no lung found".
MIN_LUNG_ML = 50.0


def _optional_module(name: str) -> Any | None:
    """Import an optional engine part (trained models); None when that part is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if error.name and not name.startswith(error.name) and error.name not in name:
            raise  # the module exists but one of its own imports is broken: do not hide that
        return None


def segmentation_models_available() -> bool:
    """True when the trained lung and infection models are installed and loadable."""
    inference = _optional_module("CovidCTLib.models.inference")
    if inference is None:
        return False
    try:
        available = inference.models_available()
    except Exception:  # noqa: BLE001 - torch missing or a broken install: fall back to classical
        return False
    return bool(available.get("lung")) and bool(available.get("infection"))


def classifier_available() -> bool:
    """True when the trained COVID classifier is installed and loadable."""
    module = _optional_module("CovidCTLib.models.classifier_inference")
    if module is None or not hasattr(module, "classifier_available"):
        return False
    try:
        return bool(module.classifier_available())
    except Exception:  # noqa: BLE001
        return False


def resolve_method(method: str) -> str:
    """Turn ``auto`` into ``model`` or ``classical``; refuse ``model`` when no model is installed."""
    if method not in METHODS:
        raise CovidCTError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if method == "classical":
        return method
    if segmentation_models_available():
        return "model"
    if method == "model":
        raise ModelError(
            "No trained lung/infection model is installed. Train one with "
            "`covidct train lung --data ... --out ...` (see README), or use --method classical."
        )
    return "classical"


def _load(source: str | os.PathLike | CTVolume, reporter: Reporter) -> CTVolume:
    if isinstance(source, CTVolume):
        return source
    from CovidCTLib.io.loader import load_ct

    return load_ct(source, require_3d=True, reporter=reporter)


def analyze(
    source: str | os.PathLike | CTVolume,
    method: str = "auto",
    device: str = "auto",
    reporter: Reporter | None = None,
    classify: bool = True,
    infection_thresholds: Any | None = None,
) -> AnalysisResult:
    """Analyse one chest CT volume.

    Args:
        source: a path any loader input accepts, or an already loaded :class:`CTVolume`.
        method: ``auto`` (models when installed, else classical), ``classical`` or ``model``.
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda`` (models only).
        reporter: progress/cancellation reporter.
        classify: run the COVID classifier when one is installed.
        infection_thresholds: :class:`CovidCTLib.classical.infection.InfectionThresholds` (classical only).
    """
    if device not in DEVICES:
        raise CovidCTError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
    reporter = reporter or Reporter()
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def timed(name: str, start: float, end: float, message: str, work: Callable[[], Any]) -> Any:
        reporter.stage(name, start, end, message)
        t0 = time.perf_counter()
        value = work()
        timings[name] = time.perf_counter() - t0
        return value

    ct = timed("load", 0.0, 0.1, "Reading the CT", lambda: _load(source, reporter))
    if not ct.is_3d:
        raise NotCTError(
            f"{ct.source} is a 2-D image; `covidct analyze` needs a 3-D chest CT. "
            "Use `covidct segment-slices` or `covidct classify` for 2-D images."
        )
    resolved = resolve_method(method)
    if resolved == "classical" and ct.intensity != "HU":
        raise NotCTError(
            f"{ct.source} is not in Hounsfield units (8-bit intensities); the classical method needs HU. "
            "Use the original DICOM/NIfTI in HU, or --method model with trained models installed."
        )
    model_versions: dict[str, str] = {}
    if resolved == "model":
        inference = importlib.import_module("CovidCTLib.models.inference")
        lungs = timed(
            "lungs",
            0.1,
            0.45,
            "Segmenting the lungs (model)",
            lambda: inference.segment_lungs_model(ct, device=device, reporter=reporter),
        )
        _check_lungs(ct, lungs)
        infection = timed(
            "infection",
            0.45,
            0.7,
            "Segmenting infection (model)",
            lambda: inference.segment_infection_model(ct, lungs, device=device, reporter=reporter),
        )
        model_versions.update(inference.models_available())
    else:
        from CovidCTLib.classical.infection import segment_infection_classical
        from CovidCTLib.classical.lungs import segment_lungs_classical

        lungs = timed(
            "lungs",
            0.1,
            0.45,
            "Segmenting the lungs (classical)",
            lambda: segment_lungs_classical(ct, reporter=reporter),
        )
        _check_lungs(ct, lungs)
        infection = timed(
            "infection",
            0.45,
            0.7,
            "Segmenting infection (HU classes)",
            lambda: segment_infection_classical(ct, lungs, infection_thresholds, reporter=reporter),
        )
    infection = np.where(lungs > 0, infection, 0).astype(np.uint8)
    # --- issue 13 hook: HU gate of the network output + noise floor (CovidCTLib/postprocess/stages.py)
    from CovidCTLib.postprocess.stages import DEFAULT_FLOOR, clean_infection, score_scan

    infection, gating = timed("infection_gating", 0.7, 0.7, "Checking infection against CT densities",
                              lambda: clean_infection(ct, lungs, infection, resolved))

    covid_probability, classification, slice_probabilities = None, None, {}
    if classify and classifier_available():
        classifier = importlib.import_module("CovidCTLib.models.classifier_inference")
        scan = timed(
            "classify",
            0.7,
            0.85,
            "Classifying COVID vs non-COVID",
            lambda: classifier.classify_scan(ct, lungs, device=device, reporter=reporter),
        )
        covid_probability = float(scan.probability)
        slice_probabilities = dict(scan.slice_probabilities)
        classification = {
            "probability_mean": round(float(scan.probability), 4),
            "probability_top_k_mean": round(float(scan.top_k_mean), 4),
            "pooling": "mean over lung-containing axial slices (top-k mean also given)",
            "n_slices": int(scan.n_slices),
            "model": scan.model_name,
            "model_version": scan.model_version,
            "meaning": "Model output for COVID-19 pneumonia pattern; research use only, not a diagnosis.",
        }
        model_versions["classifier"] = f"{scan.model_name} {scan.model_version}"

    from CovidCTLib.quantify import quantify
    from CovidCTLib.report.report_json import build_report

    numbers = timed(
        "quantify", 0.85, 0.97, "Measuring volumes, zones and lesions",
        lambda: quantify(ct, lungs, infection, min_lesion_ml=DEFAULT_FLOOR.min_lesion_ml),
    )
    # --- issue 13 hook: zone noise floor + scan-level COVID assessment; its probability is the top-level one
    numbers, assessment = timed("assessment", 0.97, 0.99, "Scan-level COVID assessment",
                                lambda: score_scan(ct, lungs, infection, numbers, covid_probability))
    numbers["infection_gating"] = gating
    numbers["covid_assessment"] = assessment
    covid_probability = assessment["probability"]
    timings["total"] = time.perf_counter() - started
    notes = list(ct.notes)
    if classification is None:
        notes.append("No COVID classifier ran (none installed or disabled): covid_probability is the "
                     "assessment's category prior.")
    report = build_report(
        ct.identity(), numbers, resolved, model_versions, timings, covid_probability, classification, notes
    )
    reporter.stage("done", 1.0, 1.0, "Analysis finished")
    return AnalysisResult(
        ct=ct,
        lungs=lungs.astype(np.uint8),
        infection=infection,
        report=report,
        covid_probability=covid_probability,
        slice_probabilities=slice_probabilities,
        method=resolved,
        model_versions=model_versions,
    )


def _check_lungs(ct: CTVolume, lungs: np.ndarray) -> None:
    """Refuse results with no plausible lung: the input is probably not a chest CT."""
    lung_ml = float(np.count_nonzero(lungs)) * ct.voxel_volume_ml
    if lung_ml < MIN_LUNG_ML:
        raise AnalysisError(
            f"No lung found in {ct.source} ({lung_ml:.1f} mL of lung tissue). Check that the input is "
            "a chest CT covering the lungs, in Hounsfield units, not a cropped region."
        )


def output_paths(outdir: Path, result: AnalysisResult, reports: bool, dicom_seg: bool) -> dict[str, Path]:
    """The files ``write_outputs`` will create, keyed by role."""
    paths = {
        "lungs": outdir / "lungs.nii.gz",
        "infection": outdir / "infection.nii.gz",
        "segmentation": outdir / "segmentation.seg.nrrd",
        "report_json": outdir / "report.json",
        "report_csv": outdir / "report.csv",
    }
    if reports:
        paths["report_html"] = outdir / "report.html"
        paths["report_pdf"] = outdir / "report.pdf"
    if dicom_seg and result.ct.dicom_files:
        paths["dicom_seg"] = outdir / "segmentation.dcm"
    return paths


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
    """Write every output file of one analysis; refuses before writing anything if one exists."""
    outdir = Path(outdir)
    paths = output_paths(outdir, result, reports, dicom_seg)
    for path in paths.values():
        check_writable(path, overwrite)
    outdir.mkdir(parents=True, exist_ok=True)
    reporter = reporter or Reporter()

    from CovidCTLib.io.seg_nrrd import write_seg_nrrd
    from CovidCTLib.io.writers import write_labelmap
    from CovidCTLib.report.report_json import write_report_csv, write_report_json

    reporter.update("write", 0.1, "Writing labelmaps")
    write_labelmap(result.lungs, result.ct.image, paths["lungs"], overwrite=True)
    write_labelmap(result.infection, result.ct.image, paths["infection"], overwrite=True)
    write_seg_nrrd(
        result.lungs,
        result.infection,
        result.ct.image,
        paths["segmentation"],
        overwrite=True,
        extra_metadata=_seg_metadata(result),
    )
    if "dicom_seg" in paths:
        from CovidCTLib.export.dicom_seg import write_dicom_seg

        write_dicom_seg(result, paths["dicom_seg"], overwrite=True)
    if surfaces:
        from CovidCTLib.export.meshes import export_surfaces

        reporter.update("write", 0.4, f"Writing {surfaces} surfaces")
        for index, path in enumerate(export_surfaces(result, outdir / "surfaces", surfaces, overwrite=True)):
            paths[f"surface_{index}"] = path
    if points_csv:
        from CovidCTLib.export.points_csv import write_points_csv

        paths["points_csv"] = write_points_csv(result, outdir / "points.csv")
    write_report_json(result.report, paths["report_json"], overwrite=True)
    write_report_csv(result.report, paths["report_csv"], overwrite=True)
    if reports:
        from CovidCTLib.report.html_pdf import write_html_report, write_pdf_report

        reporter.update("write", 0.7, "Writing the HTML and PDF report")
        write_html_report(result, paths["report_html"], include_identifiers=include_identifiers)
        write_pdf_report(result, paths["report_pdf"], include_identifiers=include_identifiers)
    return paths


def _seg_metadata(result: AnalysisResult) -> dict[str, str]:
    """Provenance stored in the segmentation file header."""
    versions = result.report.get("versions", {})
    return {
        "CovidCT_SoftwareVersion": str(versions.get("covidct", "")),
        "CovidCT_Method": result.method,
        "CovidCT_Models": ";".join(f"{k}={v}" for k, v in sorted(result.model_versions.items())),
        "CovidCT_Disclaimer": str(result.report.get("disclaimer", "")),
    }
