"""Cohort runs: ``covidct batch`` analyses many studies on a local pool of worker processes or on a Dask cluster.

Research software, not for diagnosis. Parts (one job each):

* :mod:`.jobs` - the picklable study and options records and the outcome of one study;
* :mod:`.discovery` - studies found under input folders (same series-selection rules as analyze) or a manifest;
* :mod:`.study` - analysing one study into ``OUTDIR/<id>/``, the completion marker, once-per-process warm-up;
* :mod:`.local` - the local pool (long-lived worker processes, hard per-study timeout, crash containment);
* :mod:`.distributed` - the Dask runner (optional extra ``CovidCTLib[distributed]``);
* :mod:`.cohort`, :mod:`.cohort_html` - cohort.csv / failures.csv / cohort.json and cohort.html;
* :mod:`.runner` - the orchestration used by :mod:`.cli`.
"""

from CovidCTLib.batch.study import output_set_complete

__all__ = ["output_set_complete"]
