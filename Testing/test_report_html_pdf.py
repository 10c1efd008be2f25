"""HTML/PDF reports (numbers, pictures, identifiers, disclaimer on every page) and the render helpers."""

from __future__ import annotations

import base64
import html.parser
import io
import re
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from required import require_module  # noqa: E402
from scipy import ndimage

from CovidCTLib import render, surfaces
from CovidCTLib.outputs.html_pdf import write_html_report, write_pdf_report, write_reports
from CovidCTLib.phantom import make_phantom
from CovidCTLib.report import content as report_content
from CovidCTLib.results import AnalysisResult
from CovidCTLib.version import DISCLAIMER, __version__

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _can_render() -> bool:
    try:
        render.offscreen_backend()
    except render.RenderUnavailableError:
        return False
    return True


def synthetic_report(ct, lungs: np.ndarray, infection: np.ndarray, probability: float | None) -> dict[str, Any]:
    """A report dict with the report.json structure, computed directly from the masks."""
    voxel = ct.voxel_volume_ml
    hu = ct.array
    report: dict[str, Any] = {
        "disclaimer": DISCLAIMER,
        "method": "model",
        "covid_probability": probability,
        "classification": None if probability is None else {"threshold": 0.5},
        "created_utc": "2026-11-23T12:00:00+00:00",
        "input": ct.identity(include_identifiers=True),
        "versions": {"covidct": __version__, "method": "model", "models": {"infection": "unet-2.1"}},
        "timing_s": {"total": 12.34},
        "notes": ["Synthetic phantom used for the test."],
    }
    side_ml = {name: float((lungs == value).sum() * voxel) for value, name in ((1, "right"), (2, "left"))}
    report["lungs"] = {"right_ml": side_ml["right"], "left_ml": side_ml["left"], "total_ml": sum(side_ml.values())}
    inside = lungs > 0
    inf_total = float((infection > 0).sum() * voxel)
    report["infection"] = {
        "total_ml": inf_total,
        "ggo_ml": float((infection == 1).sum() * voxel),
        "consolidation_ml": float((infection == 2).sum() * voxel),
        "percent_of_lungs": 100 * inf_total / max(float(inside.sum() * voxel), 1e-9),
        "right_percent": 100 * float(((infection > 0) & (lungs == 1)).sum() * voxel) / side_ml["right"],
        "left_percent": 100 * float(((infection > 0) & (lungs == 2)).sum() * voxel) / side_ml["left"],
    }
    zones, total_score = [], 0
    zone_of = np.zeros(lungs.shape, np.uint8)
    for value, name in ((1, "right"), (2, "left")):
        z = np.flatnonzero((lungs == value).any(axis=(1, 2)))
        edges = np.linspace(z[0], z[-1] + 1, 4).astype(int)
        for number, zone in enumerate(("upper", "middle", "lower")):
            part = np.zeros(lungs.shape, bool)
            part[edges[number] : edges[number + 1]] = True
            mask = part & (lungs == value)
            zone_of[mask] = number + 1
            lung_ml = float(mask.sum() * voxel)
            ml = {
                k: float(((infection == v) & mask).sum() * voxel) for k, v in (("ggo_ml", 1), ("consolidation_ml", 2))
            }
            infection_ml = ml["ggo_ml"] + ml["consolidation_ml"]
            percent = 100 * infection_ml / max(lung_ml, 1e-9)
            severity = int(np.digitize(percent, [0.001, 5, 25, 50, 75]))
            total_score += severity
            zones.append(
                {
                    "lung": name,
                    "zone": zone,
                    "lung_ml": lung_ml,
                    "infection_ml": infection_ml,
                    **ml,
                    "percent": percent,
                    "severity": severity,
                }
            )
    report["zones"] = zones
    report["severity_score"] = {"total": total_score, "max": 30}
    labels, n = ndimage.label(infection > 0)
    lesions = []
    for index in range(1, n + 1):
        component = labels == index
        zz, yy, xx = np.nonzero(component)
        centre = ct.image.TransformContinuousIndexToPhysicalPoint([xx.mean(), yy.mean(), zz.mean()])
        lesions.append(
            {
                "id": index,
                "type": "consolidation" if (infection[component] == 2).mean() > 0.5 else "ggo",
                "volume_ml": float(component.sum() * voxel),
                "mean_hu": float(hu[component].mean()),
                "centroid_mm": [float(c) for c in centre],
                "lung": {1: "right", 2: "left", 0: "-"}[int(np.bincount(lungs[component]).argmax())],
                "zone": int(np.bincount(zone_of[component]).argmax()),
            }
        )
    report["lesions"] = lesions
    return report


