"""With no lung in the input, the networks and the classifier report "nothing found" (issue 12.1)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from required import require_module

from CovidCTLib.errors import AnalysisError
from CovidCTLib.phantom import make_phantom
from CovidCTLib.volume import CTVolume

require_module("torch")
inference = require_module("CovidCTLib.models.runtime.inference")
if not inference.models_available().get("infection"):
    pytest.skip("trained segmentation models not installed", allow_module_level=True)


def _body_without_lungs(shape: tuple[int, int, int] = (24, 96, 96)) -> CTVolume:
    """A plausible CT (soft-tissue body in air, noise) that holds no lung at all."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    body = ((y - shape[1] / 2) / (0.38 * shape[1])) ** 2 + ((x - shape[2] / 2) / (0.45 * shape[2])) ** 2 <= 1
    noise = np.random.default_rng(0).normal(0, 15, shape)
    hu = np.where(body, 40.0 + noise, -1000.0 + noise).astype(np.float32)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((2.0, 2.0, 5.0))
    return CTVolume(image=image, intensity="HU", source="body-without-lungs")


def _display_slice() -> np.ndarray:
    ct = make_phantom((16, 96, 96), spacing=(2.5, 2.0, 2.0), seed=1).ct
    return np.clip((ct.array[8] + 1350.0) / 1500.0 * 255.0, 0, 255).astype(np.uint8)


def test_slice_infection_is_empty_when_no_lung_is_found() -> None:
    """A slice whose lung mask is empty gets no infection (before: the whole image was searched)."""
    grey = _display_slice()
    (region,) = inference.slice_infection_probabilities([grey], [np.zeros(grey.shape, bool)], device="cpu")
    assert not region.labels(inference.infection_threshold("cpu")).any()


def test_volume_infection_is_empty_without_lungs() -> None:
    ct = make_phantom((16, 96, 96), spacing=(5.0, 2.0, 2.0), seed=1).ct
    infection = inference.segment_infection_model(ct, np.zeros(ct.shape, np.uint8), device="cpu")
    assert infection.shape == ct.shape and not infection.any()


@pytest.mark.parametrize("method", ["classical", "model"])
def test_analyze_of_a_ct_without_lungs_says_no_lung_found(method: str) -> None:
    from CovidCTLib.pipeline import analyze

    with pytest.raises(AnalysisError, match="(?i)no (air-filled )?lung.* found"):
        analyze(_body_without_lungs(), method=method, device="cpu")


def test_classifier_gives_no_probability_without_lungs() -> None:
    classifier = require_module("CovidCTLib.models.runtime.classifier_inference")
    if not classifier.classifier_available():
        pytest.skip("classifier not installed")
    ct = _body_without_lungs()
    with pytest.raises(AnalysisError, match="no lung found"):
        classifier.classify_scan(ct, np.zeros(ct.shape, np.uint8), device="cpu")


def test_2d_lung_clean_up_fills_gaps_but_not_an_enclosed_organ() -> None:
    """A vessel-sized gap of the network is filled; an organ seen enclosed in one slice (the liver dome) is not."""
    from CovidCTLib.segmentation.postprocess import clean_lung_mask_2d

    yy, xx = np.mgrid[:200, :200]
    lung = (yy - 100) ** 2 / 80**2 + (xx - 100) ** 2 / 60**2 <= 1.0
    dome = (yy - 110) ** 2 + (xx - 100) ** 2 <= 22**2  # ~10 % of the lung's area
    vessel = (yy - 60) ** 2 + (xx - 100) ** 2 <= 3**2  # well under 1 %
    speck = (yy - 5) ** 2 + (xx - 5) ** 2 <= 2**2
    cleaned = clean_lung_mask_2d((lung & ~dome & ~vessel) | speck)
    assert cleaned[vessel].all()
    assert not cleaned[dome].any()
    assert not cleaned[speck].any()
    assert cleaned.sum() == (lung & ~dome).sum()
    # every hole filled when the caller allows any size
    assert clean_lung_mask_2d(lung & ~dome & ~vessel, max_hole_share=1.0)[dome].all()
