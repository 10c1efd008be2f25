"""Classical lung and infection segmentation against the phantom's known answer."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.classical import (
    InfectionThresholds,
    segment_infection_classical,
    segment_lungs_classical,
    split_right_left,
)
from CovidCTLib.errors import AnalysisError, CancelledError, InputError
from CovidCTLib.phantom import make_phantom
from CovidCTLib.progress import CancelToken, Reporter
from CovidCTLib.volume import CTVolume

SHAPE = (48, 96, 96)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def flipped(ct: CTVolume, axis: int) -> CTVolume:
    """The same physical scan stored with array axis ``axis`` (z, y, x order) reversed."""
    array = np.flip(ct.array, axis=axis).copy()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(ct.image.GetSpacing())
    direction = np.array(ct.image.GetDirection()).reshape(3, 3)
    column = 2 - axis
    n = ct.shape[axis]
    origin = np.array(ct.image.GetOrigin()) + direction[:, column] * ct.image.GetSpacing()[column] * (n - 1)
    direction[:, column] *= -1
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin(tuple(origin))
    return CTVolume(image=image, intensity="HU", source=f"{ct.source}:flip{axis}")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, seed=2)


@pytest.fixture(scope="module")
def lungs(phantom):
    return segment_lungs_classical(phantom.ct)


@pytest.fixture(scope="module")
def infection(phantom, lungs):
    return segment_infection_classical(phantom.ct, lungs)


def test_lung_volumes_and_dice(phantom, lungs):
    v = phantom.ct.voxel_volume_ml
    assert lungs.dtype == np.uint8 and lungs.shape == phantom.lungs.shape
    assert dice(lungs > 0, phantom.lungs > 0) > 0.95
    for side in (1, 2):
        assert dice(lungs == side, phantom.lungs == side) > 0.95
        truth_ml = np.count_nonzero(phantom.lungs == side) * v
        seg_ml = np.count_nonzero(lungs == side) * v
        assert abs(seg_ml - truth_ml) / truth_ml < 0.03


def test_right_left_correct_where_lungs_touch(phantom, lungs):
    truth = phantom.lungs
    touching = np.zeros(truth.shape, dtype=bool)
    contact = (truth[:, :, :-1] == 1) & (truth[:, :, 1:] == 2)
    touching[:, :, :-1] |= contact
    touching[:, :, 1:] |= contact
    assert touching.sum() > 10
    zone = ndimage.binary_dilation(touching, iterations=2) & (truth > 0)
    assert np.mean(lungs[zone] == truth[zone]) > 0.9


def test_airways_removed(phantom, lungs):
    airway = phantom.airways > 0
    assert np.count_nonzero(lungs[airway]) < 0.05 * np.count_nonzero(airway)


def test_dense_pleural_consolidation_kept_in_lung(phantom, lungs):
    pleural = [les for les in phantom.lesions if les["pleural"]][0]
    lab, n = ndimage.label(phantom.infection == 2)
    centres = np.array(ndimage.center_of_mass(np.ones_like(lab), lab, range(1, n + 1)))
    nearest = int(np.argmin(np.linalg.norm(centres - np.array(pleural["centre_voxel"]), axis=1))) + 1
    region = lab == nearest
    assert region.sum() > 50
    hu = phantom.ct.array
    # a plain threshold would leave the dense consolidation outside the lung...
    assert np.mean(hu[region] < -320) < 0.1
    # ...the classical segmentation keeps most of it inside
    assert np.mean(lungs[region] > 0) > 0.6


def test_infection_volumes_within_tolerance(phantom, lungs, infection):
    v = phantom.ct.voxel_volume_ml
    assert infection.dtype == np.uint8
    assert not np.any((infection > 0) & (lungs == 0))
    truth_ggo = np.count_nonzero(phantom.infection == 1) * v
    truth_con = np.count_nonzero(phantom.infection == 2) * v
    seg_ggo = np.count_nonzero(infection == 1) * v
    seg_con = np.count_nonzero(infection == 2) * v
    # partial-volume edges count as ground glass (-750..-300 HU): GGO runs high, consolidation low
    assert 0.85 * truth_ggo < seg_ggo < 1.4 * truth_ggo
    assert 0.45 * truth_con < seg_con < 1.2 * truth_con
    assert dice(infection > 0, phantom.infection > 0) > 0.8
    # every truth lesion is found
    lab, n = ndimage.label(phantom.infection > 0)
    for k in range(1, n + 1):
        assert np.mean(infection[lab == k] > 0) > 0.5


def test_no_lesions_gives_little_infection():
    ph = make_phantom(SHAPE, seed=4, lesions=False)
    lungs = segment_lungs_classical(ph.ct)
    infection = segment_infection_classical(ph.ct, lungs)
    assert np.count_nonzero(infection) < 0.01 * np.count_nonzero(lungs)


def test_thresholds_change_result(phantom, lungs):
    strict = InfectionThresholds(ggo_min_hu=-600.0)
    fewer = segment_infection_classical(phantom.ct, lungs, strict)
    default = segment_infection_classical(phantom.ct, lungs)
    assert np.count_nonzero(fewer == 1) < np.count_nonzero(default == 1)
    with pytest.raises(InputError):
        segment_infection_classical(phantom.ct, lungs, InfectionThresholds(ggo_min_hu=-200.0))


def test_oblique_phantom():
    ph = make_phantom(SHAPE, seed=1, oblique=True)
    lungs = segment_lungs_classical(ph.ct)
    for side in (1, 2):
        assert dice(lungs == side, ph.lungs == side) > 0.95


def test_flipped_axes_keep_patient_sides(phantom, lungs):
    """x reversed: the right lung is now at the LARGE x indices; z reversed: apex at index 0."""
    for axis in (2, 0):
        ct = flipped(phantom.ct, axis)
        seg = segment_lungs_classical(ct)
        truth = np.flip(phantom.lungs, axis=axis)
        for side in (1, 2):
            assert dice(seg == side, truth == side) > 0.95
        assert np.count_nonzero(seg[np.flip(phantom.airways, axis=axis) > 0]) < 0.05 * phantom.airways.sum()
    # the flipped-x right lung has larger x indices than the left one
    seg = segment_lungs_classical(flipped(phantom.ct, 2))
    assert ndimage.center_of_mass(seg == 1)[2] > ndimage.center_of_mass(seg == 2)[2]


def test_split_right_left_on_binary_masks(phantom):
    split = split_right_left(phantom.lungs > 0, phantom.ct)
    assert np.mean(split[phantom.lungs > 0] == phantom.lungs[phantom.lungs > 0]) > 0.98
    ct_x = flipped(phantom.ct, 2)
    truth_x = np.flip(phantom.lungs, axis=2)
    split_x = split_right_left(truth_x > 0, ct_x)
    assert np.mean(split_x[truth_x > 0] == truth_x[truth_x > 0]) > 0.98
    assert not split_right_left(np.zeros(SHAPE, bool), phantom.ct).any()
    with pytest.raises(InputError):
        split_right_left(np.zeros((3, 3, 3), bool), phantom.ct)


def test_split_on_a_coarsened_grid():
    """Thin slices / small pixels exercise the coarse-grid path and the transfer back to full resolution."""
    ph = make_phantom((64, 160, 160), spacing=(2.0, 0.9, 0.9), seed=3)
    split = split_right_left(ph.lungs > 0, ph.ct)
    assert np.mean(split[ph.lungs > 0] == ph.lungs[ph.lungs > 0]) > 0.98
    lungs = segment_lungs_classical(ph.ct)
    for side in (1, 2):
        assert dice(lungs == side, ph.lungs == side) > 0.93


def test_bad_inputs(phantom):
    eight_bit = CTVolume(image=sitk.Cast(phantom.ct.image, sitk.sitkUInt8), intensity="8bit", source="png")
    with pytest.raises(InputError):
        segment_lungs_classical(eight_bit)
    solid = sitk.GetImageFromArray(np.full((20, 40, 40), 40, dtype=np.int16))
    with pytest.raises(AnalysisError):
        segment_lungs_classical(CTVolume(image=solid, intensity="HU", source="solid"))
    with pytest.raises(InputError):
        segment_infection_classical(phantom.ct, np.zeros((2, 2, 2), np.uint8))


def test_progress_and_cancel(phantom):
    events = []
    reporter = Reporter(events.append)
    reporter.stage("lungs", 0.0, 0.5)
    segment_lungs_classical(phantom.ct, reporter=reporter)
    assert len(events) >= 4 and all(0.0 <= e.fraction <= 0.5 for e in events)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        segment_lungs_classical(phantom.ct, reporter=Reporter(None, token))


def _lung_window_uint8(hu: np.ndarray) -> np.ndarray:
    return (np.clip((hu + 1000.0) / 1000.0, 0.0, 1.0) * 255).astype(np.uint8)


def test_slices2d_on_phantom_slices(phantom):
    from CovidCTLib.classical.slices2d import segment_slice_classical

    hu = phantom.ct.array
    # a slice through the mixed lesion (GGO halo around a consolidation core)
    mixed = [les for les in phantom.lesions if les["type"] == "mixed"][0]
    z = int(round(mixed["centre_voxel"][0]))
    image = _lung_window_uint8(hu[z])
    lung = segment_slice_classical(image, "lung")
    assert lung.dtype == np.uint8 and set(np.unique(lung)) <= {0, 1}
    assert dice(lung > 0, phantom.lungs[z] > 0) > 0.9
    infection = segment_slice_classical(image, "infection")
    truth = phantom.infection[z] > 0
    assert dice(infection > 0, truth) > 0.6
    types = segment_slice_classical(np.stack([image] * 3, axis=-1), "lesion-type")
    assert set(np.unique(types)) <= {0, 1, 2}
    core = phantom.infection[z] == 2
    assert np.mean(types[core] == 2) > 0.5
    assert np.mean(types[(phantom.infection[z] == 1)] == 1) > 0.4
    assert not segment_slice_classical(np.zeros((64, 64), np.uint8), "lung").any()
    with pytest.raises(InputError):
        segment_slice_classical(image, "vessels")


def test_volume_stored_with_permuted_axes(phantom, lungs):
    """Same scan stored with the cranio-caudal axis as array axis 1 (e.g. a coronal stack)."""
    image = sitk.PermuteAxes(phantom.ct.image, [0, 2, 1])
    seg = segment_lungs_classical(CTVolume(image=image, intensity="HU", source="permuted"))
    labelmap = sitk.GetImageFromArray(seg)
    labelmap.CopyInformation(image)
    back = sitk.GetArrayFromImage(sitk.PermuteAxes(labelmap, [0, 2, 1]))
    for side in (1, 2):
        assert dice(back == side, lungs == side) > 0.98
