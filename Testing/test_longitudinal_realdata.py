"""Longitudinal comparison on real scans (skipped when /work/shared/data is absent).

* LIDC-IDRI-0001 (real chest CT, no COVID): two synthetic ground-glass lesions are painted into the lungs
  (baseline), then the follow-up is made with a known rigid + B-spline transform and known edits (lesion 0
  grown 4 mm, lesion 1 resolved, one new 12 mm lesion). Bounds: mean displacement error at the lung voxels
  < 1.5 mm (measured ~0.3-0.6 mm), new / resolved / persistent volumes within 20 % (measured < 10 %).
* COVID-19-NY-SBU: one axial HU slice per date for 10 patients. Every pair is registered in 2-D and a
  compare report is written; pairs failing the 2-D quality thresholds (slices at different levels, or no
  lung in the slice) are reported with verdicts "not assessable" (``check=False``), and refused with a clear
  message by default.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib.longitudinal import change as chg
from CovidCTLib.longitudinal.compare import TimePoint, compare
from CovidCTLib.longitudinal.quicklungs import quick_lungs
from CovidCTLib.longitudinal.registration import RegistrationError, resample_to_spacing
from CovidCTLib.longitudinal.synthetic import displacement_error_mm, known_transform, make_followup
from CovidCTLib.volume import CTVolume


def _paint_lesions(ct: sitk.Image, lungs: np.ndarray, radius_mm: float = 15.0):
    """Two ground-glass balls at the deepest point of each lung; returns (ct, infection, lesion list)."""
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    spacing = ct.GetSpacing()[::-1]
    infection = np.zeros(lungs.shape, np.uint8)
    lesions = []
    rng = np.random.default_rng(3)
    zz, yy, xx = np.indices(lungs.shape, dtype=np.float32)
    for label in (1, 2):
        depth = ndimage.distance_transform_edt(lungs == label, sampling=spacing)
        centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
        dist = np.sqrt(
            ((zz - centre[0]) * spacing[0]) ** 2
            + ((yy - centre[1]) * spacing[1]) ** 2
            + ((xx - centre[2]) * spacing[2]) ** 2
        )
        ball = (dist <= radius_mm) & (lungs == label)
        hu[ball] = -550.0 + rng.normal(0.0, 25.0, int(ball.sum()))
        infection[ball] = 1
        lesions.append({"centre_voxel": [float(c) for c in centre]})
    image = sitk.GetImageFromArray(np.rint(hu).astype(np.int16))
    image.CopyInformation(ct)
    return image, infection, lesions


@pytest.fixture(scope="module")
def lidc(shared_data):
    path = shared_data / "lidc_idri_chest_ct" / "LIDC-IDRI-0001.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} not available")
    # resampled to 2.5 mm in-plane (from 1.5 mm) to keep the test fast; still the real anatomy and HU
    ct = resample_to_spacing(sitk.ReadImage(str(path)), 2.5, sitk.sitkLinear, -1024.0)
    ct = sitk.Cast(ct, sitk.sitkInt16)
    lungs = quick_lungs(ct)
    return ct, lungs


def test_lidc_known_transform(lidc, tmp_path):
    ct, lungs = lidc
    image, infection, lesions = _paint_lesions(ct, lungs)
    base_ct = CTVolume(image, "HU", "LIDC-IDRI-0001 + painted lesions")
    transform = known_transform(
        image, rotation_deg=(2.0, -1.0, 5.0), shift_mm=(8.0, -5.0, 4.0), deformation_mm=2.0, seed=2
    )
    fu = make_followup(base_ct, lungs, infection, lesions, transform=transform, shrink_mm=0.0)
    assert fu.truth_ml["new"] > 5 and fu.truth_ml["resolved"] > 5 and fu.truth_ml["persistent"] > 5
    result = compare(
        [TimePoint(base_ct, lungs, infection, "baseline"), TimePoint(fu.ct, fu.lungs, fu.infection, "followup")],
        tmp_path / "out",
    )
    reg = result.registrations[1]
    mean, p95 = displacement_error_mm(reg.transform, fu.transform, image, lungs > 0, step=31)
    assert mean < 1.5, f"mean displacement error {mean:.2f} mm"
    assert p95 < 3.0
    assert reg.lung_dice > 0.95
    voxel_ml = base_ct.voxel_volume_ml
    for value, name in chg.CHANGE_NAMES.items():
        measured = float((result.change == value).sum()) * voxel_ml
        truth = fu.truth_ml[name]
        assert abs(measured - truth) <= 0.2 * truth, (name, measured, truth)
    left = result.report["changes"][0]["regions_vs_baseline"]["left"]
    assert left["percent_change_points"] < 0  # the left lesion resolved (under 1 point: "stable")
    assert result.report["changes"][0]["regions_vs_baseline"]["right"]["percent_change_points"] > 0
    assert (tmp_path / "out" / "change.seg.nrrd").exists()


def _pairs(shared_data):
    root = shared_data / "sbu_two_timepoint_slices"
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    return [(p.name, sorted(p.glob("*.dcm"))) for p in sorted(root.iterdir()) if p.is_dir()]


def test_sbu_two_timepoint_slices(shared_data, tmp_path):
    pairs = _pairs(shared_data)
    assert len(pairs) == 10
    passed = 0
    for patient, files in pairs:
        assert len(files) == 2
        given = files[::-1]  # later date first: the order must come from the DICOM dates
        try:
            result = compare(given, tmp_path / patient)
            passed += 1
        except RegistrationError as error:
            assert "needs" in str(error) or "differ" in str(error)
            result = compare(given, tmp_path / patient, check=False)
            assert result.report["overall"]["total"] == "not assessable"
        report = json.loads((tmp_path / patient / "compare.json").read_text())
        assert report["dimension"] == 2
        assert report["order"]["by"].startswith("acquisition date")
        assert report["order"]["labels"] == [f.name for f in files]  # file names start with the date
        reg = report["timepoints"][1]["registration"]
        assert reg["dimension"] == 2 and len(reg["rigid_rotation_deg"]) == 1
        assert 0.0 <= reg["lung_dice"] <= 1.0 and np.isfinite(reg["mean_surface_distance_mm"])
        assert report["timepoints"][0]["numbers"]["unit"] == "cm2"
        change = sitk.ReadImage(str(tmp_path / patient / "change.nii.gz"))
        assert change.GetSize()[2] == 1
        tfm = sitk.ReadTransform(str(tmp_path / patient / "transform_1.tfm"))
        assert tfm.GetDimension() == 2
        assert (tmp_path / patient / "trend.png").stat().st_size > 1000
    # measured: 1 of 10 pairs (A048383) passes the 2-D thresholds; the other slices were taken at different
    # levels (lung outlines differ: Dice 0.32-0.77, surface distance up to 18 mm) or show no lung (abdomen)
    assert passed >= 1
