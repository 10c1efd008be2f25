"""Side-by-side picture of comparisons (matplotlib, offscreen): baseline | follow-up as acquired |
follow-up registered onto the baseline | change map, with segmentation outlines."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from CovidCTLib.atomic import write_with
from CovidCTLib.longitudinal.change import CHANGE_COLORS, CHANGE_NAMES
from CovidCTLib.longitudinal.registration import as_registration_image, warp_image
from CovidCTLib.version import __version__


def _levels(result: Any, index: int, count: int) -> list[int]:
    """Axial indices with the most change (at least 10 slices apart when possible)."""
    change = result.changes[index]
    per_slice = ((change == 2) | (change == 3)).sum(axis=(1, 2)) + 0.01 * (result.baseline.lungs > 0).sum(axis=(1, 2))
    chosen: list[int] = []
    for z in np.argsort(per_slice)[::-1]:
        if all(abs(int(z) - c) >= 10 for c in chosen):
            chosen.append(int(z))
        if len(chosen) == count:
            break
    return sorted(chosen) or [0]


def _outline(ax: Any, mask: np.ndarray, color: Any, width: float = 0.8) -> None:
    if mask.any() and (~mask).any():
        ax.contour(mask.astype(float), [0.5], colors=[color], linewidths=width)


def write_side_by_side_png(
    items: Sequence[tuple[Any, str]], path: str | os.PathLike, rows_per_item: int = 2, overwrite: bool = True
) -> Path:
    """One row per chosen axial level of each ``(CompareResult, title)`` (last follow-up of each)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = []
    for result, title in items:
        index = len(result.timepoints) - 1
        base, follow = result.baseline, result.timepoints[index]
        reference = as_registration_image(base.ct.image)
        warped = warp_image(
            as_registration_image(follow.ct.image), reference, result.registrations[index].transform, -1000.0
        )
        warped_arr = sitk.GetArrayFromImage(warped).reshape(base.lungs.shape)
        levels = _levels(result, index, 1 if base.lungs.shape[0] == 1 else rows_per_item)
        for z in levels:
            zf = int(round(z * follow.lungs.shape[0] / max(base.lungs.shape[0], 1))) if follow.lungs.shape[0] > 1 else 0
            zf = min(zf, follow.lungs.shape[0] - 1)
            rows.append((title, z, zf, base, follow, warped_arr, result, index))
    fig = Figure(figsize=(13, 3.4 * len(rows)), dpi=90)
    window = dict(cmap="gray", vmin=-1200, vmax=300)
    for r, (title, z, zf, base, follow, warped_arr, result, index) in enumerate(rows):
        axes = [fig.add_subplot(len(rows), 4, 4 * r + c + 1) for c in range(4)]
        b_ct = base.ct.array[z]
        axes[0].imshow(b_ct, **window)
        _outline(axes[0], base.lungs[z] > 0, "lime")
        _outline(axes[0], base.infection[z] > 0, "red")
        axes[0].set_title(f"{title}\nbaseline {base.date or ''} (axial {z})", fontsize=8)
        axes[1].imshow(follow.ct.array[zf], **window)
        _outline(axes[1], follow.lungs[zf] > 0, "lime")
        _outline(axes[1], follow.infection[zf] > 0, "red")
        axes[1].set_title(f"follow-up {follow.date or ''} as acquired (axial {zf})", fontsize=8)
        axes[2].imshow(warped_arr[z], **window)
        _outline(axes[2], result.warped_lungs[index][z] > 0, "lime")
        _outline(axes[2], result.warped_infection[index][z] > 0, "red")
        q = result.report["timepoints"][index]["registration"]
        axes[2].set_title(
            f"follow-up registered to baseline\nlung Dice {q['lung_dice']:.3f}, "
            f"MSD {q['mean_surface_distance_mm']:.2f} mm",
            fontsize=8,
        )
        axes[3].imshow(b_ct, **window)
        overlay = np.zeros((*b_ct.shape, 4))
        for value in CHANGE_NAMES:
            overlay[result.changes[index][z] == value] = (*CHANGE_COLORS[value], 0.75)
        axes[3].imshow(overlay)
        _outline(axes[3], base.lungs[z] > 0, "lime", 0.5)
        verdict = result.report["overall"].get("total", "")
        axes[3].set_title(f"change on baseline grid (overall: {verdict})", fontsize=8)
        for ax in axes:
            ax.set_axis_off()
    handles = [Patch(color=CHANGE_COLORS[v], label=n) for v, n in CHANGE_NAMES.items()]
    handles += [Patch(color="lime", label="lung outline"), Patch(color="red", label="infection outline")]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8)
    fig.text(0.01, 0.005, f"CovidCT {__version__}: research software, not for diagnosis", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return write_with(path, lambda tmp: fig.savefig(str(tmp), format="png"), overwrite=overwrite)
