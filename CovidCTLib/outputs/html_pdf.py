"""report.html (one self-contained file, pictures embedded as base64 PNG) and report.pdf (reportlab; the
pictures as JPEG, which reportlab embeds without decoding).

Both show the same content (:mod:`CovidCTLib.report.content`): identifiers only when asked for, scan and
software/model versions, the COVID-19 probability and what it means (or that no classifier ran), volumes per
lung, per zone and the severity score, the largest lesions, a 3-D picture (lungs see-through, lesions solid,
seen from the front), axial and coronal overlays of the most affected slices and, for a comparison, the trend
plot and change table. "Research software, not for diagnosis" is at the top and bottom of the HTML page and
in the footer of every PDF page.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

from CovidCTLib.atomic import check_writable, write_text_atomic, write_with
from CovidCTLib.explain.text import EXPLANATION_CAPTION
from CovidCTLib.report.content import NOT_FOR_DIAGNOSIS, ReportContent, ReportImages, Table, build_content, make_images

_CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1000px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 26px; border-bottom: 1px solid #ccc; }
.banner { background: #fff3cd; border: 1px solid #e0c36c; padding: 8px 12px; font-weight: bold; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 4px 8px; text-align: right; }
th { background: #eef2f6; } td:first-child, th:first-child { text-align: left; }
table.facts td { text-align: left; } .note { font-size: 12px; color: #555; }
img { max-width: 100%; border: 1px solid #ddd; } footer { margin-top: 30px; font-size: 12px; color: #555; }
"""


def _img(data: bytes | None, alt: str) -> str:
    if not data:
        return ""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _table_html(table: Table, css_class: str = "") -> str:
    parts = [f"<h2>{html.escape(table.title)}</h2>"]
    cls = f' class="{css_class}"' if css_class else ""
    parts.append(
        f"<table{cls}><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
        + "</tr></thead><tbody>"
    )
    for row in table.rows:
        parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    parts.append("</tbody></table>")
    if table.note:
        parts.append(f'<p class="note">{html.escape(table.note)}</p>')
    return "\n".join(parts)


def render_html(content: ReportContent) -> str:
    """The report as one HTML string."""
    esc = html.escape
    body = [
        f"<h1>{esc(content.title)}</h1>",
        f'<p class="banner">{esc(NOT_FOR_DIAGNOSIS)}. {esc(content.disclaimer)}</p>',
        "<h2>Scan and software</h2>",
        '<table class="facts"><tbody>'
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in content.facts)
        + "</tbody></table>",
        "<h2>COVID-19 classification</h2>",
        f"<p>{esc(content.probability_text)}</p>",
    ]
    body += [_table_html(table) for table in content.tables]
    images = content.images
    body.append("<h2>3-D view (from the front; patient right on the image left)</h2>")
    body.append(
        _img(images.surface_png, "3-D rendering of lungs and lesions")
        or f'<p class="note">No 3-D picture: {esc(images.surface_note)}</p>'
    )
    body.append(
        '<p class="note">Lungs see-through (right green, left blue); ground-glass yellow, consolidation red.</p>'
    )
    if images.axial_png:
        body += ["<h2>Axial slices with the most infection</h2>", _img(images.axial_png, "axial overlay montage")]
    if images.coronal_png:
        body += ["<h2>Coronal slices with the most infection</h2>", _img(images.coronal_png, "coronal overlay montage")]
    if images.explanation_png:  # issue 16.2 hook
        body += [
            "<h2>What drives the COVID score (Grad-CAM heatmap)</h2>",
            _img(images.explanation_png, "top slices with the classifier heatmap"),
            f'<p class="note">{esc(EXPLANATION_CAPTION)}</p>',
        ]
    if images.trend_png or content.compare_tables:
        body.append("<h2>Comparison with earlier scans</h2>")
        body.append(_img(images.trend_png, "infection trend plot"))
        body += [_table_html(table) for table in content.compare_tables]
    if content.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in content.notes) + "</ul>")
    body.append(f"<footer>{esc(content.footer)} {esc(content.disclaimer)}</footer>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(content.title)} - {esc(NOT_FOR_DIAGNOSIS)}</title><style>{_CSS}</style></head>"
        "<body>\n" + "\n".join(part for part in body if part) + "\n</body></html>\n"
    )


def write_html_report(
    result,
    path: str | os.PathLike,
    include_identifiers: bool = False,
    compare: dict[str, Any] | None = None,
    overwrite: bool = True,
    images: ReportImages | None = None,
) -> Path:
    """Write report.html (self-contained). ``compare``: optional ``{"trend_png", "rows", "title"}``."""
    check_writable(Path(path), overwrite)
    content = build_content(result, include_identifiers, compare, images)
    return write_text_atomic(path, render_html(content), overwrite)


# ------------------------------------------------------------------------------------------------------ PDF


