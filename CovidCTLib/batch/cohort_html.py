"""cohort.html: one self-contained page (inline SVG, no script, no external file) with histograms and the table."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from CovidCTLib.atomic import write_text_atomic

TABLE_COLUMNS = (
    ("id", "study"),
    ("method", "method"),
    ("lungs.total_ml", "lungs mL"),
    ("infection.total_ml", "infection mL"),
    ("infection.percent_of_lungs", "burden % of lungs"),
    ("severity_score.total", "severity (0-30)"),
    ("covid_probability", "COVID probability (model)"),
    ("n_lesions", "lesions"),
)
_STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}td:first-child{text-align:left}"
    ".warn{background:#fff3cd;border:1px solid #e0c060;padding:8px}.charts{display:flex;flex-wrap:wrap;gap:2em}"
    "figure{margin:0}figcaption{font-size:13px;text-align:center}"
)


def _label(edges: Sequence[float], i: int) -> str:
    low, high = edges[i], edges[i + 1]
    fmt = "{:g}".format
    return f"{fmt(low)}-{fmt(high)}"


def svg_histogram(histogram: dict[str, list[float]], title: str, width: int = 360, height: int = 200) -> str:
    """An inline SVG bar chart of ``{"edges", "counts"}`` with counts above the bars."""
    edges, counts = histogram["edges"], histogram["counts"]
    n, top = len(counts), max(max(counts, default=0), 1)
    left, bottom, plot_h = 10, 40, height - 60
    bar_w = (width - 2 * left) / max(n, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f"<title>{escape(title)}</title>",
    ]
    for i, count in enumerate(counts):
        h = plot_h * count / top
        x, y = left + i * bar_w, height - bottom - h
        parts.append(f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{bar_w - 4:.1f}" height="{h:.1f}" fill="#4a78b0"/>')
        parts.append(
            f'<text x="{x + bar_w / 2:.1f}" y="{y - 4:.1f}" font-size="11" text-anchor="middle">{count}</text>'
        )
        parts.append(
            f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 14}" font-size="10" '
            f'text-anchor="middle">{escape(_label(edges, i))}</text>'
        )
    parts.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - left}" y2="{height - bottom}" stroke="#333"/>')
    parts.append("</svg>")
    return "".join(parts)


def _figure(histogram: dict[str, list[float]], caption: str) -> str:
    return f"<figure>{svg_histogram(histogram, caption)}<figcaption>{escape(caption)}</figcaption></figure>"


def render_cohort_html(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The page's HTML text."""
    counts, dist, timings = summary["counts"], summary["distributions"], summary["timings"]
    software = summary["software"]
    head = "".join(f"<th>{escape(title)}</th>" for _, title in TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(row.get(key, '') or ''))}</td>" for key, _ in TABLE_COLUMNS) + "</tr>"
        for row in rows
    )
    failures = "".join(
        f"<tr><td>{escape(f['id'])}</td><td>{escape(f['status'])}</td><td style='text-align:left'>"
        f"{escape(f['message'])}</td></tr>"
        for f in summary["failures"]
    )
    categories = "".join(
        f"<tr><td>{escape(name)}</td><td>{n}</td></tr>" for name, n in dist["covid_category"]["counts"].items()
    )
    rate = timings.get("studies_per_hour")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CovidCT cohort</title><style>{_STYLE}</style></head>
<body>
<h1>CovidCT cohort summary</h1>
<p class="warn"><b>Research software, not a diagnosis.</b> {escape(summary["disclaimer"])}</p>
<p>CovidCT {escape(", ".join(software["covidct"]))}; method {escape(", ".join(software["methods"]) or "-")};
models {escape("; ".join(software["models"]) or "none")}. Created {escape(summary["created_utc"])}.</p>
<h2>Counts</h2>
<table><tr><th>studies</th><th>succeeded</th><th>analysed now</th><th>already complete</th><th>failed</th>
<th>timed out</th><th>wall time s</th><th>studies / hour</th></tr>
<tr><td>{counts["studies"]}</td><td>{counts["succeeded"]}</td><td>{counts["analysed"]}</td>
<td>{counts["skipped_complete"]}</td><td>{counts["failed"]}</td><td>{counts["timed_out"]}</td>
<td>{timings["wall_s"]}</td><td>{"-" if rate is None else rate}</td></tr></table>
<h2>Distributions</h2>
<div class="charts">
{_figure(dist["burden_percent_of_lungs"]["histogram"], "Infection burden, % of lungs")}
{_figure(dist["severity_score_total"]["histogram"], "CT severity score (0-30)")}
{_figure(dist["covid_probability"]["histogram"], "COVID probability (model output)")}
</div>
<h3>COVID category ({escape(dist["covid_category"]["rule"])})</h3>
<table><tr><th>category</th><th>studies</th></tr>{categories}</table>
<h2>Studies</h2>
<table><tr>{head}</tr>{body}</table>
<h2>Failures</h2>
{"<p>None.</p>" if not failures else f"<table><tr><th>study</th><th>status</th><th>message</th></tr>{failures}</table>"}
<p><small>{escape(summary["disclaimer"])}</small></p>
</body></html>
"""


def write_cohort_html(path: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> Path:
    """Write cohort.html atomically."""
    return write_text_atomic(path, render_cohort_html(rows, summary), overwrite=True)
