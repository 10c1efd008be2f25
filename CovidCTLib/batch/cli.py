"""``covidct batch``: analyse a cohort on a local pool of worker processes or on a Dask cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from CovidCTLib.errors import InputError
from CovidCTLib.progress import CancelToken


def add_analysis_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``covidct analyze`` that apply to every study of a batch (the same definitions)."""
    from CovidCTLib.cli_options import add_analysis_arguments, add_device_argument

    add_analysis_arguments(parser)
    add_device_argument(parser)


def register(sub: Any) -> None:
    """Add the ``batch`` subcommand to the ``covidct`` parser."""
    parser = sub.add_parser(
        "batch",
        help="analyse many studies (local worker pool or a Dask cluster)",
        description="Analyse every study found under INPUTS (each DICOM study's CT series, chosen as analyze "
        "chooses it, and each NIfTI/NRRD/MHA file) or listed in --manifest into OUTDIR/<id>/, then write "
        "OUTDIR/cohort.csv, cohort.json, cohort.html and failures.csv. Exit code 0 only when every study "
        "succeeded. Research software, not a diagnosis.",
    )
    parser.add_argument("inputs", nargs="*", help="folders of studies, or volume / DICOM files")
    parser.add_argument("-o", "--output", required=True, help="output folder (one subfolder per study)")
    parser.add_argument("--manifest", help="CSV with the columns id,path (instead of or besides INPUTS)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes (default: from the cores, threads per worker and memory)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="threads per worker (default 2 with models, 1 with the classical method)"
    )
    parser.add_argument(
        "--scheduler", default=None, help="run on this Dask scheduler (tcp://HOST:8786) instead of the local pool"
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip studies whose complete output set exists; redo incomplete ones"
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per study before it is stopped")
    parser.add_argument("--overwrite", action="store_true", help="redo studies whose outputs exist")
    parser.add_argument(
        "--json-progress",
        action="store_true",
        help="print one JSON line per finished study on stdout instead of the bar",
    )
    add_analysis_options(parser)
    parser.set_defaults(handler=run_batch_command)


def _options(args: argparse.Namespace) -> Any:
    from CovidCTLib.batch.jobs import AnalysisOptions

    return AnalysisOptions(
        method=args.method,
        device=args.device,
        classify=not args.no_classify,
        harmonise_kernel=not args.no_kernel_harmonisation,
        reports=args.reports,
        dicom_seg=args.dicom_seg,
        surfaces=args.surfaces,
        points_csv=args.points_csv,
        include_identifiers=args.include_identifiers,
        ggo_range=tuple(args.ggo_range) if args.ggo_range else None,
        consolidation_range=tuple(args.consolidation_range) if args.consolidation_range else None,
        threads=max(0, args.threads),
        explain=not args.no_explain,
        top_slices=args.top_slices,
        heatmap=args.heatmap,
    )


def _discover(args: argparse.Namespace) -> Any:
    from CovidCTLib.batch.discovery import Discovery, discover, read_manifest
    from CovidCTLib.batch.jobs import unique_ids

    if not args.inputs and not args.manifest:
        raise InputError("give input folders/files or --manifest CSV (columns id,path); nothing to analyse.")
    found = discover(args.inputs, exclude=[args.output]) if args.inputs else Discovery()
    if args.manifest:
        listed = read_manifest(args.manifest)
        clash = {s.id for s in found.studies} & {s.id for s in listed.studies}
        if clash:
            raise InputError(f"the id(s) {', '.join(sorted(clash))} come from both INPUTS and --manifest; rename them.")
        found.studies += listed.studies
        found.notes += listed.notes
    ids = unique_ids([s.id for s in found.studies] + [p[0] for p in found.problems])
    found.problems = [(ids[len(found.studies) + i], p[1], p[2]) for i, p in enumerate(found.problems)]
    if not found.studies and not found.problems:
        raise InputError(f"no study found in {', '.join(args.inputs)}; give folders holding DICOM series or volumes.")
    return found


def run_batch_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    """``covidct batch``: returns 0 when every study succeeded, 1 when some failed (see failures.csv)."""
    from CovidCTLib.batch.progress import BatchProgress
    from CovidCTLib.batch.runner import BatchConfig, run_batch
    from CovidCTLib.cli_progress import emit_json
    from CovidCTLib.version import DISCLAIMER

    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be 1 or more.")
    if args.timeout is not None and args.timeout <= 0:
        raise InputError("--timeout must be a positive number of seconds.")
    found = _discover(args)
    outdir = Path(args.output)
    config = BatchConfig(
        outdir, _options(args), args.workers, args.scheduler, args.resume, args.overwrite, args.timeout
    )
    progress = BatchProgress(len(found.studies) + len(found.problems), json_lines=args.json_progress)
    try:
        result = run_batch(found, config, progress, cancel)
    finally:
        progress.close()
    failed = [o for o in result.outcomes if not o.succeeded]
    counts = {s: sum(o.status == s for o in result.outcomes) for s in ("ok", "skipped", "failed", "timeout")}
    if args.json_progress:
        emit_json(
            "done",
            outdir=str(outdir),
            counts=counts,
            all_succeeded=not failed,
            files={k: str(v) for k, v in result.paths.items()},
        )
    else:
        print(
            f"{len(result.outcomes)} studies: {counts['ok']} analysed, {counts['skipped']} already complete, "
            f"{counts['failed']} failed, {counts['timeout']} timed out ({result.runner.get('kind', 'nothing run')})."
        )
        print(f"Cohort written to {outdir}/: cohort.csv, cohort.json, cohort.html, failures.csv")
        if failed:
            print(f"Failures listed in {result.paths['failures']}", file=sys.stderr)
        print(f"Note: {DISCLAIMER}")
    return 1 if failed else 0
