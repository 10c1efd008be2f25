"""Issue 15: the vectorised CLAHE gives scikit-image's ``equalize_adapthist`` values pixel for pixel.

The networks were trained on scikit-image CLAHE, so the faster implementation must not change their input:
odd and even sizes, tiles that do not divide the image, the shipped clip limit and others (no clipping, a
limit that triggers the one-count redistribution), flat regions and a CT slice of the phantom.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from skimage.exposure import equalize_adapthist

from CovidCTLib.imaging.clahe import equalize
from CovidCTLib.models.runtime.normalization import CLAHE_CLIP, HU_WINDOW, apply_clahe
from CovidCTLib.phantom import make_phantom


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    noise = rng.random((96, 128)).astype(np.float32)
    odd = rng.random((61, 77)).astype(np.float32)
    ramp = np.tile(np.linspace(0, 1, 100, dtype=np.float32), (90, 1))
    blocky = np.kron(rng.random((6, 6)), np.ones((20, 20))).astype(np.float32)  # flat tiles: large bins
    ct = sitk.GetArrayFromImage(make_phantom(shape=(8, 96, 96), seed=1).ct.image)[4].astype(np.float32)
    window = np.clip((ct - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]), 0, 1)
    return [noise, odd, ramp, blocky, window]


@pytest.mark.parametrize("clip", [CLAHE_CLIP, 0.01, 0.0, 0.3])
def test_equalize_equals_scikit_image(clip: float) -> None:
    for image in _images():
        expected = equalize_adapthist(image, clip_limit=clip)
        got = equalize(image, clip_limit=clip)
        assert got.dtype == np.float32 and got.shape == image.shape
        np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_apply_clahe_changes_contrast_and_keeps_the_range() -> None:
    image = _images()[4]
    out = apply_clahe(image)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, image, atol=0.02)  # it did equalise
    flat = np.full((40, 40), 0.3, np.float32)
    np.testing.assert_array_equal(apply_clahe(flat), flat)  # a constant image is left alone


def test_equalize_refuses_a_volume() -> None:
    with pytest.raises(ValueError, match="2-D"):
        equalize(np.zeros((2, 8, 8), np.float32))
