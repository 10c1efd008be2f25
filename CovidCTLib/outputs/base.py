"""The Writer protocol and the options that choose which outputs are written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class OutputOptions:
    """Which optional outputs to write (the ``analyze`` flags; see :data:`CovidCTLib.outputs.registry.OPTIONS`)."""

    reports: bool = True
    dicom_seg: bool = True
    surfaces: str | None = None
    points_csv: bool = False
    include_identifiers: bool = False
    heatmap: bool = True  # covid_heatmap.nii.gz when the classifier's heatmap was made (issue 16.2)


@dataclass(frozen=True)
class OutputOption:
    """One command-line flag of the outputs: ``dest`` is the :class:`OutputOptions` field it sets."""

    dest: str
    flag: str
    help: str
    store_false: bool = False  # a ``--no-...`` flag that turns a default-on output off
    choices: tuple[str, ...] | None = None  # a flag that takes one of these values


class Writer(Protocol):
    """One kind of output file (or folder of files) of an analysis."""

    name: str  # the role key (e.g. ``report_json``), also the key of the path dictionary

    def applies(self, result: Any, options: OutputOptions) -> bool:
        """Whether this output is written for ``result`` with ``options``."""
        ...

    def paths(self, result: Any, options: OutputOptions) -> list[str]:
        """The file (or folder) names this writer creates, relative to the output folder."""
        ...

    def write(self, result: Any, folder: Path, options: OutputOptions) -> list[Path]:
        """Write into ``folder`` (a fresh staging folder); return the paths written."""
        ...
