"""Lobes on real scans in ../shared/data (skipped when the data is absent).

LIDC-IDRI-0002 (1.25 mm slices: the fissures are visible and detected) and Lung-PET-CT-Dx A0001 (5 mm slices:
mostly the prior decides). Checks: the lobes partition each lung exactly, and each lobe's share of its lung
lies in the range used here (derived from published CT lobar volumes of adults, as % of the total lung volume
about RUL 17-24, RML 5-10, RLL 22-28, LUL 21-27, LLL 19-25 with the right lung 52-56 %, widened for disease
and lung-mask errors): RUL 28-50, RML 7-22, RLL 35-55, LUL 42-65, LLL 35-58 % of its lung.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from CovidCTLib.classical import segment_lungs_classical
from CovidCTLib.lobes import segment_lobes_detailed

pytestmark = pytest.mark.realdata

SHARE_RANGES = {1: (28, 50), 2: (7, 22), 3: (35, 55), 4: (42, 65), 5: (35, 58)}


def _run(path: Path):
    from CovidCTLib.io.loader import load_ct

    ct = load_ct(path)
    lungs = segment_lungs_classical(ct)
    return lungs, segment_lobes_detailed(ct, lungs)


@pytest.fixture(scope="module")
def results(shared_data: Path) -> dict:
    cases = {
        "LIDC-IDRI-0002": shared_data / "lidc_idri_chest_ct" / "LIDC-IDRI-0002.nii.gz",
        "A0001": shared_data / "lung_pet_ct_dx" / "A0001" / "2.000000-5mm-40805",
    }
    if not all(p.exists() for p in cases.values()):
        pytest.skip("LIDC-IDRI-0002 or Lung-PET-CT-Dx A0001 missing from the shared data folder")
    return {name: _run(path) for name, path in cases.items()}


def test_lobes_partition_each_lung_exactly(results):
    for name, (lungs, seg) in results.items():
        lobes = seg.lobes
        assert np.array_equal(lobes > 0, lungs > 0), name
        assert set(np.unique(lobes[lungs == 1])) == {1, 2, 3}, name
        assert set(np.unique(lobes[lungs == 2])) == {4, 5}, name


def test_lobe_shares_in_published_ranges(results):
    for name, (lungs, seg) in results.items():
        for label, (lo, hi) in SHARE_RANGES.items():
            side = 1 if label <= 3 else 2
            share = 100.0 * np.count_nonzero(seg.lobes == label) / np.count_nonzero(lungs == side)
            assert lo <= share <= hi, (name, label, round(share, 1))


def test_fissures_are_detected_on_thin_slices(results):
    fissures = results["LIDC-IDRI-0002"][1].fissures
    assert fissures["left_oblique"]["coverage"] >= 0.15, fissures
    assert fissures["right_oblique"]["coverage"] >= 0.1, fissures
