"""Issue 15 speed work: the faster paths give the same results as the plain ones.

The lung clean-up in one labelling pass, the networks' execution plan (channels-last, thresholding each slice as
it leaves the network), and the cheaper .seg.nrrd / PDF encodings.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage as ndi

from CovidCTLib.imaging.grid import label_counts
from CovidCTLib.io.seg_nrrd import read_seg_nrrd, write_seg_nrrd
from CovidCTLib.models.runtime import execution, inference
from CovidCTLib.models.runtime.registry import LoadedModel
from CovidCTLib.phantom import make_phantom
from CovidCTLib.pipeline import analyze
from CovidCTLib.segmentation import postprocess


def _solid_per_slice(mask: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """The reference: every slice labelled on its own, each component's median HU from ndimage."""
    out = np.zeros(mask.shape, bool)
    for z in range(mask.shape[0]):
        lab, n = ndi.label(mask[z])
        if n == 0:
            continue
        medians = np.atleast_1d(ndi.median(hu[z], lab, range(1, n + 1)))
        for i, m in enumerate(medians, start=1):
            if m > postprocess.SOLID_COMPONENT_HU:
                out[z][lab == i] = True
    return out


def test_solid_components_in_one_pass_match_per_slice_labelling() -> None:
    rng = np.random.default_rng(0)
    for _ in range(12):
        mask = ndi.binary_opening(rng.random((10, 36, 36)) > 0.45)
        hu = rng.integers(-1000, 300, size=mask.shape).astype(np.int16)
        hu[rng.random(mask.shape) < 0.4] = int(postprocess.SOLID_COMPONENT_HU)  # medians exactly at the limit
        expected = _solid_per_slice(mask, hu)
        assert expected.any() and (mask & ~expected).any()  # the case has both kinds of component
        np.testing.assert_array_equal(postprocess._solid_slice_components(mask, hu), expected)


def test_fill_holes_3d_fills_enclosed_pockets_only() -> None:
    mask = np.zeros((9, 9, 9), bool)
    mask[1:8, 1:8, 1:8] = True
    mask[2:4, 2:4, 2:4] = False  # enclosed: filled
    mask[5:7, 5:7, 5:7] = False  # joined to the volume's face by a tunnel: stays open
    mask[6, 6, 0:6] = False
    out = postprocess.fill_holes_3d(mask)
    assert out[2:4, 2:4, 2:4].all()
    assert not out[5:7, 5:7, 5:7].any() and not out[6, 6, 1:6].any()
    np.testing.assert_array_equal(out[mask], True)


def _fill_by_background_labelling(mask: np.ndarray) -> np.ndarray:
    """The reference: background components (face-connected) that touch no face of the volume are holes."""
    background, n = ndi.label(~mask)
    border = np.zeros(n + 1, bool)
    for axis in range(3):
        for end in (0, -1):
            border[np.take(background, end, axis=axis).ravel()] = True
    return mask | ~border[background]


def test_size_ordered_simpleitk_components_and_hole_filling_equal_scipy() -> None:
    rng = np.random.default_rng(3)
    holes = 0
    for k in range(6):
        mask = ndi.binary_opening(rng.random((12, 30, 34)) > (0.35 + 0.05 * k))
        image, sizes = postprocess.components_by_size(mask)
        labels = sitk.GetArrayFromImage(image)
        expected, expected_count = ndi.label(mask)
        assert len(sizes) == expected_count > 1 and np.all(np.diff(sizes) <= 0)  # numbered by size, largest first
        np.testing.assert_array_equal(label_counts(labels, len(sizes) + 1)[1:], sizes)
        for label in range(1, len(sizes) + 1):  # every component is one of scipy's, whole
            component = labels == label
            assert (
                len(np.unique(expected[component])) == 1
                and (expected == expected[component][0]).sum() == sizes[label - 1]
            )
        filled = postprocess.fill_holes_3d(mask)
        np.testing.assert_array_equal(filled, _fill_by_background_labelling(mask))
        holes += int(filled.sum() - mask.sum())
    assert holes > 0  # the masks had enclosed pockets to fill


