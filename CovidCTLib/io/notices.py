"""Warnings: the loading notes a user must see, not only find in report.json (issue 12.11).

A warning is an ordinary note (so report.json, report.csv, the HTML/PDF report and the Slicer module keep
showing it with the other notes) that starts with :data:`WARNING_PREFIX`; the command line also prints every
warning on stderr (:func:`print_warnings`) and lists them in the ``done`` JSON event.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

WARNING_PREFIX = "WARNING: "


def warning(text: str) -> str:
    """A note marked as a warning."""
    return text if text.startswith(WARNING_PREFIX) else WARNING_PREFIX + text


def warnings_in(notes: Iterable[str]) -> list[str]:
    """The warnings among ``notes``, without the prefix."""
    return [str(n)[len(WARNING_PREFIX) :] for n in notes if str(n).startswith(WARNING_PREFIX)]


def print_warnings(notes: Iterable[str], stream: TextIO | None = None) -> list[str]:
    """Print each warning as one ``covidct: warning: ...`` line (stderr by default); return them."""
    found = warnings_in(notes)
    for text in found:
        print(f"covidct: warning: {text}", file=stream or sys.stderr)
    return found


def unreadable_files_warning(where: str | Path, unreadable: list[tuple[Path, str]]) -> str:
    """Warning for files that looked like DICOM but could not be read and were left out of the volume."""
    names = ", ".join(p.name for p, _ in unreadable[:3]) + (" ..." if len(unreadable) > 3 else "")
    why = unreadable[0][1][:120]
    return warning(
        f"{len(unreadable)} file(s) of {where} could not be read and were left out ({names}: {why}). If they are "
        "slices of this series, the volume is missing them at its top or bottom (a gap inside the stack would "
        "have been refused), so lung and lesion volumes may be too small. Re-copy the series to analyse all of it."
    )
