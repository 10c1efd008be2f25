"""A study function for the batch containment tests: ids with "hang" never finish, ids with "crash" kill the process.

Everything else goes through the real :func:`CovidCTLib.batch.study.run_study`. The hanging study keeps reporting
progress, so the cooperative cancellation of the Dask runner stops it; the local pool kills its process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from CovidCTLib.batch.jobs import AnalysisOptions, Study
from CovidCTLib.batch.study import run_study
from CovidCTLib.progress import Reporter

REFERENCE = "batch_helpers:hang_or_run"


def hang_or_run(study: Study, options: AnalysisOptions, folder: Path, reporter: Reporter, overwrite: bool) -> dict:
    """Hang (until cancelled) for ids containing "hang", exit the process for "crash"; the real study otherwise."""
    if "crash" in study.id:
        os._exit(3)  # like a segfault or the out-of-memory killer: no exception, no answer
    if "hang" in study.id:
        while True:
            reporter.update("hang", 0.0, "waiting forever")
            time.sleep(0.05)
    return run_study(study, options, folder, reporter, overwrite)
