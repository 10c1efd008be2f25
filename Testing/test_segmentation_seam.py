"""The segmentation seam: segmenters by (task, method), the model chosen from its manifest, the slice inferer,
and the analysis as weighted stages."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from CovidCTLib.errors import CovidCTError
from CovidCTLib.phantom import make_phantom
from CovidCTLib.progress import Reporter
from CovidCTLib.segmentation.base import InfectionSegmenter, LungSegmenter, SliceSegmenter
from CovidCTLib.segmentation.registry import make_segmenters, make_slice_segmenter, resolve_method


@pytest.fixture(scope="module")
def small_phantom():
    return make_phantom(shape=(40, 80, 80), spacing=(3.0, 2.0, 2.0), seed=2)


def test_classical_segmenters_follow_the_protocols_and_find_the_phantoms_lungs(small_phantom) -> None:
    seg = make_segmenters("classical", "cpu")
    assert seg.method == "classical"
    assert isinstance(seg.lungs, LungSegmenter) and isinstance(seg.infection, InfectionSegmenter)
    lungs = seg.lungs.segment(small_phantom.ct)
    truth = small_phantom.lungs
    for label in (1, 2):
        a, b = lungs == label, truth == label
        dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        assert dice > 0.85, (label, dice)
    infection = seg.infection.segment(small_phantom.ct, lungs)
    assert set(np.unique(infection)) <= {0, 1, 2}
    assert not np.any(infection[lungs == 0])


def test_model_segmenters_share_one_slice_inferer_and_label_both_lungs(small_phantom) -> None:
    seg = make_segmenters("model", "cpu")
    assert seg.lungs.shared is seg.infection.shared
    lungs = seg.lungs.segment(small_phantom.ct)
    assert seg.lungs.shared.inferer is not None and seg.lungs.shared.inferer.ct is small_phantom.ct
    assert {1, 2} <= set(np.unique(lungs))
    infection = seg.infection.segment(small_phantom.ct, lungs)
    assert seg.infection.shared.inferer is None  # released once lungs -> infection is done
    assert not np.any(infection[lungs == 0])
    assert set(seg.lungs.versions()) == {"lung"} and set(seg.infection.versions()) == {"infection"}


def test_slice_segmenter_protocol() -> None:
    segmenter = make_slice_segmenter("classical")
    assert isinstance(segmenter, SliceSegmenter)
    image = np.full((64, 64), 200, np.uint8)
    image[16:48, 8:28] = 20
    image[16:48, 36:56] = 20
    masks = segmenter.segment_images("lung", [image])
    assert masks[0].shape == image.shape and masks[0][30, 15] > 0 and masks[0][2, 2] == 0


def test_unknown_method_is_refused() -> None:
    with pytest.raises(CovidCTError, match="unknown method"):
        resolve_method("magic")


def test_the_lung_network_is_the_one_whose_manifest_names_the_task(tmp_path, monkeypatch) -> None:
    from CovidCTLib.models.runtime import inference, registry

    installed = registry.models_dir()
    for name in ("infection-unet", "lung-attunet"):
        shutil.copytree(installed / name, tmp_path / name)
    # swap the lung network: the same weights installed under another name
    (tmp_path / "lung-attunet").rename(tmp_path / "my-site-lung")
    manifest_path = tmp_path / "my-site-lung" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["name"] = "my-site-lung"
    registry.write_manifest(manifest_path, manifest)  # re-sealed: an edited manifest is refused otherwise
    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(tmp_path))
    assert registry.model_for_task("lung") == "my-site-lung"
    assert inference.model_name("lung") == "my-site-lung"
    assert inference.model_name("infection") == "infection-unet"
    assert inference.models_available()["lung"].startswith("my-site-lung ")


def test_slice_inferer_round_trips_an_oblique_grid_and_normalises_each_slice_once() -> None:
    from CovidCTLib.models.runtime.slice_inferer import SliceInferer

    phantom = make_phantom(shape=(24, 48, 40), spacing=(3.0, 2.0, 2.0), oblique=True, seed=1)
    inferer = SliceInferer(phantom.ct)
    back = inferer.to_ct_grid(inferer.from_ct_grid(phantom.lungs))
    assert np.array_equal(back, phantom.lungs)
    first = inferer.normalized(5)
    assert np.array_equal(first, inferer.normalized(5))
    assert len(inferer._normalized) == 1


def test_analysis_progress_comes_from_the_stage_weights(small_phantom) -> None:
    from CovidCTLib.pipeline import STAGES, analyze

    events = []
    result = analyze(
        small_phantom.ct, method="classical", device="cpu", classify=False, reporter=Reporter(events.append)
    )
    stage_starts = [e for e in events if e.step in {s.name for s in STAGES}]
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    names = [s.name for s in STAGES]
    first_seen = [e.step for e in stage_starts]
    assert [n for n in names if n in first_seen] == names
    total = sum(s.weight for s in STAGES) / 0.97
    lungs_start = next(e.fraction for e in events if e.step == "lungs")
    before_lungs = sum(s.weight for s in STAGES[: names.index("lungs")])
    assert lungs_start == pytest.approx(before_lungs / total, abs=1e-3)
    assert set(result.report["timing_s"]) >= set(names)
    assert sitk.GetArrayFromImage(result.lungs_image()).shape == small_phantom.lungs.shape
