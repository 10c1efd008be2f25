"""The records passed between the batch parts: a study, the analysis options, the outcome of one study.

All are plain dataclasses of built-in types so that they pickle to worker processes and Dask workers.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

#: outcome states: analysed now, already complete (``--resume``), failed, or killed at the timeout.
OK, SKIPPED, FAILED, TIMEOUT = "ok", "skipped", "failed", "timeout"


@dataclass(frozen=True)
class Study:
    """One job: an id (the output folder name), the input path, and for DICOM the chosen series' files."""

    id: str
    path: str
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnalysisOptions:
    """The analyze options applied to every study of a batch, plus the threads of one worker."""

    method: str = "auto"
    device: str = "auto"
    classify: bool = True
    harmonise_kernel: bool = True
    reports: bool = True
    dicom_seg: bool = True
    surfaces: str | None = None
    points_csv: bool = False
    include_identifiers: bool = False
    ggo_range: tuple[float, float] | None = None
    consolidation_range: tuple[float, float] | None = None
    threads: int = 1
    explain: bool = True  # the classifier's Grad-CAM explanation (issue 16.2)
    top_slices: int = 5
    heatmap: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The options as a JSON-friendly dict (for cohort.json)."""
        return asdict(self)


@dataclass
class Outcome:
    """What happened to one study."""

    id: str
    path: str
    status: str
    message: str = ""
    seconds: float = 0.0
    worker: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status in (OK, SKIPPED)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(text: str) -> str:
    """A folder-safe study id: runs of other characters become ``_``; never empty, never hidden."""
    cleaned = _UNSAFE.sub("_", text).strip("._") or "study"
    return cleaned[:120]


def unique_ids(ids: list[str]) -> list[str]:
    """Make ids unique (case-insensitively, for case-insensitive file systems) by appending -2, -3 ..."""
    seen: set[str] = set()
    out = []
    for base in ids:
        candidate, n = base, 1
        while candidate.lower() in seen:
            n += 1
            candidate = f"{base}-{n}"
        seen.add(candidate.lower())
        out.append(candidate)
    return out
