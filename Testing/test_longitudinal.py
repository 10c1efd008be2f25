"""Longitudinal comparison on synthetic data with a known answer (phantom + known transform + known edits).

Known answer: the follow-up is the phantom with lesion 0 grown by 4 mm, lesion 1 resolved, lesion 2 shrunk by
4 mm and a new 12 mm lesion, resampled through a known rigid (2, -2, 5 degrees; 8, -4, 3 mm) plus B-spline
deformation. Stated bounds (measured values in the comments, 2 shared CPU cores):

* affine registration, small deformation (coefficient sd 2 mm): mean displacement error at the lung voxels
  < 1.5 mm (measured 0.67 mm, 95th percentile 1.2 mm); new / resolved / persistent volumes within 20 % of
  the truth (measured +6 / +9 / -3 %);
* deformable registration, larger deformation (sd 6 mm, mean displacement ~3 mm): mean error < 2.0 mm
  (measured 1.18 mm, p95 2.2 mm; affine alone 1.99 mm) and change volumes within 20 % (measured -4 / +8 / -3 %).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CovidCTLib.cli import main
from CovidCTLib.errors import InputError, OutputExistsError
from CovidCTLib.longitudinal import change as chg
from CovidCTLib.longitudinal.compare import TimePoint, compare, order_timepoints
from CovidCTLib.longitudinal.registration import RegistrationError
from CovidCTLib.longitudinal.synthetic import displacement_error_mm, known_transform, make_followup
from CovidCTLib.phantom import make_phantom
from CovidCTLib.version import DISCLAIMER
from CovidCTLib.volume import CTVolume

SHAPE, SPACING = (56, 112, 112), (3.0, 2.5, 2.5)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=SHAPE, spacing=SPACING, seed=0)


@pytest.fixture(scope="module")
def followup(phantom):
    transform = known_transform(phantom.ct.image, deformation_mm=2.0, seed=1)
    return make_followup(phantom.ct, phantom.lungs, phantom.infection, phantom.lesions, transform=transform)


@pytest.fixture(scope="module")
def compared(phantom, followup, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    base = TimePoint(phantom.ct, phantom.lungs, phantom.infection, "baseline")
    follow = TimePoint(followup.ct, followup.lungs, followup.infection, "followup")
    return compare([base, follow], out), out


def _volumes(change: np.ndarray, voxel_ml: float) -> dict[str, float]:
    return {name: float((change == value).sum()) * voxel_ml for value, name in chg.CHANGE_NAMES.items()}


def test_known_answer_affine(phantom, followup, compared):
    result, _ = compared
    reg = result.registrations[1]
    mean, p95 = displacement_error_mm(reg.transform, followup.transform, phantom.ct.image, phantom.lungs > 0)
    assert mean < 1.5, f"mean displacement error {mean:.2f} mm"
    assert p95 < 3.0
    assert reg.lung_dice > 0.95 and reg.mean_surface_distance_mm < 1.5
    # the rigid stage recovers the known rotation (inverse direction: baseline -> follow-up)
    assert np.allclose(reg.summary()["rigid_rotation_deg"], [-2.0, 2.0, -5.0], atol=1.0)
    measured = _volumes(result.change, phantom.ct.voxel_volume_ml)
    for name, truth in followup.truth_ml.items():
        assert truth > 20.0
        assert abs(measured[name] - truth) <= 0.2 * truth, (name, measured[name], truth)
    reported = result.report["changes"][0]["change_map_on_baseline_grid"]["regions"]["total"]
    assert reported["new"] == pytest.approx(measured["new"], abs=0.01)


def test_verdicts_follow_truth(phantom, followup, compared):
    result, _ = compared
    before = chg.timepoint_numbers(phantom.lungs, phantom.infection, phantom.ct.image)
    after = chg.timepoint_numbers(followup.lungs, followup.infection, followup.ct.image)
    for region in ("total", "right", "left"):
        expected = chg.verdict(before["regions"][region]["percent"], after["regions"][region]["percent"])
        assert result.report["overall"][region] == expected
    # lesion 0 (right lung) grew: right progression; lesion 1 resolved + lesion 2 shrank (left): regression
    assert result.report["overall"]["right"] == "progression"
    assert result.report["overall"]["left"] == "regression"
    zones = result.report["changes"][0]["regions_vs_baseline"]
    assert {"right_upper", "right_middle", "right_lower", "left_upper", "left_middle", "left_lower"} <= set(zones)


def test_verdict_thresholds():
    assert chg.verdict(10.0, 15.0) == "progression"  # +5 points
    assert chg.verdict(2.0, 3.0) == "progression"  # +1 point and +50 %
    assert chg.verdict(2.0, 2.5) == "stable"  # +25 % but only 0.5 point
    assert chg.verdict(30.0, 34.0) == "stable"  # +4 points, +13 %
    assert chg.verdict(30.0, 25.0) == "regression"
    assert chg.verdict(4.0, 2.5) == "regression"
    assert chg.verdict(0.0, 0.5) == "stable"
    change = chg.change_map(np.array([[1, 1, 0, 0]]), np.array([[2, 0, 1, 0]]))
    assert change.tolist() == [[chg.PERSISTENT, chg.RESOLVED, chg.NEW, 0]]


def test_outputs_written(phantom, compared):
    result, out = compared
    names = {p.name for p in out.iterdir()}
    assert {"compare.json", "compare.csv", "trend.png", "change.nii.gz", "change.seg.nrrd", "transform_1.tfm"} <= names
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"
    report = json.loads((out / "compare.json").read_text())
    assert report["disclaimer"] == DISCLAIMER and report["versions"]["covidct"]
    assert report["order"]["by"].startswith("as given")
    assert report["registration"]["refusal_thresholds"]["min_lung_dice"] == 0.8
    change = sitk.ReadImage(str(out / "change.nii.gz"))
    assert change.GetSize() == phantom.ct.image.GetSize()
    assert np.allclose(change.GetOrigin(), phantom.ct.image.GetOrigin())
    assert np.array_equal(sitk.GetArrayFromImage(change), result.change)
    seg = sitk.ReadImage(str(out / "change.seg.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(seg), result.change)
    assert seg.GetMetaData("Segment1_Name") == "New infection" and seg.GetMetaData("Segment1_LabelValue") == "2"
    transform = sitk.ReadTransform(str(out / "transform_1.tfm"))
    p = (10.0, -20.0, 5.0)
    assert np.allclose(transform.TransformPoint(p), result.registrations[1].transform.TransformPoint(p), atol=1e-3)
    with open(out / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["index"] for r in rows] == ["0", "1"] and rows[1]["verdict_vs_baseline"]
    assert (out / "trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if (out / "change_new.vtk").exists():  # surfaces written when CovidCTLib.surfaces is installed
        assert "SPACE=LPS" in (out / "change_new.vtk").read_bytes()[:200].decode("latin-1")


def test_side_by_side_png(compared, tmp_path):
    from CovidCTLib.longitudinal.figure import write_side_by_side_png

    result, _ = compared
    path = write_side_by_side_png([(result, "phantom")], tmp_path / "side.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 20_000


def test_overwrite_refused(phantom, followup, compared):
    _, out = compared
    base = TimePoint(phantom.ct, phantom.lungs, phantom.infection, "baseline")
    follow = TimePoint(followup.ct, followup.lungs, followup.infection, "followup")
    before = (out / "compare.json").stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="--overwrite"):
        compare([base, follow], out)
    assert (out / "compare.json").stat().st_mtime_ns == before


def test_deformable_known_answer(phantom, tmp_path):
    transform = known_transform(phantom.ct.image, deformation_mm=6.0, seed=1)
    fu = make_followup(phantom.ct, phantom.lungs, phantom.infection, phantom.lesions, transform=transform)
    base = TimePoint(phantom.ct, phantom.lungs, phantom.infection, "baseline")
    follow = TimePoint(fu.ct, fu.lungs, fu.infection, "followup")
    result = compare([base, follow], tmp_path / "out", deformable=True)
    reg = result.registrations[1]
    assert reg.deformable and isinstance(reg.transform, sitk.CompositeTransform)
    mean, _ = displacement_error_mm(reg.transform, fu.transform, phantom.ct.image, phantom.lungs > 0)
    assert mean < 2.0, f"mean displacement error {mean:.2f} mm"
    measured = _volumes(result.change, phantom.ct.voxel_volume_ml)
    for name, truth in fu.truth_ml.items():
        assert abs(measured[name] - truth) <= 0.2 * truth, (name, measured[name], truth)
    # the written composite transform reads back and maps like the in-memory one
    back = sitk.ReadTransform(str(tmp_path / "out" / "transform_1.tfm"))
    p = phantom.ct.image.TransformIndexToPhysicalPoint((56, 56, 28))
    assert np.allclose(back.TransformPoint(p), reg.transform.TransformPoint(p), atol=1e-3)


def _timepoint(ct_image: sitk.Image, lungs, infection, label, **ct_fields) -> TimePoint:
    return TimePoint(CTVolume(ct_image, "HU", label, **ct_fields), lungs, infection, label)


def test_refuses_partial_scan(phantom):
    half = phantom.ct.image[:, :, SHAPE[0] // 2 :]
    partial = _timepoint(half, phantom.lungs[SHAPE[0] // 2 :], phantom.infection[SHAPE[0] // 2 :], "partial")
    base = TimePoint(phantom.ct, phantom.lungs, phantom.infection, "baseline")
    with pytest.raises(RegistrationError, match="partial"):
        compare([base, partial])


def test_refuses_misaligned_or_other_patient(phantom):
    base = TimePoint(phantom.ct, phantom.lungs, phantom.infection, "baseline")
    flipped = sitk.GetImageFromArray(phantom.ct.array[::-1].copy())
    flipped.CopyInformation(phantom.ct.image)
    wrong = _timepoint(flipped, phantom.lungs[::-1].copy(), phantom.infection[::-1].copy(), "flipped")
    with pytest.raises(RegistrationError, match=r"Dice is [0-9.]+ \(needs >= 0.8\)"):
        compare([base, wrong])
    # with the check off the numbers are still reported, marked as not assessable
    result = compare([base, wrong], check=False)
    assert result.report["overall"]["total"] == "not assessable"
    assert result.report["timepoints"][1]["registration"]["quality_passed"] is False
    other = _timepoint(phantom.ct.image, phantom.lungs, phantom.infection, "other", patient={"id": "B"})
    base_id = _timepoint(phantom.ct.image, phantom.lungs, phantom.infection, "base", patient={"id": "A"})
    with pytest.raises(RegistrationError, match="different DICOM patient IDs"):
        compare([base_id, other])


def test_ordering_by_date(phantom):
    a = _timepoint(phantom.ct.image, phantom.lungs, phantom.infection, "late", acquisition_date="20200410")
    b = _timepoint(phantom.ct.image, phantom.lungs, phantom.infection, "early", acquisition_date="20200301")
    ordered, how = order_timepoints([a, b])
    assert [t.label for t in ordered] == ["early", "late"] and how.startswith("acquisition date")
    c = _timepoint(phantom.ct.image, phantom.lungs, phantom.infection, "nodate")
    ordered, how = order_timepoints([a, c])
    assert [t.label for t in ordered] == ["late", "nodate"] and "nodate" in how
    with pytest.raises(InputError):
        compare([a])


def _analysis_folder(folder: Path, ct_path: Path, image: sitk.Image, lungs, infection) -> Path:
    """A folder shaped like `covidct analyze` output (report.json naming the CT, lungs and infection)."""
    from CovidCTLib.volume import labelmap_like

    folder.mkdir(parents=True)
    sitk.WriteImage(labelmap_like(lungs, image), str(folder / "lungs.nii.gz"))
    sitk.WriteImage(labelmap_like(infection, image), str(folder / "infection.nii.gz"))
    (folder / "report.json").write_text(json.dumps({"input": {"source": str(ct_path)}, "method": "classical"}))
    return folder


def test_cli_with_analysis_folders(phantom, followup, tmp_path, capsys):
    base_ct = tmp_path / "base.nii.gz"
    follow_ct = tmp_path / "follow.nii.gz"
    sitk.WriteImage(phantom.ct.image, str(base_ct))
    sitk.WriteImage(followup.ct.image, str(follow_ct))
    a = _analysis_folder(tmp_path / "a", base_ct, phantom.ct.image, phantom.lungs, phantom.infection)
    b = _analysis_folder(tmp_path / "b", follow_ct, followup.ct.image, followup.lungs, followup.infection)
    out = tmp_path / "out"
    assert main(["compare", str(a), str(b), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Overall:" in text and "research software" in text
    report = json.loads((out / "compare.json").read_text())
    assert [i["kind"] for i in report["inputs"]] == ["analysis folder", "analysis folder"]
    assert report["timepoints"][1]["registration"]["lung_dice"] > 0.95
    # a second run without --overwrite fails with exit code 2 and a clear message
    assert main(["compare", str(a), str(b), "-o", str(out), "--json-progress"]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines[-1]["event"] == "error" and "--overwrite" in lines[-1]["message"]
    assert main(["compare", str(a), str(tmp_path / "missing"), "-o", str(tmp_path / "o2")]) == 2


def test_comparison_reads_back_from_its_files(phantom, followup, compared):
    """What the Slicer module shows after a background run: the stored comparison equals the computed one."""
    from CovidCTLib.longitudinal.readback import read_compare_outputs

    result, out = compared
    stored = read_compare_outputs(out, [phantom.ct, followup.ct])
    assert np.array_equal(stored.changes[1], result.changes[1])
    for computed, read in zip(result.timepoints, stored.timepoints, strict=True):
        assert np.array_equal(read.lungs, computed.lungs) and np.array_equal(read.infection, computed.infection)
    point = np.array(phantom.ct.image.TransformIndexToPhysicalPoint((40, 50, 10)), float)
    np.testing.assert_allclose(
        stored.registrations[1].transform.TransformPoint(point),
        result.registrations[1].transform.TransformPoint(point),
        atol=1e-4,
    )
    assert stored.report["timepoints"] == result.report["timepoints"]
    other = make_phantom(shape=(20, 40, 40), spacing=(5.0, 3.0, 3.0)).ct
    with pytest.raises(InputError, match="grid"):
        read_compare_outputs(out, [other, followup.ct])


def test_compare_reports_the_change_per_lobe(compared):
    result, _ = compared
    points = result.report["timepoints"]
    for point in points:  # the lobes partition each scan's lungs: their infection adds up to the scan's
        assert [lobe["key"] for lobe in point["lobes"]] == ["RUL", "RML", "RLL", "LUL", "LLL"]
        total = point["numbers"]["regions"]["total"]["infection"]
        assert sum(lobe["infection_ml"] for lobe in point["lobes"]) == pytest.approx(total, rel=0.02, abs=0.05)
    change = result.report["changes"][0]["lobes_vs_baseline"]
    for before, after, delta in zip(points[0]["lobes"], points[1]["lobes"], change, strict=True):
        assert delta["change_infection_ml"] == pytest.approx(after["infection_ml"] - before["infection_ml"], abs=0.02)