def test_execution_plans_per_device_and_network() -> None:
    cpu_attention = execution.plan_for("cpu", "attention-unet")
    cpu_unet = execution.plan_for("cpu", "unet")
    cuda = execution.plan_for("cuda:0", "unet")
    assert cpu_attention.channels_last and not cpu_attention.autocast and not cpu_attention.pin_memory
    assert not cpu_unet.channels_last
    assert cuda.autocast and cuda.pin_memory and cuda.device == "cuda:0"
    batch = execution.to_batch(np.zeros((2, 1, 8, 8), np.float64), cpu_attention)
    assert batch.dtype == torch.float32 and batch.is_contiguous(memory_format=torch.channels_last)
    with execution.running(cpu_unet):
        assert torch.is_inference_mode_enabled()
    assert not torch.is_inference_mode_enabled()


def _toy(network: str) -> LoadedModel:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3, padding=1))
    manifest = {"input": {"size": 16}, "postprocess": {}, "architecture": {"network": network}}
    return LoadedModel("toy", net.eval(), manifest)


def test_channels_last_and_per_slice_reduction_give_the_same_probabilities() -> None:
    x = list(np.random.default_rng(1).random((5, 1, 16, 16)).astype(np.float32))
    shapes = [(40, 40)] * 4 + [(24, 30)]  # one batch resize for equal shapes, one slice on its own
    plain = inference._predict_probs(_toy("unet"), x, shapes)
    fast = inference._predict_probs(_toy("attention-unet"), x, shapes)  # channels-last on the CPU
    assert [p.shape for p in plain] == [(2, 40, 40)] * 4 + [(2, 24, 30)]
    for a, b in zip(plain, fast, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    masks = inference._predict_probs(_toy("unet"), x, shapes, reduce=lambda p: p[1] >= 0.5)
    for p, m in zip(plain, masks, strict=True):
        assert m.dtype == bool
        np.testing.assert_array_equal(m, p[1] >= 0.5)


@pytest.fixture(scope="module")
def small_result():
    phantom = make_phantom(shape=(24, 48, 48), spacing=(4.0, 3.0, 3.0), seed=2)
    return analyze(phantom.ct, method="classical", device="cpu", classify=False)


def test_seg_nrrd_level_1_reads_back_and_still_refuses_values_over_255(tmp_path) -> None:
    image = sitk.Image([6, 5, 4], sitk.sitkInt16)
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # oblique in-plane
    lungs = np.zeros((4, 5, 6), np.uint8)
    lungs[1:3, 1:4, 1:3], lungs[1:3, 1:4, 3:5] = 1, 2
    infection = np.zeros_like(lungs)
    infection[2, 2, 1] = 2
    path = write_seg_nrrd(lungs, infection, image, tmp_path / "a.seg.nrrd")
    back_lungs, back_infection, reference, _ = read_seg_nrrd(path)
    np.testing.assert_array_equal(back_lungs, lungs)
    np.testing.assert_array_equal(back_infection, infection)
    assert reference.GetDirection() == image.GetDirection()
    raw = path.read_bytes()
    body = raw[raw.index(b"\n\n") + 2 :]
    assert gzip.decompress(body) == np.stack([lungs, infection], -1).tobytes()
    with pytest.raises(ValueError, match="fit in uint8"):
        write_seg_nrrd(lungs.astype(np.int16) * 200, infection, image, tmp_path / "b.seg.nrrd")


def test_pdf_is_built_with_binary_streams_and_leaves_reportlab_settings_alone(tmp_path, small_result) -> None:
    from reportlab import rl_config

    from CovidCTLib.outputs.html_pdf import write_pdf_report

    before = rl_config.useA85
    path = write_pdf_report(small_result, tmp_path / "report.pdf")
    assert rl_config.useA85 == before
    data = path.read_bytes()
    assert data.startswith(b"%PDF") and b"/ASCII85Decode" not in data and b"/FlateDecode" in data
