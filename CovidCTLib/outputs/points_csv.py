"""Legacy point CSV for ParaView users: one row per lung voxel (and per ground-truth infection voxel).

Columns (header row, comma separated, no comment lines so every CSV reader accepts it):

``x,y,z`` voxel centre in LPS patient coordinates (mm, same space as the CT and the meshes);
``value`` predicted class of the voxel: 0 lung without infection, 1 ground-glass, 2 consolidation;
``lung`` 1 right / 2 left (0 for a ground-truth voxel outside the predicted lungs);
``ground_truth`` 0/1/2 like ``value`` (only when a ground-truth infection labelmap is given).

Loading it in ParaView: File > Open the .csv (CSV reader, "Have Headers" on), Apply; then Filters >
Alphabetical > Table To Points, X Column ``x``, Y Column ``y``, Z Column ``z``, Apply; colour by ``value``
(or ``ground_truth``) and use the Points representation. To see only infection, add a Threshold on ``value``
from 1 to 2. ``step`` > 1 keeps every step-th voxel along each axis (8x fewer rows for step 2).

Research software, not for diagnosis: the CSV carries no header comment (ParaView's CSV reader does not skip
comment lines), so keep it together with report.json, which states the software version and disclaimer.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from CovidCTLib.atomic import write_with


def _points(result, ground_truth: np.ndarray | None, step: int) -> tuple[np.ndarray, list[str]]:
    lungs = np.asarray(result.lungs)
    infection = np.asarray(result.infection)
    keep = lungs > 0
    if ground_truth is not None:
        ground_truth = np.asarray(ground_truth)
        if ground_truth.shape != lungs.shape:
            raise ValueError(f"ground truth shape {ground_truth.shape} differs from the lungs {lungs.shape}")
        keep = keep | (ground_truth > 0)
    if step > 1:
        grid = np.zeros_like(keep)
        grid[::step, ::step, ::step] = True
        keep &= grid
    z, y, x = np.nonzero(keep)
    image = result.ct.image
    matrix = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3) @ np.diag(image.GetSpacing())
    index = np.stack([x, y, z], axis=1).astype(np.float64)
    physical = index @ matrix.T + np.asarray(image.GetOrigin())
    columns = [physical, infection[z, y, x, None], lungs[z, y, x, None]]
    names = ["x", "y", "z", "value", "lung"]
    if ground_truth is not None:
        columns.append(ground_truth[z, y, x, None])
        names.append("ground_truth")
    return np.hstack([c.astype(np.float64) for c in columns]), names


def write_points_csv(
    result,
    path: str | os.PathLike,
    ground_truth_infection: np.ndarray | None = None,
    step: int = 1,
    overwrite: bool = True,
) -> Path:
    """Write the point CSV (see the module docstring for columns and how to open it in ParaView).

    Args:
        result: an AnalysisResult (its ct geometry, lungs and infection labelmaps are used).
        path: the .csv file to write (atomically).
        ground_truth_infection: optional ``(z, y, x)`` labelmap 0/1/2 to compare against.
        step: keep every step-th voxel along each axis (1 = all lung voxels).
    """
    if step < 1:
        raise ValueError("step must be 1 or more")
    table, names = _points(result, ground_truth_infection, int(step))
    formats = ["%.3f", "%.3f", "%.3f"] + ["%d"] * (len(names) - 3)

    def writer(tmp: Path) -> None:
        buffer = io.StringIO()
        np.savetxt(buffer, table, fmt=formats, delimiter=",", header=",".join(names), comments="")
        tmp.write_text(buffer.getvalue(), encoding="utf-8")

    return write_with(path, writer, overwrite)
