"""The Dask runner: studies as tasks on an existing Dask distributed cluster (``--scheduler tcp://HOST:PORT``).

Needs the optional extra ``pip install "CovidCTLib[distributed]"`` on the client and on every worker, and the
inputs and OUTDIR on a file system every worker sees at the same paths. Models are loaded once per worker
process (the first task warms it up; the caches live in the worker process). The per-study timeout runs inside
the task: the study runs in a thread, and at the deadline its cancel token is set (it stops at its next progress
step) and the task returns a timeout outcome at once, freeing the worker slot. A study stuck inside one long
library call keeps running in the background until that call returns; start workers with
``dask worker --nthreads 1`` so that one study per worker process runs at a time.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence

from CovidCTLib.batch.jobs import FAILED, TIMEOUT, AnalysisOptions, Outcome, Study
from CovidCTLib.errors import CovidCTError, InputError
from CovidCTLib.progress import CancelToken


def _import_distributed():  # noqa: ANN202 - the optional module
    try:
        import distributed
    except ImportError as error:
        raise InputError(
            '--scheduler needs Dask distributed: pip install "CovidCTLib[distributed]" (on this machine and on '
            "every worker)."
        ) from error
    return distributed


def dask_task(
    study: Study, options: AnalysisOptions, outdir: str, overwrite: bool, timeout: float | None, function_ref: str
) -> Outcome:
    """One study on a Dask worker: warm-up (once per process), then the study under its deadline."""
    from CovidCTLib.batch.study import execute, resolve_function
    from CovidCTLib.batch.warmup import prepare_worker

    try:
        prepare_worker(options)
        function = resolve_function(function_ref)
    except Exception as error:  # noqa: BLE001 - a worker that cannot analyse: say so for this study
        return Outcome(study.id, study.path, FAILED, f"the Dask worker cannot run CovidCT: {error}")
    cancel = CancelToken()
    box: list[Outcome] = []
    thread = threading.Thread(
        target=lambda: box.append(execute(function, study, options, outdir, overwrite, cancel)),
        name=f"covidct-{study.id}",
        daemon=True,
    )
    started = time.perf_counter()
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        cancel.cancel()
        message = (
            f"timed out after {timeout:g} s (--timeout); the study was cancelled on its Dask worker. "
            "Raise --timeout if this study is just large."
        )
        return Outcome(study.id, study.path, TIMEOUT, message, time.perf_counter() - started)
    return box[0]


def run_on_dask(
    scheduler: str,
    jobs: Sequence[tuple[Study, bool]],
    options: AnalysisOptions,
    outdir: str,
    function_ref: str,
    timeout: float | None,
    on_outcome: Callable[[Outcome], None],
    cancel: CancelToken | None = None,
) -> dict[str, int]:
    """Submit every study to the cluster at ``scheduler``; ``on_outcome`` once per study. Returns cluster facts."""
    distributed = _import_distributed()
    cancel = cancel or CancelToken()
    try:
        client = distributed.Client(scheduler, timeout="30s")
    except (OSError, TimeoutError) as error:
        raise CovidCTError(
            f"cannot reach the Dask scheduler at {scheduler} ({error}); start it with `dask scheduler` and give its "
            "address (tcp://HOST:8786), or leave out --scheduler to use the local pool."
        ) from error
    try:
        info = client.scheduler_info()
        workers = info.get("workers", {})
        if not workers:
            client.wait_for_workers(1, timeout=120)
            workers = client.scheduler_info().get("workers", {})
        facts = {"workers": len(workers), "threads": int(sum(w.get("nthreads", 1) for w in workers.values()))}
        token = uuid.uuid4().hex[:8]
        futures = {
            client.submit(
                dask_task,
                study,
                options,
                outdir,
                overwrite,
                timeout,
                function_ref,
                key=f"covidct-{token}-{study.id}",
                pure=False,
                retries=0,
            ): study
            for study, overwrite in jobs
        }
        for future in distributed.as_completed(list(futures)):
            if cancel.cancelled:
                client.cancel(list(futures))
                cancel.check()
            study = futures[future]
            try:
                outcome = future.result()
            except Exception as error:  # noqa: BLE001 - a lost worker or an unpicklable result: contained
                outcome = Outcome(study.id, study.path, FAILED, f"Dask task failed: {type(error).__name__}: {error}")
            on_outcome(outcome)
        return facts
    finally:
        client.close()
