"""The lobes hook of ``covidct analyze``: lobes.nii.gz and report.json ``lobes`` / ``severity_score_lobar``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CovidCTLib.cli import main
from CovidCTLib.io.writers import write_image
from CovidCTLib.phantom import make_phantom

LOBE_KEYS = {
    "name",
    "key",
    "label",
    "lung",
    "lung_ml",
    "infection_ml",
    "ggo_ml",
    "consolidation_ml",
    "percent",
    "score",
}


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    phantom = make_phantom(shape=(48, 96, 96), fissures=True, oblique=True, seed=1)
    source = tmp_path_factory.mktemp("input") / "ct.nii.gz"
    write_image(phantom.ct.image, source)
    np.save(source.parent / "truth_lobes.npy", phantom.lobes)
    outdir = tmp_path_factory.mktemp("out")
    code = main(["analyze", str(source), "-o", str(outdir), "--method", "classical", "--no-report", "--no-classify"])
    assert code == 0
    return source, outdir


def test_lobes_labelmap_has_the_input_geometry_and_partitions_the_lungs(analyzed):
    source, outdir = analyzed
    reference = sitk.ReadImage(str(source))
    lobes_image = sitk.ReadImage(str(outdir / "lobes.nii.gz"))
    assert lobes_image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(lobes_image.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(lobes_image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(lobes_image.GetDirection(), reference.GetDirection(), atol=1e-5)
    lobes = sitk.GetArrayFromImage(lobes_image)
    lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(outdir / "lungs.nii.gz")))
    assert np.array_equal(lobes > 0, lungs > 0)
    assert set(np.unique(lobes[lungs == 1])) == {1, 2, 3}
    assert set(np.unique(lobes[lungs == 2])) == {4, 5}


def test_report_has_the_lobes_and_the_lobar_score(analyzed):
    _, outdir = analyzed
    report = json.loads((outdir / "report.json").read_text())
    lobes = report["lobes"]
    assert [entry["key"] for entry in lobes] == ["RUL", "RML", "RLL", "LUL", "LLL"]
    assert all(set(entry) == LOBE_KEYS for entry in lobes)
    assert sum(e["lung_ml"] for e in lobes) == pytest.approx(report["lungs"]["total_ml"], rel=1e-3)
    assert sum(e["infection_ml"] for e in lobes) == pytest.approx(report["infection"]["total_ml"], rel=1e-3)
    assert sum(e["infection_ml"] for e in lobes) > 0
    score = report["severity_score_lobar"]
    assert score["total"] == sum(e["score"] for e in lobes)
    assert 0 < score["total"] <= 25 and "scale" in score
    assert report["severity_score"]["total"] >= 0  # the zone score stays as the second score
    assert set(report["lobe_segmentation"]["fissures"]) == {"right_oblique", "right_horizontal", "left_oblique"}
    assert "lobes" in report["timing_s"]
    # the noise floor of the zones applies to the lobes: below 1 % involvement a lobe scores 0
    for entry in lobes:
        assert (entry["score"] == 0) == (entry["percent"] < 1.0), entry
    assert "1 %" in score["noise_floor"]


def test_lobes_from_the_classical_lungs_match_the_phantom(analyzed):
    source, outdir = analyzed
    truth = np.load(source.parent / "truth_lobes.npy")
    lobes = sitk.GetArrayFromImage(sitk.ReadImage(str(outdir / "lobes.nii.gz")))
    both = (lobes > 0) & (truth > 0)  # the classical lung mask differs slightly from the truth
    for label in range(1, 6):
        a, b = (lobes == label) & both, (truth == label) & both
        dice = 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        assert dice >= 0.9, (label, dice)


def test_report_has_the_anatomical_zones_and_the_peripheral_split(analyzed):
    """Issue 14: the landmark zone set (here the stated fallback: the phantom's main bronchi end at the hilum,
    14 mm below the carina, so no IPV level) and peripheral vs central per lung and lobe."""
    import csv

    _, outdir = analyzed
    report = json.loads((outdir / "report.json").read_text())
    zones = report["anatomical_zones"]
    assert zones["landmarks"]["carina_z_mm"] is not None and zones["landmarks"]["ipv_z_mm"] is None
    assert zones["method"] == "thirds" and "IPV level not found" in zones["fallback"]
    assert zones["fallback"] in report["notes"]
    thirds = {(z["lung"], z["zone"]): z["lung_ml"] for z in report["zones"]}
    assert {(z["lung"], z["zone"]): z["lung_ml"] for z in zones["zones"]} == pytest.approx(thirds, abs=0.02)
    peripheral = report["peripheral_involvement"]
    lobe_ml = {entry["key"]: entry["lung_ml"] for entry in report["lobes"]}
    assert {entry["key"]: entry["lung_ml"] for entry in peripheral["lobes"]} == pytest.approx(lobe_ml, abs=0.02)
    assert peripheral["both"]["infection_ml"] == pytest.approx(report["infection"]["total_ml"], abs=0.05)
    assert report["covid_assessment"]["features"]["peripheral_share"] == pytest.approx(
        peripheral["both"]["peripheral_share"], abs=1e-4
    )
    assert "anatomy" in report["timing_s"]
    with open(outdir / "report.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["anatomical_zones.method"] == "thirds"
    assert float(row["peripheral_involvement.both.peripheral_share"]) == pytest.approx(
        peripheral["both"]["peripheral_share"]
    )
