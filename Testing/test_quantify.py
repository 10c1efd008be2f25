"""Quantification: volumes, patient-space zones, severity bins and the lesion list."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

from CovidCTLib.errors import InputError
from CovidCTLib.phantom import make_phantom
from CovidCTLib.quantify import quantify, severity_from_percent
from CovidCTLib.volume import CTVolume


def make_ct(shape=(30, 20, 40), spacing_xyz=(1.0, 1.0, 2.0), flip_z=False, value=-850) -> CTVolume:
    image = sitk.GetImageFromArray(np.full(shape, value, dtype=np.int16))
    image.SetSpacing(spacing_xyz)
    if flip_z:
        image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    return CTVolume(image=image, intensity="HU", source="test")


def two_lungs(shape=(30, 20, 40)) -> np.ndarray:
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[:, 2:18, 2:18] = 1  # right lung: small x
    lungs[:, 2:18, 22:38] = 2
    return lungs


@pytest.mark.parametrize(
    ("percent", "score"),
    [
        (0.0, 0),
        (0.001, 1),
        (4.99, 1),
        (5.0, 2),
        (25.0, 2),
        (25.01, 3),
        (50.0, 3),
        (50.01, 4),
        (75.0, 4),
        (75.01, 5),
        (100.0, 5),
    ],
)
def test_severity_bins_at_boundaries(percent, score):
    assert severity_from_percent(percent) == score


def test_volumes_exact_on_known_masks():
    ct = make_ct()
    lungs = two_lungs()
    infection = np.zeros_like(lungs)
    infection[0:10, 5:10, 5:10] = 1  # 250 voxels GGO in the right lung
    infection[0:4, 5:10, 25:30] = 2  # 100 voxels consolidation in the left lung
    infection[0:2, 0, 0] = 1  # outside the lungs: ignored
    q = quantify(ct, lungs, infection)
    voxel_ml = 2.0 / 1000.0
    assert q["lungs"]["right_ml"] == pytest.approx(30 * 16 * 16 * voxel_ml)
    assert q["lungs"]["total_ml"] == pytest.approx(2 * 30 * 16 * 16 * voxel_ml)
    inf = q["infection"]
    assert inf["ggo_ml"] == pytest.approx(250 * voxel_ml)
    assert inf["consolidation_ml"] == pytest.approx(100 * voxel_ml)
    assert inf["right_ggo_ml"] == pytest.approx(250 * voxel_ml) and inf["right_consolidation_ml"] == 0
    assert inf["left_consolidation_ml"] == pytest.approx(100 * voxel_ml)
    assert inf["percent_of_lungs"] == pytest.approx(100 * 350 / (2 * 30 * 256))
    assert inf["right_percent"] == pytest.approx(100 * 250 / (30 * 256))
    assert len(q["zones"]) == 6
    assert sum(z["lung_ml"] for z in q["zones"]) == pytest.approx(q["lungs"]["total_ml"])
    assert q["severity_score"]["max"] == 30 and len(q["severity_score"]["per_zone"]) == 6


def test_zones_follow_patient_superior_also_when_z_is_flipped():
    lungs = two_lungs()
    infection = np.zeros_like(lungs)
    # identity direction: large z index = superior; infect the top 10 slices of the right lung
    infection[20:30, 2:18, 2:18] = 1
    q = quantify(make_ct(), lungs, infection)
    right = {z["zone"]: z for z in q["zones"] if z["lung"] == "right"}
    assert right["upper"]["percent"] == pytest.approx(100.0)
    assert right["upper"]["severity"] == 5 and right["lower"]["severity"] == 0
    assert q["severity_score"]["total"] == 5
    # the same slices in a z-reversed image are the most INFERIOR ones
    q_flip = quantify(make_ct(flip_z=True), lungs, infection)
    right = {z["zone"]: z for z in q_flip["zones"] if z["lung"] == "right"}
    assert right["lower"]["severity"] == 5 and right["upper"]["severity"] == 0
    assert q_flip["lesions"][0]["zone"] == "lower" and q["lesions"][0]["zone"] == "upper"


def test_lesion_list_types_sizes_positions():
    ct = make_ct()
    ct.image.SetOrigin((-10.0, 5.0, 100.0))
    lungs = two_lungs()
    infection = np.zeros_like(lungs)
    infection[2:8, 4:10, 4:10] = 1  # 216 voxels pure GGO (right)
    infection[12:16, 4:10, 24:34] = 2  # 240 voxels consolidation (left)
    infection[12:16, 4:10, 24:26] = 1  # -> 48 GGO + 192 consolidation: 80 % -> mixed
    infection[20:22, 12:14, 5:7] = 2  # 8 voxels: below the size limit
    infection[25:29, 12:16, 12:15] = 2  # 48 voxels pure consolidation (right)
    q = quantify(ct, lungs, infection, min_lesion_ml=0.05)
    lesions = q["lesions"]
    assert [les["id"] for les in lesions] == [1, 2, 3]
    assert [les["type"] for les in lesions] == ["mixed", "GGO", "consolidation"]
    assert [les["lung"] for les in lesions] == ["left", "right", "right"]
    assert lesions[0]["volume_ml"] == pytest.approx(240 * 0.002)
    assert lesions[0]["consolidation_fraction"] == pytest.approx(0.8)
    assert lesions[1]["mean_hu"] == pytest.approx(-850)
    assert lesions[1]["bbox_voxel"] == [[2, 4, 4], [7, 9, 9]]
    centre = lesions[1]["centroid_voxel"]
    assert centre == pytest.approx([4.5, 6.5, 6.5])
    expected = ct.image.TransformContinuousIndexToPhysicalPoint((6.5, 6.5, 4.5))
    assert lesions[1]["centroid_mm"] == pytest.approx(list(expected))
    assert lesions[1]["zone"] == "lower" and lesions[2]["zone"] == "upper"


def test_phantom_truth_lesion_types_and_zones():
    ph = make_phantom((48, 96, 96), seed=0)
    q = quantify(ph.ct, ph.lungs, ph.infection)
    assert sorted(les["type"] for les in q["lesions"]) == sorted(les["type"] for les in ph.lesions)
    for truth in ph.lesions:
        match = min(q["lesions"], key=lambda les: np.linalg.norm(np.subtract(les["centroid_mm"], truth["centre_mm"])))
        assert match["lung"] == truth["lung"]
        assert match["volume_ml"] == pytest.approx(truth["volume_ml"], rel=0.02)
    # lung totals equal the truth masks
    assert q["lungs"]["total_ml"] == pytest.approx(np.count_nonzero(ph.lungs) * ph.ct.voxel_volume_ml)


def test_shape_mismatch_is_an_input_error():
    with pytest.raises(InputError):
        quantify(make_ct(), np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), np.uint8))


def test_fast_on_a_large_volume():
    shape = (120, 256, 256)
    rng = np.random.default_rng(0)
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[:, 40:220, 20:125] = 1
    lungs[:, 40:220, 131:236] = 2
    blobs = rng.random(shape, dtype=np.float32) > 0.9995
    from scipy import ndimage

    infection = (ndimage.binary_dilation(blobs, iterations=3) & (lungs > 0)).astype(np.uint8)
    infection[infection > 0] += (rng.random(np.count_nonzero(infection)) > 0.7).astype(np.uint8)
    ct = make_ct(shape=shape, spacing_xyz=(0.7, 0.7, 1.25))
    start = time.perf_counter()
    q = quantify(ct, lungs, infection)
    assert time.perf_counter() - start < 10.0  # ~1-2 s on one idle core
    assert len(q["lesions"]) > 100
