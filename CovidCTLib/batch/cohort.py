"""Cohort outputs: cohort.csv (report.csv's columns, one row per study), failures.csv and cohort.json.

Rows are read back from each study's own report.csv / report.json on disk, so a resumed batch summarises the
studies finished by earlier runs exactly like the new ones.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from CovidCTLib.atomic import write_text_atomic
from CovidCTLib.batch.jobs import FAILED, OK, SKIPPED, TIMEOUT, AnalysisOptions, Outcome
from CovidCTLib.version import DISCLAIMER, __version__

FAILURE_COLUMNS = ("id", "path", "message")
#: the classifier output is banded at this probability for the cohort's category counts (model output only).
CATEGORY_THRESHOLD = 0.5
CATEGORIES = ("COVID pattern (model p >= 0.5)", "non-COVID pattern (model p < 0.5)", "not classified")


def covid_category(probability: float | None) -> str:
    """The cohort's COVID category of one study: the classifier's output banded at :data:`CATEGORY_THRESHOLD`."""
    if probability is None:
        return CATEGORIES[2]
    return CATEGORIES[0] if probability >= CATEGORY_THRESHOLD else CATEGORIES[1]


def report_columns() -> list[str]:
    """cohort.csv's columns: ``id`` then report.csv's fixed columns."""
    from CovidCTLib.report.report_json import CSV_COLUMNS

    return ["id", *CSV_COLUMNS]


def read_study(folder: Path) -> tuple[dict[str, str], dict[str, Any]] | None:
    """The report.csv row and the report.json of one finished study (None when they cannot be read)."""
    try:
        with (folder / "report.csv").open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (rows[0] if rows else None), report


def _number(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def histogram(values: Sequence[float], edges: Sequence[float]) -> dict[str, list[float]]:
    """Counts of ``values`` in the bins ``[edges[i], edges[i+1])`` (the last bin includes its right edge)."""
    counts = [0] * (len(edges) - 1)
    for value in values:
        for i in range(len(counts)):
            last = i == len(counts) - 1
            if edges[i] <= value < edges[i + 1] or (last and value == edges[-1]):
                counts[i] += 1
                break
    return {"edges": list(edges), "counts": counts}


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, standard deviation, min, quartiles, max (None when empty)."""
    if not values:
        return {"n": 0, "mean": None, "sd": None, "min": None, "p25": None, "median": None, "p75": None, "max": None}
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 3
    return {
        "n": len(ordered),
        "mean": round(statistics.fmean(ordered), 4),
        "sd": round(statistics.stdev(ordered), 4) if len(ordered) > 1 else 0.0,
        "min": round(ordered[0], 4),
        "p25": round(quartiles[0], 4),
        "median": round(quartiles[1], 4),
        "p75": round(quartiles[2], 4),
        "max": round(ordered[-1], 4),
    }


def distributions(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Burden (% of lungs infected), severity score (0-30), COVID probability and category over the cohort."""
    burden = [v for v in (_number(r.get("infection.percent_of_lungs")) for r in rows) if v is not None]
    severity = [v for v in (_number(r.get("severity_score.total")) for r in rows) if v is not None]
    probability = [_number(r.get("covid_probability")) for r in rows]
    categories = {name: 0 for name in CATEGORIES}
    for p in probability:
        categories[covid_category(p)] += 1
    known = [p for p in probability if p is not None]
    return {
        "burden_percent_of_lungs": {**describe(burden), "histogram": histogram(burden, [0, 5, 10, 25, 50, 75, 100])},
        "severity_score_total": {
            **describe(severity),
            "counts": {str(s): severity.count(float(s)) for s in range(31) if severity.count(float(s))},
            "histogram": histogram(severity, [0, 1, 6, 11, 16, 21, 26, 30]),
        },
        "covid_probability": {**describe(known), "histogram": histogram(known, [i / 10 for i in range(11)])},
        "covid_category": {
            "counts": categories,
            "rule": f"classifier probability banded at {CATEGORY_THRESHOLD} (a model output, not a diagnosis)",
        },
    }


def _csv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return buffer.getvalue()


def write_failures_csv(outdir: Path, outcomes: Sequence[Outcome]) -> Path:
    """failures.csv: id, path, message of every failed or timed-out study (header only when none failed)."""
    rows = [{"id": o.id, "path": o.path, "message": o.message} for o in outcomes if not o.succeeded]
    return write_text_atomic(outdir / "failures.csv", _csv_text(FAILURE_COLUMNS, rows), overwrite=True)


def _timings(outcomes: Sequence[Outcome], reports: Sequence[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    ran = [o.seconds for o in outcomes if o.status == OK]
    stages: dict[str, list[float]] = {}
    for report in reports:
        for stage, value in (report.get("timing_s") or {}).items():
            stages.setdefault(stage, []).append(float(value))
    return {
        "wall_s": round(wall_s, 3),
        "studies_per_hour": round(3600.0 * len(ran) / wall_s, 2) if wall_s > 0 and ran else None,
        "per_study_s": describe(ran),
        "analysis_stage_mean_s": {k: round(statistics.fmean(v), 3) for k, v in sorted(stages.items())},
    }


def build_cohort(
    outdir: Path,
    outcomes: Sequence[Outcome],
    options: AnalysisOptions,
    runner: dict[str, Any],
    wall_s: float,
    notes: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The cohort.csv rows (studies in outcome order) and the cohort.json content."""
    rows, reports = [], []
    for outcome in outcomes:
        if not outcome.succeeded:
            continue
        read = read_study(outdir / outcome.id)
        if read is None or read[0] is None:
            continue
        row, report = read
        rows.append({"id": outcome.id, **row})
        reports.append(report)
    statuses = [o.status for o in outcomes]
    versions = sorted({str(r.get("versions", {}).get("covidct")) for r in reports} | {__version__})
    models = sorted({f"{k}={v}" for r in reports for k, v in (r.get("versions", {}).get("models") or {}).items()})
    summary = {
        "disclaimer": DISCLAIMER,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": {"covidct": versions, "models": models, "methods": sorted({str(r.get("method")) for r in reports})},
        "options": options.as_dict(),
        "runner": runner,
        "counts": {
            "studies": len(outcomes),
            "succeeded": sum(o.succeeded for o in outcomes),
            "analysed": statuses.count(OK),
            "skipped_complete": statuses.count(SKIPPED),
            "failed": statuses.count(FAILED),
            "timed_out": statuses.count(TIMEOUT),
        },
        "failures": [
            {"id": o.id, "path": o.path, "status": o.status, "message": o.message} for o in outcomes if not o.succeeded
        ],
        "timings": _timings(outcomes, reports, wall_s),
        "distributions": distributions(rows),
        "notes": list(notes),
    }
    return rows, summary


def write_cohort(
    outdir: Path,
    outcomes: Sequence[Outcome],
    options: AnalysisOptions,
    runner: dict[str, Any],
    wall_s: float,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write failures.csv, cohort.csv, cohort.json and cohort.html; return their paths."""
    from CovidCTLib.batch.cohort_html import write_cohort_html

    rows, summary = build_cohort(outdir, outcomes, options, runner, wall_s, notes)
    paths = {"failures": write_failures_csv(outdir, outcomes)}
    paths["cohort_csv"] = write_text_atomic(outdir / "cohort.csv", _csv_text(report_columns(), rows), overwrite=True)
    paths["cohort_json"] = write_text_atomic(outdir / "cohort.json", json.dumps(summary, indent=2) + "\n", True)
    paths["cohort_html"] = write_cohort_html(outdir / "cohort.html", rows, summary)
    return paths
