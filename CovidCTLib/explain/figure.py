"""The report picture of the explanation: the top slices with the heatmap, the infection outline and the
boxes of the hottest regions, each slice in the radiological view the classifier saw."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import SimpleITK as sitk

from CovidCTLib.models.runtime.classifier_inference import radiological_view

#: lung window (level, width) of the CT underneath
WINDOW = (-600.0, 1500.0)


def _box_on_slice(region: dict[str, Any], k: int, shape_yx: tuple[int, int], image: Any) -> tuple | None:
    """(x0, y0, width, height) in view pixels of a region's index box on slice ``k``; None when it misses it."""
    lo, hi = region["index_min"], region["index_max"]
    if not lo[2] <= k <= hi[2]:
        return None
    mask = np.zeros((1, *shape_yx), dtype=bool)
    mask[0, lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] = True
    view, _ = radiological_view(mask, mask, image)
    ys, xs = np.nonzero(view[0])
    return float(xs.min()) - 0.5, float(ys.min()) - 0.5, float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)


def explanation_png(
    ct: Any, infection: np.ndarray, heat: np.ndarray, explanation: dict[str, Any], n: int = 3, dpi: int = 110
) -> bytes | None:
    """PNG bytes of the first ``n`` top slices with heat, infection and boxes (None when there is no top slice)."""
    slices = (explanation or {}).get("top_slices") or []
    if not slices or heat is None:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    array = sitk.GetArrayViewFromImage(ct.image).reshape(ct.shape)  # a view: no copy of the CT
    spacing = ct.image.GetSpacing()
    picks = slices[:n]
    figure = Figure(figsize=(3.2 * len(picks), 3.5), dpi=dpi, facecolor="black")
    for slot, top in enumerate(picks):
        k = int(top["index"])
        view_ct, view_heat = radiological_view(array[k : k + 1], heat[k : k + 1], ct.image)
        _, view_inf = radiological_view(array[k : k + 1], np.asarray(infection[k : k + 1]), ct.image)
        ax = figure.add_subplot(1, len(picks), slot + 1)
        aspect = spacing[1] / spacing[0] if view_ct.shape[1:] == array.shape[1:] else spacing[0] / spacing[1]
        level, width = WINDOW
        vmin, vmax = (level - width / 2, level + width / 2) if ct.intensity == "HU" else (0.0, 255.0)
        ax.imshow(view_ct[0].astype(np.float32), cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect)
        shown = np.ma.masked_less(view_heat[0], 0.1)
        ax.imshow(shown, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55, aspect=aspect, interpolation="bilinear")
        if (view_inf[0] > 0).any():
            ax.contour(view_inf[0] > 0, levels=[0.5], colors=["cyan"], linewidths=0.7)
        for region in explanation.get("hot_regions") or []:
            box = _box_on_slice(region, k, array.shape[1:], ct.image)
            if box is not None:
                x0, y0, w, h = box
                ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor="lime", linewidth=1.2))
                ax.text(x0 + 1, y0 + 1, str(region["rank"]), color="lime", fontsize=8, va="top")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"slice {k}  z {top['z_mm']:.1f} mm  score {top['score']:.2f}", color="white", fontsize=8)
    figure.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.01, wspace=0.03)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor=figure.get_facecolor(), pil_kwargs={"compress_level": 1})
    return buffer.getvalue()
