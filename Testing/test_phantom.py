"""The synthetic phantom: determinism, orientation conventions, truth-mask consistency, writing."""

from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.phantom import make_phantom


def test_default_phantom_fast_and_typed():
    start = time.perf_counter()
    ph = make_phantom()
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0  # < 1 s on an idle core; margin for a busy CI machine
    assert ph.ct.shape == (64, 128, 128)
    assert ph.ct.intensity == "HU"
    assert ph.ct.image.GetSpacing() == (1.5, 1.5, 2.5)
    assert ph.ct.source.startswith("phantom:seed=0")
    assert ph.lungs.dtype == np.uint8 and ph.infection.dtype == np.uint8
    assert set(np.unique(ph.lungs)) == {0, 1, 2}
    assert set(np.unique(ph.infection)) == {0, 1, 2}
    hu = ph.ct.array
    assert hu.min() >= -1024 and 500 < hu.max() < 1000  # air .. bone


def test_deterministic_for_seed_and_varies_with_seed():
    a, b, c = make_phantom((32, 64, 64), seed=3), make_phantom((32, 64, 64), seed=3), make_phantom((32, 64, 64), seed=4)
    assert np.array_equal(a.ct.array, b.ct.array)
    assert np.array_equal(a.infection, b.infection)
    assert not np.array_equal(a.ct.array, c.ct.array)


def test_orientation_right_lung_small_x_apex_high_z():
    ph = make_phantom((48, 96, 96))
    right = ndimage.center_of_mass(ph.lungs == 1)
    left = ndimage.center_of_mass(ph.lungs == 2)
    assert right[2] < 48 < left[2]  # right lung at small x (patient right = -x in LPS)
    # the physical x of the right lung is negative (patient right) with the identity direction
    pr = ph.ct.image.TransformContinuousIndexToPhysicalPoint((right[2], right[1], right[0]))
    assert pr[0] < 0
    # the trachea (airways) enters from the top: airway voxels reach the highest slice
    assert ph.airways[-1].any() and not ph.airways[0].any()
    assert right[0] > 10 and left[0] > 10


def test_truth_masks_consistent():
    ph = make_phantom((48, 96, 96))
    hu = ph.ct.array.astype(float)
    assert not np.any((ph.infection > 0) & (ph.lungs == 0))
    assert not np.any((ph.airways > 0) & (ph.lungs > 0))
    assert np.all(ph.lungs[ph.vessels > 0] > 0)
    # the lungs touch somewhere (anterior junction): a right voxel 6-adjacent to a left voxel
    touching = (ph.lungs[:, :, :-1] == 1) & (ph.lungs[:, :, 1:] == 2)
    assert touching.sum() > 20
    # densities
    parenchyma = (ph.lungs > 0) & (ph.infection == 0) & (ph.vessels == 0)
    assert -900 < np.median(hu[parenchyma]) < -800
    assert -650 < np.median(hu[ph.infection == 1]) < -450
    assert np.median(hu[ph.infection == 2]) > -150
    assert np.median(hu[ph.airways > 0]) < -900
    # both lungs have lesions; one dense pleural consolidation
    assert {les["lung"] for les in ph.lesions} == {"right", "left"}
    pleural = [les for les in ph.lesions if les["pleural"]]
    assert len(pleural) == 1 and pleural[0]["type"] == "consolidation"
    total = sum(les["volume_ml"] for les in ph.lesions)
    truth = np.count_nonzero(ph.infection) * ph.ct.voxel_volume_ml
    assert abs(total - truth) / truth < 0.02


def test_no_lesions_and_noise_free():
    ph = make_phantom((32, 64, 64), lesions=False, noise=0.0)
    assert not ph.infection.any() and ph.lesions == []


def test_oblique_geometry_and_write(tmp_path):
    ph = make_phantom((32, 64, 64), oblique=True)
    direction = np.array(ph.ct.image.GetDirection()).reshape(3, 3)
    assert not np.allclose(direction, np.eye(3))
    assert np.allclose(direction @ direction.T, np.eye(3), atol=1e-9)
    assert np.linalg.norm(ph.ct.image.GetOrigin()) > 1.0
    # the z axis still points mostly superior
    assert direction[2, 2] > 0.9
    les = ph.lesions[0]
    zc, yc, xc = les["centre_voxel"]
    assert np.allclose(ph.ct.image.TransformContinuousIndexToPhysicalPoint((xc, yc, zc)), les["centre_mm"])
    paths = ph.write(tmp_path)
    back = sitk.ReadImage(str(paths["lungs"]))
    assert np.allclose(back.GetDirection(), ph.ct.image.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(back), ph.lungs)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(paths["ct"]))), ph.ct.array)
