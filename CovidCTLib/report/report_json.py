"""report.json and report.csv: the machine-readable result of one analysed scan.

report.csv holds exactly one row per scan with a fixed column order, so the CSVs of a cohort run can be
concatenated (``tail -n +2``) into one table.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from CovidCTLib.atomic import write_text_atomic
from CovidCTLib.report.fields import CSV_COLUMNS as REPORT_CSV_COLUMNS
from CovidCTLib.report.fields import lookup
from CovidCTLib.version import DISCLAIMER, __version__

REPORT_SCHEMA_VERSION = "1.0"

CSV_COLUMNS = REPORT_CSV_COLUMNS  # the columns of report.csv, from the field table


def software_versions(method: str, model_versions: dict[str, str]) -> dict[str, Any]:
    """The versions block: software, method, models and the main libraries."""
    versions: dict[str, Any] = {
        "covidct": __version__,
        "method": method,
        "models": dict(model_versions),
        "python": platform.python_version(),
    }
    from importlib import metadata

    for name in ("numpy", "SimpleITK", "torch", "monai"):  # read from the installed metadata: no heavy import
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # a library that is not installed is simply not listed
            continue
    return versions


def build_report(
    identity: dict[str, Any],
    quantification: dict[str, Any],
    method: str,
    model_versions: dict[str, str],
    timings: dict[str, float],
    covid_probability: float | None = None,
    classification: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Assemble the report dictionary (the content of report.json)."""
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "disclaimer": DISCLAIMER,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": identity,
        "method": method,
        "covid_probability": None if covid_probability is None else round(float(covid_probability), 4),
        "classification": classification,
    }
    report.update(quantification)
    report["versions"] = software_versions(method, model_versions)
    report["timing_s"] = {key: round(value, 3) for key, value in timings.items()}
    report["notes"] = list(notes or [])
    return report


def report_csv_row(report: dict[str, Any]) -> dict[str, Any]:
    """Flatten a report into the fixed CSV columns."""
    row = {column: lookup(report, column) for column in CSV_COLUMNS}
    row["source"] = lookup(report, "input.source")
    row["series_uid"] = lookup(report, "input.series_uid")
    row["model_versions"] = ";".join(f"{k}={v}" for k, v in sorted((report["versions"]["models"]).items()))
    row["n_lesions"] = len(report.get("lesions") or [])
    row["software_version"] = lookup(report, "versions.covidct")
    return row


def write_report_json(report: dict[str, Any], path: str | Path, overwrite: bool = True) -> Path:
    """Write report.json atomically (UTF-8, indented)."""
    return write_text_atomic(path, json.dumps(report, indent=2, default=_json_default) + "\n", overwrite)


def write_report_csv(report: dict[str, Any], path: str | Path, overwrite: bool = True) -> Path:
    """Write report.csv (header + one row) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerow({k: ("" if v is None else v) for k, v in report_csv_row(report).items()})
    return write_text_atomic(path, buffer.getvalue(), overwrite)


def _json_default(value: Any) -> Any:
    """Convert numpy scalars and arrays for json.dumps."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
