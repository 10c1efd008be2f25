"""One study of a batch: load, analyse, write ``OUTDIR/<id>/``, then the completion marker (written last).

Each study folder is one output set (:mod:`CovidCTLib.outputs.output_set`): its completion marker
(:data:`CovidCTLib.outputs.output_set.MARKER`) lists every file; :func:`output_set_complete` is the one test
of "this study is done" used
by ``--resume``. ``study.json`` (source, options, versions) is written as part of the set.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from CovidCTLib.batch.jobs import FAILED, OK, AnalysisOptions, Outcome, Study
from CovidCTLib.errors import CovidCTError, InputError
from CovidCTLib.outputs.output_set import is_complete
from CovidCTLib.progress import CancelToken, Reporter

STUDY_FILE = "study.json"
#: a study function: analyse one study into its folder and return extra facts for the outcome.
StudyFunction = Callable[[Study, AnalysisOptions, Path, Reporter, bool], dict[str, Any]]


def study_dir(outdir: str | os.PathLike, study: Study) -> Path:
    """The output folder of one study."""
    return Path(outdir) / study.id


def output_set_complete(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a finished output set (its marker lists files that all exist)."""
    return is_complete(folder)


def study_record(study: Study, report: dict[str, Any], options: AnalysisOptions | None = None) -> str:
    """``study.json``: the study, its source, the options and the versions (part of the output set)."""
    content = {
        "study": study.id,
        "source": study.path,
        "options": options.as_dict() if options is not None else None,
        "versions": report.get("versions", {}),
        "disclaimer": report.get("disclaimer", ""),
    }
    return json.dumps(content, indent=2) + "\n"


def infection_thresholds(options: AnalysisOptions) -> Any | None:
    """The classical HU ranges asked for (None: the documented defaults)."""
    if options.ggo_range is None and options.consolidation_range is None:
        return None
    from CovidCTLib.classical.infection import InfectionThresholds

    values = dict(InfectionThresholds().__dict__)
    if options.ggo_range is not None:
        values.update(ggo_min_hu=options.ggo_range[0], ggo_max_hu=options.ggo_range[1])
    if options.consolidation_range is not None:
        values.update(
            consolidation_min_hu=options.consolidation_range[0], consolidation_max_hu=options.consolidation_range[1]
        )
    return InfectionThresholds(**values)


def load_study(study: Study, reporter: Reporter) -> Any:
    """The CT of a study: its chosen DICOM series when discovery gave files, else what ``load_ct`` reads."""
    if not study.files:
        from CovidCTLib.io.loader import load_ct

        return load_ct(study.path, require_3d=True, reporter=reporter)
    from CovidCTLib.io import dicom

    missing = [f for f in study.files if not Path(f).is_file()]
    if missing:
        raise InputError(
            f"{study.path}: {len(missing)} of the {len(study.files)} DICOM files found at discovery are not visible "
            f"on {os.uname().nodename} (e.g. {missing[0]}); put the inputs on a file system every worker mounts at "
            "the same path, or run discovery again if they were moved."
        )
    scan = dicom.scan_files([Path(f) for f in study.files], reporter, total=len(study.files))
    if not scan.headers and scan.unreadable:
        raise dicom.unreadable_error(study.path, scan)
    if not scan.headers:
        raise InputError(f"{study.path}: the DICOM files found at discovery hold no image now; run the batch again.")
    chosen, notes = dicom.choose_series(dicom.group_series(scan.headers), study.path)
    label = dicom.describe_series(chosen)
    return dicom.build_volume(chosen, Path(study.path), label, list(study.notes) + notes, True, reporter)


def run_study(study: Study, options: AnalysisOptions, folder: Path, reporter: Reporter, overwrite: bool) -> dict:
    """Analyse one study into ``folder`` with analyze's outputs; the marker is written last."""
    from CovidCTLib.outputs.base import OutputOptions
    from CovidCTLib.outputs.registry import write_outputs
    from CovidCTLib.outputs.warmup import start_warmup
    from CovidCTLib.pipeline import analyze

    start_warmup(options.reports)  # once per worker process, while its first analysis runs
    ct = load_study(study, reporter)
    result = analyze(
        ct,
        method=options.method,
        device=options.device,
        reporter=reporter,
        classify=options.classify,
        infection_thresholds=infection_thresholds(options),
        harmonise_kernel=options.harmonise_kernel,
        explain=options.explain,
        top_slices=options.top_slices,
    )
    options_out = OutputOptions(
        options.reports,
        options.dicom_seg,
        options.surfaces,
        options.points_csv,
        options.include_identifiers,
        options.heatmap,
    )
    record = study_record(study, result.report, options)
    write_outputs(
        result,
        folder,
        overwrite,
        options_out,
        reporter,
        extra_files={STUDY_FILE: lambda path: path.write_text(record, encoding="utf-8")},
    )
    return {"method": result.method, "analysis_s": result.report.get("timing_s", {}).get("total")}


def execute(
    function: StudyFunction,
    study: Study,
    options: AnalysisOptions,
    outdir: str,
    overwrite: bool,
    cancel: CancelToken | None = None,
) -> Outcome:
    """Run ``function`` on one study and turn every error into a failed :class:`Outcome` (never raises)."""
    started = time.perf_counter()
    worker = f"{os.uname().nodename}:{os.getpid()}"
    try:
        extra = function(study, options, study_dir(outdir, study), Reporter(None, cancel), overwrite)
    except CovidCTError as error:
        return Outcome(study.id, study.path, FAILED, str(error), time.perf_counter() - started, worker)
    except MemoryError:
        message = "out of memory; run fewer workers (--workers) or give each worker more memory."
        return Outcome(study.id, study.path, FAILED, message, time.perf_counter() - started, worker)
    except Exception as error:  # noqa: BLE001 - one bad study must never stop the cohort
        last = traceback.extract_tb(error.__traceback__)[-1:]
        where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
        message = f"internal error ({type(error).__name__}: {error}){where}; please report it."
        return Outcome(study.id, study.path, FAILED, message, time.perf_counter() - started, worker)
    return Outcome(study.id, study.path, OK, "", time.perf_counter() - started, worker, dict(extra or {}))


def resolve_function(reference: str) -> StudyFunction:
    """``"package.module:function"`` to the function (workers import it themselves)."""
    import importlib

    module_name, _, name = reference.partition(":")
    return getattr(importlib.import_module(module_name), name)


DEFAULT_FUNCTION = "CovidCTLib.batch.study:run_study"