@pytest.fixture(scope="module")
def result():
    phantom = make_phantom(shape=(40, 80, 80), spacing=(3.0, 2.0, 2.0), seed=3)
    phantom.ct.patient = {"name": "Doe^Jane", "id": "PAT-98765", "birth_date": "19600101"}
    report = synthetic_report(phantom.ct, phantom.lungs, phantom.infection, probability=0.8734)
    return AnalysisResult(
        ct=phantom.ct,
        lungs=phantom.lungs,
        infection=phantom.infection,
        report=report,
        covid_probability=0.8734,
        method="model",
        model_versions={"infection": "unet-2.1"},
    )


def _expected_strings(report: dict[str, Any]) -> list[str]:
    values = [
        report["lungs"]["right_ml"],
        report["lungs"]["left_ml"],
        report["lungs"]["total_ml"],
        report["infection"]["total_ml"],
        report["infection"]["ggo_ml"],
        report["infection"]["consolidation_ml"],
    ]
    percents = [report["infection"][k] for k in ("percent_of_lungs", "right_percent", "left_percent")]
    strings = [f"{v:.1f}" for v in values + percents]
    for zone in report["zones"]:
        strings += [f"{zone['lung_ml']:.1f}", f"{zone['infection_ml']:.1f}", f"{zone['percent']:.1f}"]
    biggest = max(report["lesions"], key=lambda lesion: lesion["volume_ml"])
    strings += [f"{biggest['volume_ml']:.1f}", f"{biggest['mean_hu']:.0f}"]
    strings += [f"Severity score (sum of the zone scores): {report['severity_score']['total']} of 30"]
    return strings


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _html_text(document: str) -> str:
    parser = _Text()
    parser.feed(document)
    return re.sub(r"\s+", " ", " ".join(parser.parts))


def _pdf_pages(path) -> list[str]:
    pdfium = require_module("pypdfium2")
    pdf = pdfium.PdfDocument(str(path))
    texts = []
    for page in pdf:
        texts.append(re.sub(r"\s+", " ", page.get_textpage().get_text_range()))
    return texts


def test_html_and_pdf_reports_hold_the_numbers_pictures_and_disclaimer(tmp_path, result):
    paths = write_reports(result, tmp_path)
    document = paths["report_html"].read_text(encoding="utf-8")
    text = _html_text(document)
    for expected in _expected_strings(result.report):
        assert expected in text, expected
    assert "0.873" in text and "COVID-19 probability" in text and "not a diagnosis" in text
    assert "Research software, not for diagnosis" in text and f"CovidCT {__version__}" in text
    assert "unet-2.1" in text
    assert "Doe^Jane" not in document and "PAT-98765" not in document and "19600101" not in document
    # pictures are embedded (no external files): 3-D view (when OpenGL works here), axial and coronal montages
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', document)
    assert len(images) == (3 if _can_render() else 2)
    assert all(base64.b64decode(data).startswith(PNG_SIGNATURE) for data in images)
    markup = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", document)  # random base64 may spell "http"
    assert "<link" not in markup and "http" not in markup.lower().replace("http-equiv", "")

    pages = _pdf_pages(paths["report_pdf"])
    assert len(pages) >= 2
    joined = " ".join(pages)
    for expected in _expected_strings(result.report):
        assert expected in joined, expected
    for page in pages:
        assert "Research software, not for diagnosis" in page
    assert "Doe^Jane" not in joined


