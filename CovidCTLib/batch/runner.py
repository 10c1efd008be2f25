"""The batch orchestration: plan (resume / overwrite), run on the local pool or Dask, write the cohort files."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from CovidCTLib.batch.discovery import Discovery
from CovidCTLib.batch.jobs import FAILED, SKIPPED, AnalysisOptions, Outcome, Study
from CovidCTLib.batch.study import DEFAULT_FUNCTION, output_set_complete, study_dir
from CovidCTLib.errors import OutputExistsError
from CovidCTLib.progress import CancelToken


@dataclass
class BatchConfig:
    """Where and how a batch runs (``workers`` None: chosen from the cores, threads and memory)."""

    outdir: Path
    options: AnalysisOptions
    workers: int | None = None
    scheduler: str | None = None
    resume: bool = False
    overwrite: bool = False
    timeout: float | None = None
    function_ref: str = DEFAULT_FUNCTION


@dataclass
class BatchResult:
    """Outcomes in discovery order, the cohort files written and cohort.json's content."""

    outcomes: list[Outcome]
    paths: dict[str, Path]
    runner: dict[str, Any] = field(default_factory=dict)

    @property
    def all_succeeded(self) -> bool:
        return all(o.succeeded for o in self.outcomes)


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def plan(
    studies: list[Study], outdir: Path, resume: bool, overwrite: bool
) -> tuple[list[tuple[Study, bool]], list[Outcome]]:
    """The ``(study, overwrite)`` jobs to run and the outcomes of studies skipped as already complete.

    With ``resume``, a complete output set is skipped and an incomplete one is redone (its partial files are
    replaced). Without ``resume`` or ``overwrite``, existing study outputs are refused before anything runs.
    """
    jobs: list[tuple[Study, bool]] = []
    skipped: list[Outcome] = []
    existing: list[str] = []
    for study in studies:
        folder = study_dir(outdir, study)
        if resume and output_set_complete(folder):
            skipped.append(Outcome(study.id, study.path, SKIPPED, "complete output set found (--resume)"))
        elif _has_files(folder):
            if not (resume or overwrite):
                existing.append(study.id)
            jobs.append((study, True))
        else:
            jobs.append((study, overwrite))
    if existing:
        raise OutputExistsError(
            f"{len(existing)} study folder(s) already hold outputs in {outdir} (e.g. {existing[0]}); pass --resume to "
            "skip the finished ones and redo the rest, --overwrite to redo all, or choose another -o folder."
        )
    return jobs, skipped


def run_batch(
    found: Discovery,
    config: BatchConfig,
    on_outcome: Callable[[Outcome], None] | None = None,
    cancel: CancelToken | None = None,
) -> BatchResult:
    """Run every study of ``found``; failures are contained; the cohort files are always written at the end."""
    from CovidCTLib.batch.cohort import write_cohort
    from CovidCTLib.batch.resources import default_threads, default_workers
    from CovidCTLib.segmentation.registry import resolve_method

    outdir = Path(config.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    jobs, skipped = plan(found.studies, outdir, config.resume, config.overwrite)
    method = resolve_method(config.options.method)  # refuses --method model without models, before any work
    options = config.options
    if options.threads <= 0:
        options = AnalysisOptions(**{**options.as_dict(), "threads": default_threads(method)})
    by_id: dict[str, Outcome] = {o.id: o for o in skipped}
    for problem_id, path, message in found.problems:
        by_id[problem_id] = Outcome(problem_id, path, FAILED, message)

    def record(outcome: Outcome) -> None:
        by_id[outcome.id] = outcome
        if on_outcome is not None:
            on_outcome(outcome)

    for outcome in list(by_id.values()):
        if on_outcome is not None:
            on_outcome(outcome)
    started = time.monotonic()
    runner: dict[str, Any] = {"method": method, "threads_per_worker": options.threads, "timeout_s": config.timeout}
    if jobs and config.scheduler:
        from CovidCTLib.batch.distributed import run_on_dask

        facts = run_on_dask(
            config.scheduler, jobs, options, str(outdir), config.function_ref, config.timeout, record, cancel
        )
        runner.update(kind="dask", scheduler=config.scheduler, **facts)
    elif jobs:
        from CovidCTLib.batch.local import LocalPool

        workers = config.workers or default_workers(method, options.threads, len(jobs))
        pool = LocalPool(workers, options, str(outdir), config.function_ref, config.timeout, cancel)
        pool.run(jobs, record)
        runner.update(kind="local", workers=pool.spawned_workers, workers_replaced=pool.replaced)
    wall = time.monotonic() - started
    order = [s.id for s in found.studies] + [p[0] for p in found.problems]
    outcomes = [by_id[i] for i in dict.fromkeys(order) if i in by_id]
    paths = write_cohort(outdir, outcomes, options, runner, wall, found.notes)
    return BatchResult(outcomes, paths, runner)
