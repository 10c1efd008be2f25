"""COVID classifier: grouped split, lung crop, pooling, smoke training + resume, inference, model errors."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from required import skip_or_fail  # noqa: E402
from synthetic_chest import synthetic_chest

from CovidCTLib.errors import ModelError
from CovidCTLib.models.data.classifier_data import Item, group_of, grouped_split, list_dataset
from CovidCTLib.models.runtime.classifier import crop_to_lungs, lung_bbox, lung_mask_from_unit, pool_probabilities
from CovidCTLib.models.runtime.classifier_inference import (
    classify_images,
    classify_scan,
    default_model_dir,
    load_classifier,
)
from CovidCTLib.volume import CTVolume


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cls_data")
    k = 0
    for g in range(4):
        for j in range(2):
            _write_png(root / "COVID" / f"paper{g}-p{j + 1}-{k}_{j}.png", synthetic_chest(covid=True, seed=k))
            _write_png(root / "NonCOVID" / f"{g * 10 + 3}_{j}.png", synthetic_chest(covid=False, seed=100 + k))
            k += 1
    return root


def _args(data: Path, out: Path, **kw) -> argparse.Namespace:
    base = dict(
        data=str(data),
        out=str(out),
        epochs=2,
        seed=1,
        device="cpu",
        resume=False,
        batch_size=8,
        max_steps=None,
        arch="efficientnet-b0",
        input_size=32,
        val_fraction=0.5,
        patience=5,
    )
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from CovidCTLib.models.training.classifier_train import main_train

    out = tmp_path_factory.mktemp("cls_run")
    main_train(_args(tiny_dataset, out, epochs=1, max_steps=2))
    return out


def test_group_names() -> None:
    assert group_of("2020.02.10.20021584-p6-52_0.png") == "2020.02.10.20021584"
    assert group_of("PIIS0140673620301549_0_0.png") == "PIIS0140673620301549"
    assert group_of("kjr-21-e24-p5-29.png") == "kjr-21-e24"
    assert group_of("Recurrence-of-positive-SARS_2020-p1-21_0.png") == "Recurrence-of-positive-SARS"
    assert group_of("10_3.png") == "10"
    assert group_of("1029.png") == "1029"


def test_grouped_split_never_shares_a_group() -> None:
    rng = np.random.default_rng(3)
    items = []
    for g in range(40):
        label = int(g % 3 == 0)
        for j in range(int(rng.integers(1, 12))):
            items.append(Item(f"/x/{g}_{j}.png", label, f"g{g}"))
    for seed in range(5):
        for fold in range(5):
            train, val = grouped_split(items, 0.2, seed, fold)
            assert sorted(train + val) == list(range(len(items)))
            assert not {items[i].group for i in train} & {items[i].group for i in val}
            assert {items[i].label for i in val} == {0, 1}
    # the same seed gives the same split
    assert grouped_split(items, 0.2, 7) == grouped_split(items, 0.2, 7)


def test_list_dataset_merges_consecutive_numeric_names(tmp_path: Path) -> None:
    img = synthetic_chest()
    for name in (
        "COVID/a-p1-1.png",
        "COVID/a-p2-2.png",
        "NonCOVID/1210.png",
        "NonCOVID/1211.png",
        "NonCOVID/1300.png",
        "NonCOVID/5_0.png",
        "NonCOVID/5_1.png",
    ):
        _write_png(tmp_path / name, img)
    groups = {Path(it.path).name: it.group for it in list_dataset(tmp_path)}
    assert groups["a-p1-1.png"] == groups["a-p2-2.png"]
    assert groups["1210.png"] == groups["1211.png"] != groups["1300.png"]
    assert groups["5_0.png"] == groups["5_1.png"]


def test_lung_crop_on_synthetic_image() -> None:
    size = 128
    img = np.zeros((size, size), np.float32)
    img[20:110, 10:118] = 170  # body
    img[35:95, 22:55] = 20  # right lung
    img[35:95, 72:105] = 20  # left lung
    unit = img / 255.0
    mask = lung_mask_from_unit(unit)
    assert mask[60, 35] and mask[60, 90] and not mask[5, 5] and not mask[60, 64]
    y0, y1, x0, x1 = lung_bbox(mask)
    assert y0 <= 35 and y1 >= 95 and x0 <= 22 and x1 >= 105
    assert y0 >= 25 and y1 <= 105  # margin is modest
    crop, found = crop_to_lungs(unit, None, 64)
    assert found and crop.shape == (64, 64)
    assert crop.min() > 0.05  # the outside air is cropped away
    flat, found_flat = crop_to_lungs(np.full((50, 70), 0.4, np.float32), None, 64)
    assert not found_flat and flat.shape == (64, 64)
    tiny = np.zeros((size, size), bool)
    tiny[60:62, 60:62] = True
    assert lung_bbox(tiny) is None  # tiny mask -> whole image


def test_pooling_mean_and_top_k() -> None:
    p = np.linspace(0.1, 1.0, 10)
    mean, top, k = pool_probabilities(p)
    assert mean == pytest.approx(0.55) and k == 1 and top == pytest.approx(1.0)
    mean, top, k = pool_probabilities(p, top_fraction=0.25)
    assert k == 3 and top == pytest.approx(0.9)
    assert pool_probabilities([0.3])[1] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pool_probabilities([])


def test_smoke_training_writes_checkpoint_and_resumes(trained: Path, tiny_dataset: Path) -> None:
    from CovidCTLib.models.training.classifier_train import main_train

    for name in (
        "last.pt",
        "best.pt",
        "metrics.json",
        "history.csv",
        "val_predictions.csv",
        "model/manifest.json",
        "model/covid-classifier.pt",
    ):
        assert (trained / name).is_file(), name
    manifest = json.loads((trained / "model" / "manifest.json").read_text())
    assert manifest["architecture"]["kwargs"]["model_name"] == "efficientnet-b0"
    assert len(manifest["sha256"]) == 64 and manifest["task"] == "classification"
    summary = main_train(_args(tiny_dataset, trained, epochs=2, max_steps=3, resume=True))
    assert summary["epochs_run"] == 2  # one epoch from the first run + one after resuming
    with open(trained / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]


def test_exported_model_classifies_and_detects_tampering(trained: Path, tmp_path: Path) -> None:
    probs = classify_images(
        [synthetic_chest(covid=True), synthetic_chest(covid=False)], device="cpu", model_dir=trained / "model"
    )
    assert len(probs) == 2 and all(0.0 <= p <= 1.0 for p in probs)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in (trained / "model").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    w = bad / "covid-classifier.pt"
    w.write_bytes(w.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelError, match="checksum"):
        load_classifier(bad, device="cpu")


def test_evaluate_writes_roc_metrics_and_csv(trained: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    from CovidCTLib.models.training.classifier_train import main_evaluate

    res = main_evaluate(
        argparse.Namespace(
            data=str(tiny_dataset), out=str(tmp_path), model=str(trained / "model"), device="cpu", split="all"
        )
    )
    assert set(res["metrics"]) >= {"auc", "f1", "accuracy", "sensitivity", "specificity"}
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == 16


def test_missing_model_raises_model_error_with_how_to(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="covidct train classifier --data"):
        load_classifier(tmp_path / "no-model-here", device="cpu")


def _volume() -> tuple[CTVolume, np.ndarray]:
    try:
        from CovidCTLib.phantom import make_phantom

        ph = make_phantom(shape=(12, 96, 96), spacing=(5.0, 2.5, 2.5), seed=0)
        return ph.ct, ph.lungs
    except ImportError:
        hu = np.full((12, 96, 96), -1000.0, np.float32)
        lungs = np.zeros(hu.shape, np.uint8)
        hu[:, 15:85, 8:88] = 40
        hu[2:10, 25:75, 15:45] = -850
        hu[2:10, 25:75, 52:82] = -850
        lungs[2:10, 25:75, 15:45] = 1
        lungs[2:10, 25:75, 52:82] = 2
        img = sitk.GetImageFromArray(hu)
        img.SetSpacing((2.5, 2.5, 5.0))
        return CTVolume(image=img, intensity="HU", source="synthetic"), lungs


def test_classify_scan_on_phantom_with_shipped_model() -> None:
    if not (default_model_dir() / "manifest.json").is_file():
        skip_or_fail("no covid-classifier shipped in Resources/Models")
    ct, lungs = _volume()
    res = classify_scan(ct, lungs, device="cpu")
    assert 0.0 <= res.probability <= 1.0 and 0.0 <= res.top_k_mean <= 1.0
    assert res.n_slices == len(res.slice_probabilities) > 0
    assert all(lungs[z].any() for z in res.slice_probabilities)
    assert res.top_k_mean >= res.probability - 1e-9


def test_radiological_view_flips_in_plane_only() -> None:
    from CovidCTLib.models.runtime.classifier_inference import radiological_view

    arr = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    lungs = (arr > 5).astype(np.uint8)
    img = sitk.GetImageFromArray(arr)
    same, same_l = radiological_view(arr, lungs, img)
    assert np.array_equal(same, arr) and np.array_equal(same_l, lungs)
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS-like columns/rows: both in-plane axes flipped
    flipped, flipped_l = radiological_view(arr, lungs, img)
    assert np.array_equal(flipped, arr[:, ::-1, ::-1]) and np.array_equal(flipped_l, lungs[:, ::-1, ::-1])


def test_classify_path_on_an_image_file(trained: Path, tmp_path: Path) -> None:
    from CovidCTLib.models.runtime.classifier_inference import classify_path, classify_path_details

    png = tmp_path / "slice.png"
    _write_png(png, synthetic_chest(covid=True))
    p = classify_path(png, device="cpu", model_dir=trained / "model")
    row = classify_path_details(png, device="cpu", model_dir=trained / "model")
    assert 0.0 <= p <= 1.0 and row["kind"] == "image" and row["probability"] == pytest.approx(p, abs=1e-4)


def _png256_like(root: Path) -> Path:
    """A covid19_ct_seg_png256-shaped folder: 4 slices, the 3rd the 1st stored upside down (flagged)."""
    img = synthetic_chest(size=64, covid=True, seed=7)
    img[4:10, 24:40] = 250  # an anterior marker, to see the orientation
    lung = (img < 60).astype(np.uint8) * 255
    lung[:, :8] = 0
    lung[:, -8:] = 0
    rows = []
    for i, flipped in enumerate([False, False, True, False]):
        pair = (img[::-1], lung[::-1]) if flipped else (img, lung)
        _write_png(root / "ct" / f"{i:04d}.png", pair[0])
        _write_png(root / "lungs" / f"{i:04d}.png", pair[1])
        rows.append(
            {
                "index": f"{i:04d}",
                "ct": f"ct/{i:04d}.png",
                "lung_mask": f"lungs/{i:04d}.png",
                "infection_mask": "",
                "source": "radiopaedia" if flipped else "coronacases",
                "inferred_group": "g0",
                "vertically_flipped_vs_coronacases": "yes" if flipped else "no",
            }
        )
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_aux_slices_train_but_never_validate(tiny_dataset: Path, tmp_path: Path) -> None:
    from CovidCTLib.models.data.classifier_aux import build_aux_cache
    from CovidCTLib.models.training.classifier_train import main_train
    from CovidCTLib.phantom import make_phantom

    png = _png256_like(tmp_path / "png256")
    vol = tmp_path / "lidc" / "case.nii.gz"
    vol.parent.mkdir()
    sitk.WriteImage(make_phantom((32, 96, 96), seed=3).ct.image, str(vol))
    spec = f"png256:{png},lidc-synth:{vol}"
    aux = build_aux_cache(spec, tmp_path / "cache", 64, seed=0)
    groups, labels = aux["groups"].tolist(), aux["labels"]
    png_rows = [i for i, g in enumerate(groups) if g.startswith("png256")]
    assert len(png_rows) == 2 and all(labels[i] == 1 for i in png_rows)  # every 2nd slice, all COVID
    # the upside-down slice is turned back: both kept png256 crops show the marker at the top
    assert np.abs(aux["crops"][png_rows[0]].astype(int) - aux["crops"][png_rows[1]]).mean() < 2
    synth = [i for i, g in enumerate(groups) if g.startswith("synth/")]
    assert {0, 1} <= set(labels[synth].tolist())
    assert aux["crops"].dtype == np.uint8 and aux["clahe"].shape == aux["crops"].shape

    out = tmp_path / "run"
    summary = main_train(
        _args(
            tiny_dataset, out, epochs=1, max_steps=2, aux_data=spec, aux_fraction=0.5, cache_dir=str(tmp_path / "cache")
        )
    )
    plain = grouped_split(list_dataset(tiny_dataset), 0.5, 1)[1]
    assert summary["n_val"] == len(plain)  # validation holds only COVID-CT images
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["training"]["n_aux"] == len(labels) and "--aux-data" in manifest["training"]["command"]


def test_platt_fit_recovers_known_scaling() -> None:
    from CovidCTLib.models.evaluation.calibrate import fit_platt
    from CovidCTLib.models.runtime.classifier_inference import apply_calibration

    rng = np.random.default_rng(0)
    z = rng.normal(0, 0.4, 4000)  # raw logits crowded around 0, as a smoothed network gives
    labels = rng.random(4000) < 1 / (1 + np.exp(-(3.0 * z - 0.5)))
    slope, intercept = fit_platt(1 / (1 + np.exp(-z)), labels)
    assert slope == pytest.approx(3.0, abs=0.35) and intercept == pytest.approx(-0.5, abs=0.12)
    p = np.array([0.2, 0.5, 0.7])
    np.testing.assert_allclose(apply_calibration(p, None), p)
    calibrated = apply_calibration(p, {"method": "platt", "slope": 2.0, "intercept": 0.0})
    assert calibrated[0] < 0.2 and calibrated[1] == pytest.approx(0.5) and calibrated[2] > 0.7


def _score_by(monkeypatch: pytest.MonkeyPatch, score: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replace the network's raw output by ``score(crops)`` (deterministic on every machine); lung crop,
    calibration, manifest and file handling stay the real ones."""
    from CovidCTLib.models.runtime import classifier

    def predict(
        model: torch.nn.Module, crops_01: torch.Tensor, device: torch.device, batch_size: int = 64, tta: bool = True
    ) -> np.ndarray:
        return score(crops_01).double().numpy().ravel()

    monkeypatch.setattr(classifier, "predict_crops", predict)


