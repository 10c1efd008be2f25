"""The faster writers keep their files' content: streamed seg.nrrd voxels and extents, JPEG pictures in the PDF."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from CovidCTLib.io.seg_nrrd import read_seg_nrrd, write_label_seg_nrrd, write_seg_nrrd


def _bbox(mask: np.ndarray) -> list[int]:
    k, j, i = np.nonzero(mask)
    return [int(i.min()), int(i.max()), int(j.min()), int(j.max()), int(k.min()), int(k.max())]


def test_seg_nrrd_voxels_stream_slab_by_slab_byte_for_byte(tmp_path) -> None:
    rng = np.random.default_rng(3)
    shape = (37, 11, 13)  # more slices than one slab, and not a multiple of it
    image = sitk.Image([shape[2], shape[1], shape[0]], sitk.sitkInt16)
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    lungs = np.zeros(shape, np.uint8)
    lungs[3:30, 2:9, 1:6], lungs[5:33, 2:9, 7:12] = 1, 2
    infection = np.where(rng.random(shape) < 0.05, rng.integers(1, 3, shape), 0).astype(np.uint8) * (lungs > 0)
    path = write_seg_nrrd(lungs, infection, image, tmp_path / "two.seg.nrrd")
    raw = path.read_bytes()
    assert gzip.decompress(raw[raw.index(b"\n\n") + 2 :]) == np.stack([lungs, infection], -1).tobytes()
    back_lungs, back_infection, _, meta = read_seg_nrrd(path)
    np.testing.assert_array_equal(back_lungs, lungs)
    np.testing.assert_array_equal(back_infection, infection)
    extents = {s["name"]: s["extent"] for s in meta["segments"]}
    assert extents["Right lung"] == extents["Left lung"] == _bbox(lungs > 0)  # the layer's box
    assert extents["Ground-glass opacity"] == _bbox(infection > 0)

    labels = np.zeros(shape, np.uint8)
    labels[20:36, 4:6, 9:10] = 3
    one = write_label_seg_nrrd(labels, image, [(3, "lobe", (1.0, 0.0, 0.0))], tmp_path / "one.seg.nrrd")
    raw = one.read_bytes()
    assert gzip.decompress(raw[raw.index(b"\n\n") + 2 :]) == labels.tobytes()
    assert b"Segment0_Extent:=9 9 4 5 20 35\n" in raw
    empty = write_label_seg_nrrd(np.zeros(shape, np.uint8), image, [(1, "none", (0, 0, 1))], tmp_path / "e.seg.nrrd")
    assert b"Segment0_Extent:=0 -1 0 -1 0 -1\n" in empty.read_bytes()


def test_pdf_embeds_the_report_pictures_as_jpeg_close_to_the_png(tmp_path) -> None:
    import io
    import re

    from PIL import Image
    from test_report_html_pdf import synthetic_report

    from CovidCTLib.outputs.html_pdf import write_pdf_report
    from CovidCTLib.phantom import make_phantom
    from CovidCTLib.report.content import ReportImages
    from CovidCTLib.results import AnalysisResult

    phantom = make_phantom(shape=(24, 64, 64), spacing=(4.0, 2.5, 2.5), seed=2)
    report = synthetic_report(phantom.ct, phantom.lungs, phantom.infection, probability=0.5)
    result = AnalysisResult(ct=phantom.ct, lungs=phantom.lungs, infection=phantom.infection, report=report)
    y, x = np.mgrid[:90, :120]
    picture = np.stack([x * 2, y * 2, (x + y) % 256], axis=-1).astype(np.uint8)  # smooth gradients
    pngs = []
    for array in (picture, picture[::-1]):  # two different pictures (reportlab stores equal ones once)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    transparent = np.dstack([picture, np.full(picture.shape[:2], 255, np.uint8)])
    transparent[:, :60, 3] = 0  # the left half see-through: the page (white) shows there
    buffer = io.BytesIO()
    Image.fromarray(transparent, "RGBA").save(buffer, format="PNG")
    images = ReportImages(axial_png=pngs[0], coronal_png=pngs[1], explanation_png=buffer.getvalue())
    data = write_pdf_report(result, tmp_path / "r.pdf", images=images).read_bytes()
    assert len(re.findall(rb"/DCTDecode", data)) == 3 and b"/FlateDecode" in data  # pictures JPEG, text Flate
    jpegs = []
    start = data.find(b"\xff\xd8\xff")
    while start >= 0:  # the embedded JPEGs, as reportlab stored them
        end = data.index(b"\xff\xd9", start) + 2
        jpegs.append(np.asarray(Image.open(io.BytesIO(data[start:end])).convert("RGB")).astype(int))
        start = data.find(b"\xff\xd8\xff", end)
    assert len(jpegs) == 3 and all(j.shape == picture.shape for j in jpegs)
    assert sum(bool(np.abs(j - picture).mean() < 3) for j in jpegs) == 1
    assert any(np.abs(j - picture[::-1]).mean() < 3 for j in jpegs)
    see_through = [j for j in jpegs if j[:, :50].min() > 240]  # transparent half white, the rest the picture
    assert len(see_through) == 1 and np.abs(see_through[0][:, 70:] - picture[:, 70:]).mean() < 3


def test_render_check_runs_once_per_process_and_a_failure_is_kept(monkeypatch) -> None:
    from CovidCTLib import render

    calls: list[str] = []

    def works() -> str:
        calls.append("check")
        return "vtkFakeWindow"

    monkeypatch.setattr(render, "_PROBED", [])
    monkeypatch.setattr(render, "_probe_backend", works)
    assert render.offscreen_backend() == render.offscreen_backend() == "vtkFakeWindow"
    assert calls == ["check"]

    def fails() -> str:
        calls.append("failing check")
        raise render.RenderUnavailableError("no OpenGL here")

    monkeypatch.setattr(render, "_PROBED", [])
    monkeypatch.setattr(render, "_probe_backend", fails)
    for _ in range(2):  # the report and the renderer both ask: the child process runs once
        with pytest.raises(render.RenderUnavailableError, match="no OpenGL"):
            render.offscreen_backend()
    assert calls.count("failing check") == 1


def test_writer_warmup_runs_the_render_check_once_and_imports_the_writers(monkeypatch) -> None:
    """``start_warmup`` (started when an analysis begins) runs the offscreen-render check in its own thread and
    imports the writers' modules; the report's later ``offscreen_backend`` waits for it and does not check
    again, and a second analysis in the process starts nothing."""
    import sys
    import threading

    from CovidCTLib import render
    from CovidCTLib.outputs import warmup

    threads: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def slow_check() -> str:
        threads.append(threading.current_thread().name)
        entered.set()
        release.wait(5)
        return "vtkFakeWindow"

    monkeypatch.setattr(render, "_PROBED", [])
    monkeypatch.setattr(render, "_probe_backend", slow_check)
    monkeypatch.setattr(warmup, "_STARTED", [])
    first = warmup.start_warmup()
    assert warmup.start_warmup() is first  # once per process
    assert entered.wait(5)
    release.set()
    assert render.offscreen_backend() == "vtkFakeWindow"
    first.join(60)
    assert not first.is_alive() and threads == ["covidct-warmup"]
    assert all(name in sys.modules for name in warmup.WRITER_MODULES)