def test_pdf_first_page_renders_with_pictures(tmp_path, result):
    pdfium = require_module("pypdfium2")
    path = write_pdf_report(result, tmp_path / "report.pdf")
    pdf = pdfium.PdfDocument(str(path))
    n_images = sum(
        1 for page in pdf for obj in page.get_objects(max_depth=2) if obj.type == pdfium.raw.FPDF_PAGEOBJ_IMAGE
    )
    assert n_images >= (3 if _can_render() else 2)
    bitmap = pdf[0].render(scale=1.0).to_numpy()
    assert bitmap.shape[0] > 800 and bitmap.shape[1] > 500
    assert bitmap.std() > 10  # text and tables, not a blank page


def test_identifiers_only_on_request_and_no_classifier(tmp_path, result):
    write_html_report(result, tmp_path / "with.html", include_identifiers=True)
    text = _html_text((tmp_path / "with.html").read_text(encoding="utf-8"))
    assert "Doe^Jane" in text and "PAT-98765" in text
    write_pdf_report(result, tmp_path / "with.pdf", include_identifiers=True)
    assert "PAT-98765" in " ".join(_pdf_pages(tmp_path / "with.pdf"))

    no_classifier = AnalysisResult(
        ct=result.ct,
        lungs=result.lungs,
        infection=result.infection,
        report={**result.report, "covid_probability": None, "classification": None},
    )
    write_html_report(no_classifier, tmp_path / "none.html")
    text = _html_text((tmp_path / "none.html").read_text(encoding="utf-8"))
    assert "No classifier ran" in text and "0.873" not in text


def test_compare_section(tmp_path, result):
    trend = render._png_bytes(np.full((20, 30, 3), 200, np.uint8))
    rows = [
        {"label": "baseline", "date": "2020-03-01", "infection_total": 120.5, "percent_total": 4.25},
        {"label": "follow-up 1", "date": "2020-03-15", "infection_total": 80.25, "percent_total": 2.75},
    ]
    compare = {"trend_png": trend, "rows": rows, "title": "Change over time"}
    write_html_report(result, tmp_path / "c.html", compare=compare)
    document = (tmp_path / "c.html").read_text(encoding="utf-8")
    text = _html_text(document)
    assert "Change over time" in text and "follow-up 1" in text and "80.2" in text and "2.8" in text
    assert len(re.findall(r"data:image/png;base64,", document)) == (4 if _can_render() else 3)
    write_pdf_report(result, tmp_path / "c.pdf", compare=compare)
    assert "follow-up 1" in " ".join(_pdf_pages(tmp_path / "c.pdf"))


