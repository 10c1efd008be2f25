"""``covidct evaluate volumes``: the full default analysis on every real volume found, one table row each.

Every volume file (NIfTI, NRRD, MHA/MHD) and every DICOM series folder under the given paths is analysed
with the defaults of ``covidct analyze``; outputs go to ``OUTDIR/<name>/``, the table to
``OUTDIR/volumes.csv``. A folder holding two or more DICOM series (e.g. two reconstruction kernels of one
acquisition) also gets the burden difference of its first two series. Research software, not a diagnosis.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from CovidCTLib.atomic import write_text_atomic
from CovidCTLib.errors import InputError
from CovidCTLib.version import DISCLAIMER

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
GENERIC_NAMES = ("dicom", "series", "ct", "images")
COLUMNS = (
    "name",
    "lungs_ml",
    "burden_percent",
    "infection_ml",
    "lesions",
    "severity",
    "covid_probability",
    "category",
    "seconds",
    "source",
)


@dataclass(frozen=True)
class Scan:
    """One input found: a display name, its path and the folder it belongs to (for kernel pairs)."""

    name: str
    path: Path
    group: Path


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in VOLUME_SUFFIXES) and not name.endswith(".seg.nrrd")


def _is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir() if p.is_file())


def find_scans(paths: list[str | os.PathLike]) -> list[Scan]:
    """Volume files and DICOM series folders under ``paths`` (sorted; names made unique)."""
    found: list[tuple[Path, Path]] = []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise InputError(f"{root} does not exist; give folders or files holding CT volumes.")
        if _is_volume_file(root) or _is_dicom_folder(root):
            found.append((root, root.parent))
            continue
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            here = Path(folder)
            if _is_dicom_folder(here):
                found.append((here, here.parent))
            found += [(here / f, here) for f in sorted(files) if _is_volume_file(here / f)]
    if not found:
        raise InputError(f"no CT volume (NIfTI, NRRD, MHA, DICOM series) found under {', '.join(map(str, paths))}.")
    scans, used = [], set()
    for path, group in sorted(set(found)):
        stem = path.name
        for suffix in VOLUME_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if stem.lower() in GENERIC_NAMES:  # e.g. <collection>/dicom: name it after the collection
            stem = path.parent.name or stem
        name = stem if stem not in used else f"{path.parent.name}_{stem}"
        if path.is_dir() and path.parent.name and _sibling_series(path):
            name = f"{path.parent.name}_{stem}"
        used.add(name)
        scans.append(Scan(name, path, group))
    return scans


def _sibling_series(folder: Path) -> bool:
    """True when the folder's parent holds another DICOM series (a reconstruction pair)."""
    return sum(_is_dicom_folder(p) for p in folder.parent.iterdir() if p.is_dir()) >= 2


def scan_row(scan: Scan, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The table row of one analysed scan."""
    assessment = report.get("covid_assessment") or {}
    probability = report.get("covid_probability")
    return {
        "name": scan.name,
        "lungs_ml": round(float(report["lungs"]["total_ml"]), 1),
        "burden_percent": round(float(report["infection"]["percent_of_lungs"]), 2),
        "infection_ml": round(float(report["infection"]["total_ml"]), 1),
        "lesions": len(report.get("lesions") or []),
        "severity": int(report["severity_score"]["total"]),
        "covid_probability": None if probability is None else round(float(probability), 3),
        "category": assessment.get("category", ""),
        "seconds": round(seconds, 1),
        "source": str(scan.path),
    }


def kernel_pairs(scans: list[Scan], rows: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """``(name a, name b, burden b - a)`` for the first two DICOM series of every folder holding several."""
    by_group: dict[Path, list[dict[str, Any]]] = {}
    for scan, row in zip(scans, rows, strict=True):
        if scan.path.is_dir():
            by_group.setdefault(scan.group, []).append(row)
    return [
        (g[0]["name"], g[1]["name"], round(g[1]["burden_percent"] - g[0]["burden_percent"], 2))
        for g in by_group.values()
        if len(g) >= 2
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of the rows (without the source column)."""
    columns = COLUMNS[:-1]
    cells = [[str(c) for c in columns]] + [["" if r[c] is None else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write volumes.csv atomically (header + one row per scan)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return write_text_atomic(path, buffer.getvalue(), overwrite=True)


def evaluate_volumes(
    paths: list[str | os.PathLike],
    outdir: str | os.PathLike,
    overwrite: bool = False,
    device: str = "auto",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Analyse every scan found with the defaults; write outputs, volumes.csv; return rows and kernel pairs."""
    from CovidCTLib.pipeline import analyze, write_outputs

    outdir = Path(outdir)
    scans = find_scans(paths)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for scan in scans:
        started = time.perf_counter()
        result = analyze(scan.path, device=device)
        write_outputs(result, outdir / scan.name, overwrite=overwrite)
        rows.append(scan_row(scan, result.report, time.perf_counter() - started))
        echo(
            f"{scan.name}: burden {rows[-1]['burden_percent']} %, category {rows[-1]['category']}, "
            f"{rows[-1]['seconds']} s"
        )
    csv_path = write_csv(rows, outdir / "volumes.csv")
    pairs = kernel_pairs(scans, rows)
    echo(format_table(rows))
    for a, b, diff in pairs:
        echo(f"burden difference {b} - {a}: {diff:+.2f} percentage points (same acquisition, two reconstructions)")
    echo(f"Table: {csv_path}. {DISCLAIMER}")
    return {"rows": rows, "pairs": pairs, "csv": str(csv_path)}