def _by_brightness(crops: torch.Tensor) -> torch.Tensor:
    """A fixed score that ranks the synthetic COVID slices (bright blobs in the lungs) above the others."""
    return torch.sigmoid(8.0 * (crops.mean(dim=(1, 2, 3)) - crops.mean()))


def test_calibration_refused_for_a_classifier_that_does_not_separate(
    trained: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from CovidCTLib.errors import InputError
    from CovidCTLib.models.evaluation.calibrate import calibrate_classifier

    folder = tmp_path / "covid-classifier"
    shutil.copytree(trained / "model", folder)
    _score_by(monkeypatch, lambda crops: torch.full((crops.shape[0],), 0.5))  # no ranking at all: AUC 0.5
    with pytest.raises(InputError, match="does not separate"):
        calibrate_classifier(tiny_dataset, folder, seed=1, val_fraction=0.5)
    assert "calibration" not in json.loads((folder / "manifest.json").read_text())


def test_calibrate_classifier_cli_stores_scaling_used_by_inference(
    trained: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from CovidCTLib.models.cli import main
    from CovidCTLib.models.runtime.classifier_inference import apply_calibration

    # The network's output is replaced by a fixed brightness score: asking a tiny training run to reach a
    # given AUC depends on floating-point luck (it failed on other machines); the calibration does not.
    _score_by(monkeypatch, _by_brightness)
    folder = tmp_path / "covid-classifier"
    shutil.copytree(trained / "model", folder)
    raw = classify_images([str(p) for p in sorted(tiny_dataset.rglob("*.png"))], model_dir=folder, device="cpu")
    assert (
        main(
            [
                "calibrate",
                "classifier",
                "--data",
                str(tiny_dataset),
                "--model",
                str(folder),
                "--val-fraction",
                "0.5",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    cal = manifest["calibration"]
    assert cal["method"] == "platt" and "validation split" in cal["fitted_on"]
    assert cal["slope"] > 0 and cal["after"]["auc"] == pytest.approx(cal["before"]["auc"], abs=1e-6)
    now = classify_images([str(p) for p in sorted(tiny_dataset.rglob("*.png"))], model_dir=folder, device="cpu")
    np.testing.assert_allclose(now, apply_calibration(np.array(raw), cal), atol=1e-4)


def test_classify_command_names_its_number_the_classifier_probability(tmp_path: Path, capsys) -> None:
    """`covidct classify` gives the classifier alone, named as such (not the assessment's covid_probability)."""
    from CovidCTLib.cli import main

    if not (default_model_dir() / "manifest.json").is_file():
        skip_or_fail("no covid-classifier shipped in Resources/Models")
    png = tmp_path / "slice.png"
    _write_png(png, synthetic_chest(covid=True))
    out = tmp_path / "predictions.csv"
    assert main(["classify", str(png), "-o", str(out), "--device", "cpu"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "classifier_probability", "model"]
    assert 0.0 <= float(rows[0]["classifier_probability"]) <= 1.0
    assert rows[0]["model"].startswith("covid-classifier ")
    assert "scan-level COVID assessment" in capsys.readouterr().out
