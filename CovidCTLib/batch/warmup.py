"""Once per worker process: thread limits and the models loaded before the first study (not once per study)."""

from __future__ import annotations

import os

from CovidCTLib.batch.jobs import AnalysisOptions

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)

_PREPARED: set[tuple] = set()


def limit_threads_env(threads: int) -> None:
    """Set the thread variables of the numeric libraries (effective before they are imported)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(max(1, threads))


#: modules every study needs, imported at warm-up so that the first study's timeout does not pay for them.
ANALYSIS_MODULES = (
    "CovidCTLib.classical.lungs",
    "CovidCTLib.classical.infection",
    "CovidCTLib.quantify",
    "CovidCTLib.io.loader",
    "CovidCTLib.io.writers",
    "CovidCTLib.io.seg_nrrd",
    "CovidCTLib.report.report_json",
)


def import_analysis_modules(reports: bool) -> None:
    """Import the analysis and writer modules (and the HTML/PDF report writer when reports are written)."""
    import importlib

    for name in ANALYSIS_MODULES + (("CovidCTLib.outputs.html_pdf",) if reports else ()):
        importlib.import_module(name)
    from CovidCTLib.report.report_json import software_versions

    software_versions("classical", {})  # imports torch / monai for their version numbers: pay it here, once


def prepare_worker(options: AnalysisOptions) -> str:
    """Limit threads and load the models this batch uses into the process caches; return the method used.

    Idempotent per process and options, so Dask tasks can call it at the start of every study.
    Raises :class:`CovidCTLib.errors.ModelError` when ``--method model`` is asked and no model is installed.
    """
    from CovidCTLib.pipeline import classifier_available
    from CovidCTLib.segmentation.registry import resolve_method

    key = (options.method, options.device, options.classify, options.threads)
    method = resolve_method(options.method)
    if key in _PREPARED:
        return method
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, options.threads))
    needs_torch = method == "model" or (options.classify and classifier_available())
    if needs_torch:
        import torch

        torch.set_num_threads(max(1, options.threads))
    if method == "model":
        from CovidCTLib.models.runtime import inference

        inference.get_model(inference.model_name("lung"), options.device)
        inference.get_model(inference.model_name("infection"), options.device)
    if options.classify and classifier_available():
        from CovidCTLib.models.runtime.classifier_inference import load_classifier

        load_classifier(None, options.device)
    import_analysis_modules(options.reports)
    _PREPARED.add(key)
    return method
