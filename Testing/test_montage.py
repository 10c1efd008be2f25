"""The report's slice montages (drawn with numpy and Pillow): orientation, colours and layout in the pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from CovidCTLib import montage, render
from CovidCTLib.labels import SEGMENTS
from CovidCTLib.phantom import make_phantom

COLORS = {spec.key: tuple(int(round(255 * c)) for c in spec.color) for spec in SEGMENTS}


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _where(picture: np.ndarray, color: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.nonzero(np.all(picture == np.array(color, np.uint8), axis=2))


def _superior_right_consolidation(phantom) -> np.ndarray:
    """Consolidation in the upper quarter (physical S, LPS +z) of the right lung only."""
    image = phantom.ct.image
    k, j, i = np.indices(phantom.lungs.shape)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    z_mm = image.GetOrigin()[2] + (direction[2] * spacing) @ np.stack([i.ravel(), j.ravel(), k.ravel()])
    z_mm = z_mm.reshape(phantom.lungs.shape)
    right = phantom.lungs == 1
    top = np.quantile(z_mm[right], 0.75)
    return np.where(right & (z_mm >= top), 2, 0).astype(np.uint8)


@pytest.mark.parametrize("oblique", [False, True])
def test_montage_shows_patient_right_on_the_left_superior_up_in_the_lung_colours(oblique):
    phantom = make_phantom(shape=(32, 64, 64), spacing=(3.0, 2.5, 2.5), seed=4, oblique=oblique, lesions=False)
    infection = _superior_right_consolidation(phantom)
    for plane in ("axial", "coronal"):
        picture = _pixels(render.overlay_montage_png(phantom.ct, phantom.lungs, infection, plane, n=1, columns=1))
        assert picture.shape == (montage.TILE[1] + montage.TITLE_HEIGHT + 2 * montage.MARGIN, montage.TILE[0] + 10, 3)
        right_rows, right_cols = _where(picture, COLORS["right_lung"])
        left_rows, left_cols = _where(picture, COLORS["left_lung"])
        assert right_cols.size > 20 and left_cols.size > 20, plane  # both outlines drawn in their colours
        assert right_cols.mean() < left_cols.mean(), plane  # patient right on the image left
        # consolidation: filled (blended with the grey CT, so redder than it is green or blue), right lung only
        red = (picture[..., 0].astype(int) - picture[..., 1] > 60) & (
            picture[..., 0].astype(int) - picture[..., 2] > 60
        )
        fill_rows, fill_cols = np.nonzero(red)
        assert fill_cols.size > 20, plane
        assert fill_cols.max() < (right_cols.max() + left_cols.min()) / 2, plane
        if plane == "coronal":  # superior at the top: the fill lies in the upper part of the right lung
            assert fill_rows.mean() < right_rows.mean(), plane


def test_tile_keeps_the_physical_aspect_and_fits_the_box():
    grey = np.zeros((40, 100), np.float32)
    tile = montage.Tile(
        grey, np.zeros((40, 100), np.uint8), np.zeros((40, 100), np.uint8), 2.0, "t", ("R", "L", "A", "P")
    )
    picture = montage.render_tile(tile, (0.0, 1.0), {}, {})
    height, width = picture.shape[:2]
    assert max(height, width) == max(montage.TILE) and abs(height / width - 0.8) < 0.02  # 40 rows x 2 / 100


def test_outline_is_the_inner_border_only():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    edge = montage.outline(mask)
    assert edge.sum() == 16 and not edge[2:5, 2:5].any() and not edge[~mask].any()


def test_explanation_picture_shows_heat_infection_outline_and_the_hot_box() -> None:
    """The report's explanation picture (Pillow): one tile per top slice, the heat in warm colours where it is
    high, the infection outline in cyan and each hot region's box in green."""
    from io import BytesIO

    from PIL import Image

    from CovidCTLib.explain.figure import BOX_COLOUR, INFECTION_COLOUR, explanation_png
    from CovidCTLib.montage import MARGIN, TILE
    from CovidCTLib.phantom import make_phantom

    ph = make_phantom(shape=(16, 96, 96), seed=3)
    heat = np.zeros(ph.ct.shape, np.float32)
    heat[8, 30:50, 20:40] = 1.0  # one hot square on slice 8
    infection = np.zeros(ph.ct.shape, np.uint8)
    infection[8, 60:75, 60:75] = 1
    region = {"rank": 1, "index_min": [20, 30, 8], "index_max": [39, 49, 8]}  # (x, y, z)
    explanation = {
        "top_slices": [{"index": 8, "z_mm": 0.0, "score": 0.9}, {"index": 4, "z_mm": -10.0, "score": 0.5}],
        "hot_regions": [region],
    }
    picture = np.asarray(Image.open(BytesIO(explanation_png(ph.ct, infection, heat, explanation))).convert("RGB"))
    assert picture.shape[1] == 2 * (TILE[0] + 2 * MARGIN)
    first = picture[:, : TILE[0] + 2 * MARGIN]
    assert (first == INFECTION_COLOUR).all(axis=-1).sum() > 20
    assert (first == BOX_COLOUR).all(axis=-1).sum() > 40
    warm = (first[..., 0].astype(int) - first[..., 2].astype(int)) > 30  # yellow-orange over grey: red above blue
    assert warm.sum() > 1000  # most of the hot square (about 67 x 67 picture pixels)
    second = picture[:, TILE[0] + 2 * MARGIN :]
    assert not (second == BOX_COLOUR).all(axis=-1).any()  # the region is on slice 8 only
    assert explanation_png(ph.ct, infection, heat, {"top_slices": []}) is None
