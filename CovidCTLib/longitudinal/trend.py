"""Per-time-point table (compare.csv) and the infection trend plot (trend.png) of a comparison."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from CovidCTLib.atomic import write_text_atomic, write_with
from CovidCTLib.version import DISCLAIMER, __version__

CSV_FIELDS = (
    "index",
    "label",
    "date",
    "source",
    "unit",
    "lung_total",
    "lung_right",
    "lung_left",
    "infection_total",
    "infection_right",
    "infection_left",
    "ggo_total",
    "consolidation_total",
    "percent_total",
    "percent_right",
    "percent_left",
    "percent_change_points_vs_baseline",
    "verdict_vs_baseline",
    "verdict_vs_previous",
    "lung_dice",
    "mean_surface_distance_mm",
    "software_version",
    "disclaimer",
)


def trend_rows(timepoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per time point from the ``timepoints`` list of compare.json."""
    rows = []
    for tp in timepoints:
        reg = tp["numbers"]["regions"]
        quality = tp.get("registration") or {}
        row = {
            "index": tp["index"],
            "label": tp["label"],
            "date": tp.get("date") or "",
            "source": tp["source"],
            "unit": tp["numbers"]["unit"],
            "lung_total": reg["total"]["lung"],
            "lung_right": reg["right"]["lung"],
            "lung_left": reg["left"]["lung"],
            "infection_total": reg["total"]["infection"],
            "infection_right": reg["right"]["infection"],
            "infection_left": reg["left"]["infection"],
            "ggo_total": reg["total"]["ggo"],
            "consolidation_total": reg["total"]["consolidation"],
            "percent_total": reg["total"]["percent"],
            "percent_right": reg["right"]["percent"],
            "percent_left": reg["left"]["percent"],
            "percent_change_points_vs_baseline": tp.get("percent_change_points_vs_baseline", 0.0),
            "verdict_vs_baseline": tp.get("verdict_vs_baseline", ""),
            "verdict_vs_previous": tp.get("verdict_vs_previous", ""),
            "lung_dice": quality.get("lung_dice", ""),
            "mean_surface_distance_mm": quality.get("mean_surface_distance_mm", ""),
            "software_version": __version__,
            "disclaimer": DISCLAIMER,
        }
        rows.append(row)
    return rows


def write_compare_csv(rows: list[dict[str, Any]], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """compare.csv: a header, then one row per time point (software version and disclaimer in every row)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return write_text_atomic(path, buffer.getvalue(), overwrite=overwrite)


def write_trend_png(rows: list[dict[str, Any]], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """trend.png: percent of each lung (and both) infected at each time point."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    labels = [r["date"] or f"#{r['index']}" for r in rows]
    x = list(range(len(rows)))
    for key, name, style in (
        ("percent_right", "right lung", "o-"),
        ("percent_left", "left lung", "s-"),
        ("percent_total", "both lungs", "^--"),
    ):
        ax.plot(x, [r[key] for r in rows], style, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20 if len(rows) > 3 else 0)
    ax.set_ylabel("infected lung (%)" + (" of slice area" if rows and rows[0]["unit"] == "cm2" else ""))
    ax.set_xlabel("time point (acquisition date when known)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Infection trend", fontsize=10)
    fig.text(0.01, 0.01, f"CovidCT {__version__}: research software, not for diagnosis", fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return write_with(path, lambda tmp: fig.savefig(str(tmp), format="png"), overwrite=overwrite)
