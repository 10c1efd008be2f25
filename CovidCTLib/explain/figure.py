"""The report picture of the explanation: the top slices with the heatmap, the infection outline and the
boxes of the hottest regions, each slice in the radiological view the classifier saw (numpy and Pillow, in the
montages' tile layout; matplotlib drew it in about 0.5 s, this in a few hundredths)."""

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


#: heat colour ramp (an inferno-like black - purple - red - orange - yellow), at heat 0, 0.25, 0.5, 0.75, 1
HEAT_RAMP = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float32)
#: heat below this is not drawn; above it the colour is blended in with HEAT_ALPHA
HEAT_FLOOR, HEAT_ALPHA = 0.1, 0.55
INFECTION_COLOUR, BOX_COLOUR = (0, 255, 255), (0, 255, 0)


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """``(..., 3)`` float32 RGB (0..255) of heat values 0..1 on :data:`HEAT_RAMP`."""
    position = np.clip(heat, 0.0, 1.0) * (len(HEAT_RAMP) - 1)
    low = np.minimum(position.astype(np.intp), len(HEAT_RAMP) - 2)
    t = (position - low)[..., None]
    return HEAT_RAMP[low] * (1 - t) + HEAT_RAMP[low + 1] * t


def _panel(grey: np.ndarray, heat: np.ndarray, infection: np.ndarray, aspect: float, window: tuple[float, float]):
    """One slice as an RGB picture fitted in a montage tile: CT, heat blended in, infection outline."""
    from PIL import Image

    from CovidCTLib.montage import grey_picture, outline, resize_labels

    rgb, size = grey_picture(grey, window, aspect)
    hot = np.asarray(
        Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    )
    where = hot >= HEAT_FLOOR
    rgb[where] = rgb[where] * (1 - HEAT_ALPHA) + heat_colours(hot[where]) * HEAT_ALPHA
    rgb[outline(resize_labels(np.asarray(infection) > 0, size))] = INFECTION_COLOUR
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def explanation_png(
    ct: Any, infection: np.ndarray, heat: np.ndarray, explanation: dict[str, Any], n: int = 3
) -> bytes | None:
    """PNG bytes of the first ``n`` top slices with heat, infection outline and the hot-region boxes (numpy and
    Pillow; None when there is no top slice)."""
    slices = (explanation or {}).get("top_slices") or []
    if not slices or heat is None:
        return None
    from PIL import Image, ImageDraw

    from CovidCTLib.montage import CELL, PNG_LEVEL, draw_text, font, tile_origin

    array = sitk.GetArrayViewFromImage(ct.image).reshape(ct.shape)  # a view: no copy of the CT
    spacing = ct.image.GetSpacing()
    level, width = WINDOW
    window = (level - width / 2, level + width / 2) if ct.intensity == "HU" else (0.0, 255.0)
    picks = slices[:n]
    canvas = Image.new("RGB", (CELL[0] * len(picks), CELL[1]), "black")
    draw = ImageDraw.Draw(canvas)
    text_font = font(11)
    for slot, top in enumerate(picks):
        k = int(top["index"])
        view_ct, view_heat = radiological_view(array[k : k + 1], heat[k : k + 1], ct.image)
        _, view_inf = radiological_view(array[k : k + 1], np.asarray(infection[k : k + 1]), ct.image)
        aspect = spacing[1] / spacing[0] if view_ct.shape[1:] == array.shape[1:] else spacing[0] / spacing[1]
        picture = _panel(view_ct[0], view_heat[0], view_inf[0], aspect, window)
        height, width_px = picture.shape[:2]
        x0, y0 = tile_origin(slot, len(picks), width_px, height)
        canvas.paste(Image.fromarray(picture), (x0, y0))
        sx, sy = width_px / view_ct.shape[2], height / view_ct.shape[1]  # view pixel -> picture pixel
        for region in explanation.get("hot_regions") or []:
            box = _box_on_slice(region, k, array.shape[1:], ct.image)
            if box is not None:
                bx, by, bw, bh = box
                left, upper = x0 + (bx + 0.5) * sx, y0 + (by + 0.5) * sy  # the box's pixel edges, drawn inside
                corners = [left, upper, left + bw * sx - 1, upper + bh * sy - 1]
                draw.rectangle([round(c) for c in corners], outline=BOX_COLOUR, width=1)
                draw.text(
                    (round(corners[0]) + 2, round(corners[1]) + 1), str(region["rank"]), fill=BOX_COLOUR, font=text_font
                )
        title = f"slice {k}  z {top['z_mm']:.1f} mm  score {top['score']:.2f}"
        draw_text(draw, (slot * CELL[0] + CELL[0] // 2, y0 - 3), title, text_font, (0.5, 1.0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()
