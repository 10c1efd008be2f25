"""Get the writers ready while the analysis runs: the offscreen-render check and the writers' imports.

``covidct analyze`` / ``demo`` and each batch worker call :func:`start_warmup` when an analysis begins. A daemon
thread runs the offscreen-OpenGL check of the report's 3-D picture (a child process, about a second) and
imports the modules the writers need (VTK, matplotlib, reportlab, pydicom: about 2 s in a fresh process). The
analysis keeps one core busy most of the time, so this costs it little, and the writing that follows starts
warm. Nothing is computed ahead: the outputs are the same with or without it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading

LOG = logging.getLogger(__name__)

#: what the writers import on first use (the report pictures, the PDF, the DICOM SEG, the segmentation files)
WRITER_MODULES = (
    "CovidCTLib.surfaces",
    "CovidCTLib.render",
    "CovidCTLib.explain.figure",
    "matplotlib.figure",
    "CovidCTLib.outputs.html_pdf",
    "reportlab.platypus",
    "CovidCTLib.outputs.dicom_seg",
    "CovidCTLib.io.seg_nrrd",
)

_STARTED: list[threading.Thread] = []  # the one warm-up thread of this process
_LOCK = threading.Lock()


def start_warmup(reports: bool = True) -> threading.Thread:
    """Start the warm-up thread once per process (``reports``: also check offscreen rendering); return it."""
    with _LOCK:
        if not _STARTED:
            thread = threading.Thread(target=_warm_up, args=(reports,), name="covidct-warmup", daemon=True)
            _STARTED.append(thread)
            thread.start()
        return _STARTED[0]


def _warm_up(reports: bool) -> None:
    if reports:
        from CovidCTLib import render

        with contextlib.suppress(render.RenderUnavailableError):  # kept: the report says why, when it renders
            render.offscreen_backend()
    for name in WRITER_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a problem shows again, in context, when the writer imports it
            LOG.debug("warm-up import of %s failed: %s", name, exc)