def test_report_still_written_when_3d_rendering_is_unavailable(tmp_path, result, monkeypatch):
    def unavailable() -> str:
        raise render.RenderUnavailableError("no OpenGL here; install libegl1 or use xvfb-run")

    monkeypatch.setattr(render, "offscreen_backend", unavailable)
    report_content._LAST.clear()
    write_html_report(result, tmp_path / "r.html")
    text = _html_text((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert "No 3-D picture: no OpenGL here" in text
    write_pdf_report(result, tmp_path / "r.pdf")
    assert (tmp_path / "r.pdf").stat().st_size > 10_000
    report_content._LAST.clear()


@pytest.mark.parametrize("oblique", [False, True])
def test_montage_orientation_right_on_image_left_anterior_up(oblique):
    phantom = make_phantom(shape=(32, 64, 64), spacing=(3.0, 2.5, 2.5), seed=4, oblique=oblique)
    image = phantom.ct.image
    lungs, _ = render.lps_view(phantom.lungs, image)
    hu, _ = render.lps_view(sitk.GetArrayViewFromImage(image), image)
    columns = np.nonzero(lungs)[2]
    right = columns[lungs[np.nonzero(lungs)] == 1].mean()
    left = columns[lungs[np.nonzero(lungs)] == 2].mean()
    assert right < left  # patient right (label 1) shows on the image left
    # the axial view's rows run anterior to posterior: physical y (LPS, + = posterior) grows with the row
    zz, yy, xx = np.nonzero(phantom.lungs)
    first = image.TransformIndexToPhysicalPoint([int(xx[0]), int(yy[0]), int(zz[0])])
    oriented = sitk.DICOMOrient(image, "LPS")
    index = oriented.TransformPhysicalPointToIndex(first)
    assert lungs[index[2], index[1], index[0]] == phantom.lungs[zz[0], yy[0], xx[0]]
    assert np.array_equal(hu, sitk.GetArrayFromImage(oriented))
    png = render.overlay_montage_png(phantom.ct, phantom.lungs, phantom.infection, "coronal", n=4, columns=2)
    assert png.startswith(PNG_SIGNATURE)


def test_choose_slices_prefers_infected_slices_spread_apart():
    counts = np.zeros(100)
    counts[40:46] = [5, 9, 10, 8, 7, 1]
    counts[80] = 6
    picks = render.choose_slices(counts, 3)
    assert picks == [41, 42, 80]  # the best slice of each cluster first, then the next best
    assert render.choose_slices(counts, 2) == [42, 80]
    assert render.choose_slices(np.zeros(10), 3) == [0]


def test_render_surfaces_anterior_view_puts_patient_right_on_image_left(tmp_path):
    require_module("vtk")
    try:
        render.offscreen_backend()
    except render.RenderUnavailableError as exc:
        pytest.skip(str(exc))
    phantom = make_phantom(shape=(32, 64, 64), spacing=(3.0, 2.5, 2.5), seed=5)
    right = surfaces.labelmap_to_polydata(phantom.lungs == 1, phantom.ct.image)
    left = surfaces.labelmap_to_polydata(phantom.lungs == 2, phantom.ct.image)
    data = render.render_surfaces_png({"right_lung": right, "left_lung": left}, tmp_path / "both.png", (300, 300))
    assert (tmp_path / "both.png").read_bytes() == data and data.startswith(PNG_SIGNATURE)
    from matplotlib import image as mpimg

    only_right = mpimg.imread(io.BytesIO(render.render_surfaces_png({"right_lung": right}, None, (300, 300))))
    drawn = np.nonzero(only_right[..., :3].sum(axis=2) < 2.9)  # not the white background
    assert drawn[1].size > 500
    # with only one lung the camera centres on it, so compare against the two-lung picture instead
    both = mpimg.imread(io.BytesIO(data))
    drawn_both = np.nonzero(both[..., :3].sum(axis=2) < 2.9)
    green = both[..., 1] > both[..., 2] + 0.03  # right lung colour is greener, left lung bluer
    columns = drawn_both[1]
    assert green[drawn_both].any()
    assert columns[green[drawn_both]].mean() < columns[~green[drawn_both]].mean()


def test_report_shows_the_lobes_and_the_lobar_score(tmp_path):
    from CovidCTLib.lobes.statistics import lobe_statistics, severity_score_lobar

    phantom = make_phantom(shape=(40, 80, 80), spacing=(3.0, 2.0, 2.0), seed=3, fissures=True)
    report = synthetic_report(phantom.ct, phantom.lungs, phantom.infection, probability=None)
    report["lobes"] = lobe_statistics(phantom.ct, phantom.lungs, phantom.infection, phantom.lobes)
    report["severity_score_lobar"] = severity_score_lobar(report["lobes"])
    result = AnalysisResult(ct=phantom.ct, lungs=phantom.lungs, infection=phantom.infection, report=report)
    text = _html_text(write_reports(result, tmp_path)["report_html"].read_text(encoding="utf-8"))
    for lobe in report["lobes"]:
        assert lobe["name"] in text and f"{lobe['lung_ml']:.1f}" in text
    assert f"Lobar severity score: {report['severity_score_lobar']['total']} of 25." in text
