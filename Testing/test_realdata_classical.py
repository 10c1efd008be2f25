"""Classical analysis on the real scans in ../shared/data (skipped when the data is absent).

RICORD-1A (one COVID-19 CT, DICOM) against three LIDC-IDRI screening CTs (no COVID): plausible lung
volumes, both lungs found, and clearly more infection in the COVID scan. Also the 2-D classical rules on a
sample of the COVID-19-CT-Seg PNG slices. Takes about a minute on two cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from CovidCTLib.classical import segment_infection_classical, segment_lungs_classical
from CovidCTLib.quantify import quantify

pytestmark = pytest.mark.realdata


def _load(path: Path):
    from CovidCTLib.io.loader import load_ct

    return load_ct(path)


def _analyse(path: Path) -> tuple[dict, float]:
    ct = _load(path)
    start = time.perf_counter()
    lungs = segment_lungs_classical(ct)
    infection = segment_infection_classical(ct, lungs)
    seconds = time.perf_counter() - start
    return quantify(ct, lungs, infection), seconds


@pytest.fixture(scope="module")
def results(shared_data: Path) -> dict[str, tuple[dict, float]]:
    ricord = shared_data / "ricord_1a_covid_chest_ct" / "dicom"
    lidc = sorted((shared_data / "lidc_idri_chest_ct").glob("LIDC-IDRI-*.nii.gz"))
    if not ricord.is_dir() or len(lidc) < 3:
        pytest.skip("RICORD or LIDC volumes missing from the shared data folder")
    out = {"ricord": _analyse(ricord)}
    for path in lidc[:3]:
        out[path.name.split(".")[0]] = _analyse(path)
    return out


def test_lung_volumes_plausible(results):
    for name, (q, _) in results.items():
        total_l = q["lungs"]["total_ml"] / 1000.0
        assert 2.0 < total_l < 8.0, name
        assert q["lungs"]["right_ml"] > 500 and q["lungs"]["left_ml"] > 500, name
        # the right lung is usually the larger one; allow the COVID scan's consolidation to shift that
        assert 0.6 < q["lungs"]["right_ml"] / q["lungs"]["left_ml"] < 1.6, name


def test_covid_scan_has_clearly_more_infection(results):
    ricord = results["ricord"][0]["infection"]["percent_of_lungs"]
    others = [q["infection"]["percent_of_lungs"] for name, (q, _) in results.items() if name != "ricord"]
    assert ricord > 5.0
    assert ricord > 3.0 * max(others)
    assert results["ricord"][0]["severity_score"]["total"] > max(
        q["severity_score"]["total"] for name, (q, _) in results.items() if name != "ricord"
    )
    assert results["ricord"][0]["infection"]["ggo_ml"] > 0 and results["ricord"][0]["infection"]["consolidation_ml"] > 0


def test_ricord_speed(results):
    # about 5 s on an idle core; generous bound for a shared CI machine
    assert results["ricord"][1] < 60.0


def test_slices2d_on_covid_png(shared_data: Path):
    from PIL import Image

    from CovidCTLib.classical.slices2d import segment_slice_classical

    root = shared_data / "covid19_ct_seg_png256"
    if not (root / "ct").is_dir():
        pytest.skip("covid19_ct_seg_png256 missing")
    files = sorted((root / "ct").glob("*.png"))[::40]
    lung_dice = []
    for path in files:
        image = np.asarray(Image.open(path))
        truth = np.asarray(Image.open(root / "lungs" / path.name)) > 0
        pred = segment_slice_classical(image, "lung") > 0
        lung_dice.append(2.0 * np.count_nonzero(pred & truth) / max(pred.sum() + truth.sum(), 1))
    assert np.median(lung_dice) > 0.85
