"""Get the writers ready while the analysis runs: the offscreen-render check and the writers' imports.

``covidct analyze`` / ``demo`` and each batch worker call :func:`start_warmup` when an analysis begins. A daemon
thread runs the offscreen-OpenGL check of the report's 3-D picture (a child process, about a second) and
imports the writer-only packages (VTK and reportlab: about a second in a fresh process). The analysis keeps one
core busy most of the time, so this costs it little, and the writing that follows starts warm. Nothing is
computed ahead: the outputs are the same with or without it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading

LOG = logging.getLogger(__name__)

#: what the writers import on first use that the analysis itself never imports (VTK for the 3-D picture, reportlab
#: for the PDF). Only such packages are imported here: two threads importing one package whose modules import each
#: other (MONAI, matplotlib) can get a half-initialised module, so everything the analysis imports is left to it.
WRITER_MODULES = ("CovidCTLib.surfaces", "reportlab.platypus")
#: imported in the calling thread before the warm-up starts (shared by the writer packages and the analysis)
SHARED_FIRST = ("PIL.Image", "CovidCTLib.render")

_STARTED: list[threading.Thread] = []  # the one warm-up thread of this process
_LOCK = threading.Lock()


def start_warmup(reports: bool = True) -> threading.Thread:
    """Start the warm-up thread once per process (``reports``: also check offscreen rendering); return it."""
    with _LOCK:
        if not _STARTED:
            for name in SHARED_FIRST:
                importlib.import_module(name)
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