def _pdf_story(content: ReportContent) -> list:
    from reportlab.lib import colors
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, KeepTogether, Paragraph, Spacer
    from reportlab.platypus import Table as RLTable

    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=8, leading=10, textColor=colors.HexColor("#555555"))
    cell = styles["BodyText"].clone("cell", fontSize=7.5, leading=9)
    esc = html.escape
    width = 180 * mm

    def table(t: Table) -> list:
        data = [[Paragraph(f"<b>{esc(h)}</b>", cell) for h in t.header]]
        data += [[Paragraph(esc(c), cell) for c in row] for row in t.rows]
        flow = RLTable(data, repeatRows=1, hAlign="LEFT")
        flow.setStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#999999")),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eef2f6")),
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
            ]
        )
        out = [Paragraph(esc(t.title), styles["Heading3"]), flow]
        if t.note:
            out.append(Paragraph(esc(t.note), small))
        return out

    def picture(data: bytes, max_w: float, max_h: float) -> Image:
        jpeg, (w, h) = _jpeg(data)
        scale = min(max_w / w, max_h / h)
        return Image(io.BytesIO(jpeg), width=w * scale, height=h * scale)

    story: list = [
        Paragraph(esc(content.title), styles["Title"]),
        Paragraph(f"<b>{esc(NOT_FOR_DIAGNOSIS)}.</b> {esc(content.disclaimer)}", small),
        Spacer(1, 4 * mm),
        Paragraph("Scan and software", styles["Heading3"]),
    ]
    facts = RLTable(
        [[Paragraph(f"<b>{esc(k)}</b>", cell), Paragraph(esc(v), cell)] for k, v in content.facts],
        colWidths=[40 * mm, 140 * mm],
        hAlign="LEFT",
    )
    facts.setStyle([("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#bbbbbb"))])
    story += [
        facts,
        Paragraph("COVID-19 classification", styles["Heading3"]),
        Paragraph(esc(content.probability_text), styles["BodyText"]),
    ]
    for t in content.tables:
        story += table(t)
    images = content.images
    heading = Paragraph("3-D view (from the front; patient right on the image left)", styles["Heading3"])
    if images.surface_png:
        story.append(
            KeepTogether(
                [
                    heading,
                    picture(images.surface_png, 110 * mm, 110 * mm),
                    Paragraph(
                        "Lungs see-through (right green, left blue); ground-glass yellow, consolidation red.", small
                    ),
                ]
            )
        )
    else:
        story += [heading, Paragraph(f"No 3-D picture: {esc(images.surface_note)}", small)]
    for title, data in (
        ("Axial slices with the most infection", images.axial_png),
        ("Coronal slices with the most infection", images.coronal_png),
    ):
        if data:
            story.append(KeepTogether([Paragraph(title, styles["Heading3"]), picture(data, width, 120 * mm)]))
    if images.explanation_png:  # issue 16.2 hook
        story.append(
            KeepTogether(
                [
                    Paragraph("What drives the COVID score (Grad-CAM heatmap)", styles["Heading3"]),
                    picture(images.explanation_png, width, 70 * mm),
                    Paragraph(esc(EXPLANATION_CAPTION), small),
                ]
            )
        )
    if images.trend_png or content.compare_tables:
        heading = Paragraph("Comparison with earlier scans", styles["Heading3"])
        if images.trend_png:
            story.append(KeepTogether([heading, picture(images.trend_png, width, 90 * mm)]))
        else:
            story.append(heading)
        for t in content.compare_tables:
            story += table(t)
    if content.notes:
        story.append(Paragraph("Notes", styles["Heading3"]))
        story += [Paragraph("- " + esc(n), small) for n in content.notes]
    return story


#: JPEG quality of the PDF's pictures (reportlab embeds JPEG as it is; a PNG it decodes and re-compresses)
PDF_JPEG_QUALITY = 90


def _jpeg(png: bytes) -> tuple[bytes, tuple[int, int]]:
    """A report picture as JPEG bytes for the PDF, and its size in pixels."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(png)) as image:
        if image.mode in ("RGBA", "LA", "P"):  # transparent parts onto white, as the page shows them
            rgba = image.convert("RGBA")
            rgb = PILImage.new("RGB", rgba.size, "white")
            rgb.paste(rgba, mask=rgba.getchannel("A"))
        else:
            rgb = image.convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=PDF_JPEG_QUALITY)
    return buffer.getvalue(), rgb.size


def render_pdf(content: ReportContent) -> bytes:
    """The report as PDF bytes, with the disclaimer and page number in every page footer."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import SimpleDocTemplate

    def footer(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.drawString(15 * mm, 10 * mm, f"{content.footer} Page {doc.page}.")
        canvas.drawString(15 * mm, 6.5 * mm, content.disclaimer[:150])
        canvas.restoreState()

    from reportlab import rl_config

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=14 * mm,
        bottomMargin=18 * mm,
        title=content.title,
        author="CovidCT",
        subject=NOT_FOR_DIAGNOSIS,
        creator=content.footer,
    )
    use_a85 = rl_config.useA85
    rl_config.useA85 = 0  # binary (Flate) streams: reportlab's pure-Python ASCII85 encoder took seconds per picture
    try:
        doc.build(_pdf_story(content), onFirstPage=footer, onLaterPages=footer)
    finally:
        rl_config.useA85 = use_a85
    return buffer.getvalue()


def write_pdf_report(
    result,
    path: str | os.PathLike,
    include_identifiers: bool = False,
    compare: dict[str, Any] | None = None,
    overwrite: bool = True,
    images: ReportImages | None = None,
) -> Path:
    """Write report.pdf (A4). ``compare``: optional ``{"trend_png", "rows", "title"}``."""
    check_writable(Path(path), overwrite)
    content = build_content(result, include_identifiers, compare, images)
    data = render_pdf(content)
    return write_with(path, lambda tmp: tmp.write_bytes(data), overwrite)


def write_reports(
    result,
    outdir: str | os.PathLike,
    include_identifiers: bool = False,
    compare: dict[str, Any] | None = None,
    overwrite: bool = False,
    render_3d: bool = True,
) -> dict[str, Path]:
    """Write report.html and report.pdf into ``outdir``, rendering the pictures once for both."""
    outdir = Path(outdir)
    paths = {"report_html": outdir / "report.html", "report_pdf": outdir / "report.pdf"}
    for path in paths.values():
        check_writable(path, overwrite)
    images = make_images(result, compare, render_3d=render_3d)
    write_html_report(result, paths["report_html"], include_identifiers, compare, overwrite, images)
    write_pdf_report(result, paths["report_pdf"], include_identifiers, compare, overwrite, images)
    return paths
