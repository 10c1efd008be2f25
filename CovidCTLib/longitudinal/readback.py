"""A comparison read back from the files ``covidct compare`` wrote (how the Slicer module shows a comparison
that ran in a background process)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CovidCTLib.errors import InputError
from CovidCTLib.longitudinal.compare import CompareResult, TimePoint
from CovidCTLib.outputs.output_set import is_complete
from CovidCTLib.volume import CTVolume, same_geometry


@dataclass(frozen=True)
class StoredRegistration:
    """The follow-up-to-baseline transform of a stored comparison (its quality is in the report)."""

    transform: sitk.Transform


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.uint8)


def read_compare_outputs(outdir: str | os.PathLike, cts: list[CTVolume]) -> CompareResult:
    """The :class:`CompareResult` stored in ``outdir``; ``cts`` are the compared scans in the stored order.

    Refuses an incomplete output set and labelmaps that do not lie on their scan's grid.
    """
    outdir = Path(outdir)
    if not is_complete(outdir):
        raise InputError(f"{outdir} holds no complete comparison (the run was interrupted?); run it again.")
    report = json.loads((outdir / "compare.json").read_text(encoding="utf-8"))
    n = len(cts) - 1
    points = []
    for i, ct in enumerate(cts):
        lungs_path = outdir / f"timepoint_{i}_lungs.nii.gz"
        if not same_geometry(sitk.ReadImage(str(lungs_path)), ct.image):
            raise InputError(f"{lungs_path.name} does not lie on the grid of scan {i}; run the comparison again.")
        points.append(
            TimePoint(
                ct, _array(lungs_path), _array(outdir / f"timepoint_{i}_infection.nii.gz"), label=str(i), kind="stored"
            )
        )
    registrations: list[StoredRegistration | None] = [None]
    changes: list[np.ndarray | None] = [None]
    for i in range(1, n + 1):
        registrations.append(StoredRegistration(sitk.ReadTransform(str(outdir / f"transform_{i}.tfm"))))
        changes.append(_array(outdir / (f"change_{i}.nii.gz" if n > 1 else "change.nii.gz")))
    return CompareResult(
        points,
        str(report.get("order", "as given")),
        registrations,  # type: ignore[arg-type]
        [None] * (n + 1),
        [None] * (n + 1),
        changes,
        report,
    )
