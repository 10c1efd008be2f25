"""The segmentation-feature COVID classifier (issue 13.4): features, head fitting, Grad-CAM, training, loading."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from required import skip_or_fail
from synthetic_chest import synthetic_chest

from CovidCTLib.models.evaluation.metrics import roc_auc
from CovidCTLib.models.runtime.classifier_inference import classify_images, classify_scan, load_classifier
from CovidCTLib.models.runtime.inference import get_model, model_name
from CovidCTLib.models.runtime.registry import models_dir
from CovidCTLib.models.runtime.seg_features import (
    SegFeatureClassifier,
    infection_taps,
    lung_encoder_maps,
    make_head,
    pool_maps,
    slice_inputs,
)
from CovidCTLib.models.training.mlp_head import HeadEnsemble, fit_ensemble, fit_mlp
from CovidCTLib.models.training.seg_feature_train import fit_logistic, install_head, mean_head, view_of
from CovidCTLib.phantom import make_phantom


def _shipped_segmentation():
    try:
        return get_model(model_name("lung"), "cpu"), get_model(model_name("infection"), "cpu")
    except Exception as exc:  # noqa: BLE001 - a missing model is a skip locally, a failure in CI
        skip_or_fail(f"segmentation models not installed: {exc}")


def _random_classifier(seed: int = 0) -> SegFeatureClassifier:
    torch.manual_seed(seed)
    net = SegFeatureClassifier((8, 16, 32), (8, 16, 32, 64), 1).eval()
    return net


# ------------------------------------------------------------------------------------------ features
def test_lung_encoder_maps_equal_the_encoder_outputs_of_the_full_network():
    lung, _ = _shipped_segmentation()
    names = ["model.0", "model.1.submodule.0", "model.1.submodule.1.submodule.0"]
    names.append("model.1.submodule.1.submodule.1.submodule")
    modules = dict(lung.module.named_modules())
    kept: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: kept.__setitem__(n, o)) for n in names]
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            lung.module(x)
            maps = lung_encoder_maps(lung.module, x)
    finally:
        for h in handles:
            h.remove()
    assert [m.shape[1] for m in maps] == [16, 32, 64, 128]
    for name, m in zip(names, maps, strict=True):
        assert torch.equal(kept[name], m)


def test_infection_taps_are_encoder_bottom_and_decoder_levels_in_execution_order():
    net = _random_classifier()
    maps = net.infection_maps(torch.rand(1, 2, 32, 32))
    # three stride-2 encoder levels, the bottom, then the decoder back up (deep to shallow)
    assert [(m.shape[1], m.shape[-1]) for m in maps] == [(8, 16), (16, 8), (32, 4), (64, 4), (16, 8), (8, 16)]
    assert len(infection_taps(net.infection)) == 6
    assert net.feature_count() == 3 * (8 + 16 + 32) + 3 * (8 + 16 + 32 + 64 + 16 + 8)


def test_pooled_statistics_by_hand():
    m = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    pooled = pool_maps([m])[0]
    assert torch.allclose(pooled, torch.tensor([1.5, 5.5, 3.0, 7.0, 1.2910, 1.2910]), atol=1e-4)


def test_slice_inputs_crop_the_lung_box_and_use_ones_for_lung_region_crops():
    gray = np.zeros((100, 120), np.float32)
    gray[20:80, 30:90] = 200
    mask = np.zeros((100, 120), bool)
    mask[30:70, 40:80] = True
    inputs = slice_inputs(gray, mask, 64, 32)
    assert inputs.lung.shape == (1, 64, 64) and inputs.infection.shape == (2, 32, 32)
    assert inputs.box == (26, 74, 36, 84)  # 10 % margin of the 40 x 40 box
    assert 0 < inputs.infection[1].mean() < 1  # the mask channel is the lung mask
    full = slice_inputs(gray, np.ones_like(mask), 64, 32)
    assert full.box == (0, 100, 0, 120) and full.infection[1].min() == 1.0


# ------------------------------------------------------------------------------------------ the head
def test_logistic_regression_finds_the_signal_and_is_invariant_to_feature_scaling():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.array([1, 10, 100, 0.1, 1]) + np.array([0, 50, -300, 2, 0])
    y = (x[:, 1] - 50 > 0).astype(float)
    head = fit_logistic(x, y, 1.0)
    assert roc_auc(y, head.logits(x)) > 0.99
    standardized = np.abs(head.weight * x.std(0))
    assert int(np.argmax(standardized)) == 1  # the one feature that carries the label
    # the standardisation is inside the fit and folded into the weights: rescaled features, same logits
    scale, shift = np.array([3.0, 0.01, 7.0, 100.0, 0.5]), np.array([5.0, -2.0, 1000.0, 0.0, 3.0])
    rescaled = fit_logistic(x * scale + shift, y, 1.0)
    assert np.allclose(rescaled.logits(x * scale + shift), head.logits(x), atol=1e-3)
    strong = fit_logistic(x, y, 1e-4)  # strong L2 shrinks the weights
    assert np.abs(strong.weight * x.std(0)).sum() < standardized.sum()


def test_mean_head_gives_the_mean_logit():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 4))
    a = fit_logistic(x, (x[:, 0] > 0).astype(float), 0.1)
    b = fit_logistic(x, (x[:, 1] > 0).astype(float), 0.1)
    assert np.allclose(mean_head([a, b]).logits(x), 0.5 * (a.logits(x) + b.logits(x)))


def test_perceptron_head_learns_what_a_linear_head_cannot_and_is_seeded():
    """An XOR of two features: a linear head stays near chance, the perceptron ensemble finds it; the same
    seed gives the same weights; raw features of any scale are standardised inside."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 6)) * np.array([1, 5, 1, 0.1, 1, 1]) + np.array([0, 20, 0, 3, 0, 0])
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 20)).astype(float)
    train, test = slice(0, 300), slice(300, 400)
    linear = fit_logistic(x[train], y[train], 1.0)
    ens = HeadEnsemble([fit_mlp(x[train], y[train], 1.0, 16, seed=s, epochs=150, lr=0.01) for s in (0, 1, 2)])
    assert roc_auc(y[test], linear.logits(x[test])) < 0.7
    assert roc_auc(y[test], ens.logits(x[test])) > 0.9
    again = fit_mlp(x[train], y[train], 1.0, 16, seed=0, epochs=150, lr=0.01)
    assert np.array_equal(again.w1, ens.members[0].w1) and not np.array_equal(ens.members[1].w1, again.w1)
    # the standardisation is inside the fit and folded into the first layer: far-off raw scales still train
    scale, shift = np.array([3.0, 0.01, 7.0, 100.0, 0.5, 2.0]), np.array([5.0, -2.0, 1000.0, 0.0, 3.0, 1.0])
    rescaled = fit_mlp(x[train] * scale + shift, y[train], 1.0, 16, seed=0, epochs=150, lr=0.01)
    assert roc_auc(y[test], rescaled.logits(x[test] * scale + shift)) > 0.85
    assert np.allclose(ens.logits(x), np.mean([m.logits(x) for m in ens.members], axis=0))


def test_ensemble_head_in_the_network_gives_the_fitted_logits():
    """The exported torch head (members stacked, float32) computes the numpy ensemble's mean logit."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 7)) * 10 + 3
    y = (x[:, 0] * x[:, 1] > 9).astype(float)
    ens = fit_ensemble(x, y, 3.0, 8, (0, 1))
    head = make_head(7, {"kind": "mlp-ensemble", "hidden": 8, "members": 2})
    net = type("Net", (), {"head": head})()
    install_head(net, ens)
    with torch.no_grad():
        torch_logits = head(torch.from_numpy(x).float())[:, 0].numpy()
    assert np.allclose(torch_logits, ens.logits(x), atol=1e-3)
    with pytest.raises(ValueError, match="unknown classifier head"):
        make_head(7, {"kind": "forest"})


def test_inner_cv_picks_the_perceptron_l2_strength_from_its_grid():
    from CovidCTLib.models.data.classifier_data import Item
    from CovidCTLib.models.training.seg_feature_train import ALPHA_GRID, MLP, choose_l2

    rng = np.random.default_rng(4)
    n = 60
    items = [Item(f"g{i // 3}-{i}.png", (i // 3) % 2, f"g{i // 3}") for i in range(n)]
    labels = np.array([it.label for it in items], float)
    feats = rng.normal(size=(2, n, 5)) + labels[None, :, None] * np.array([3.0, 0, 0, 0, 0])
    value, scores = choose_l2(feats, labels, items, np.arange(n), 0, recipe=MLP)
    assert value in ALPHA_GRID and set(scores) == set(ALPHA_GRID)
    assert all(0.75 < a <= 1.0 for a in scores.values())  # the signal feature is found in every setting


def test_views_are_seeded_and_the_first_two_are_the_image_and_its_flip():
    g = np.arange(64 * 80, dtype=np.float32).reshape(64, 80) % 255
    assert np.array_equal(view_of(g, 0, 0, 3), g) and np.array_equal(view_of(g, 1, 0, 3), g[:, ::-1])
    assert np.array_equal(view_of(g, 2, 0, 3), view_of(g, 2, 0, 3))
    assert not np.array_equal(view_of(g, 2, 0, 3), view_of(g, 2, 0, 4))


# ------------------------------------------------------------------------------------------ Grad-CAM
def test_gradcam_matches_an_independent_hook_and_autograd_computation():
    net = _random_classifier(2)
    lung, infection = torch.rand(2, 1, 32, 32), torch.rand(2, 2, 32, 32)
    logits, cams = net.logits_and_cams(lung, infection)
    with torch.no_grad():
        assert torch.allclose(logits, net(lung, infection), atol=1e-5)
    last = infection_taps(net.infection)[-1]
    kept: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda _m, _i, o: kept.append(o))
    try:
        with torch.enable_grad():
            out = net(lung, infection)
            (grad,) = torch.autograd.grad(out.sum(), kept[0])
    finally:
        handle.remove()
    expected = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * kept[0]).sum(1)).detach()
    assert float(expected.max()) > 0
    assert torch.allclose(cams, expected, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _shipped_segmentation()
    from CovidCTLib.models.training.classifier_train import main_train

    data = tmp_path_factory.mktemp("segfeat_data")
    for g in range(6):
        for j in range(2):
            for label, folder in ((True, "COVID"), (False, "NonCOVID")):
                path = data / folder / f"{folder.lower()}paper{g}-p{j + 1}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(
                    sitk.GetImageFromArray(synthetic_chest(covid=label, seed=10 * g + j + (0 if label else 500))),
                    str(path),
                )
    out = tmp_path_factory.mktemp("segfeat_run")
    args = argparse.Namespace(data=str(data), out=str(out), seed=0, views=2, arch="seg-features")
    main_train(args)
    return out


def test_training_writes_a_sealed_model_with_cross_validated_metrics(trained: Path):
    import json

    manifest = json.loads((trained / "model" / "covid-classifier" / "manifest.json").read_text())
    cv = manifest["metrics"]["grouped_5fold_cv"]
    assert len(cv["folds"]) == 5 and all(f["alpha"] in (1.0, 3.0, 10.0) for f in cv["folds"])
    assert cv["head"] == "mlp" and manifest["version"] == "2.1.0"
    assert manifest["architecture"]["network"] == "seg-feature-classifier"
    assert manifest["architecture"]["kwargs"]["head"] == {"kind": "mlp-ensemble", "hidden": 32, "members": 15}
    assert "--head mlp" in manifest["training"]["command"] and manifest["calibration"]["method"] == "platt"
    state = torch.load(trained / "model" / "covid-classifier" / "covid-classifier.pt", weights_only=True)
    assert state["head.w1"].shape[0] == 15 and state["head.w1"].dtype == torch.float32
    assert state["lung.model.0.conv.0.conv.weight"].dtype == torch.float16
    # the frozen networks are exact copies of the installed segmentation networks
    lung, _ = _shipped_segmentation()
    assert torch.equal(
        state["lung.model.0.conv.0.conv.weight"].float(), lung.module.state_dict()["model.0.conv.0.conv.weight"]
    )


def test_trained_model_classifies_images_and_its_synthetic_covid_scores_higher(trained: Path):
    loaded = load_classifier(trained / "model" / "covid-classifier", "cpu")
    probs = classify_images(
        [synthetic_chest(covid=True, seed=900), synthetic_chest(covid=False, seed=901)], "cpu", loaded=loaded
    )
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert probs[0] > probs[1]


def test_tampered_head_is_refused(trained: Path, tmp_path: Path):
    import shutil

    from CovidCTLib.errors import ModelError

    copy = tmp_path / "covid-classifier"
    shutil.copytree(trained / "model" / "covid-classifier", copy)
    weights = copy / "covid-classifier.pt"
    data = bytearray(weights.read_bytes())
    data[-20] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError):
        load_classifier(copy, "cpu")


# ------------------------------------------------------------------------------------------ shipped model
def test_shipped_classifier_scores_a_phantom_and_explains_it_on_the_infection_crop():
    if not (models_dir() / "covid-classifier" / "manifest.json").is_file():
        skip_or_fail("no covid-classifier shipped")
    loaded = load_classifier(None, "cpu")
    if loaded.config.arch != "seg-features":
        pytest.skip("the installed classifier is not a segmentation-feature classifier")
    ph = make_phantom(shape=(24, 96, 96), lesions=True, seed=4)
    scan = classify_scan(ph.ct, ph.lungs, "cpu", explain=True)
    assert 0.0 <= scan.probability <= 1.0 and scan.n_slices == len(scan.slice_probabilities) > 0
    assert set(scan.cams) == set(scan.cam_boxes) == set(scan.slice_probabilities)
    z = next(iter(scan.cams))
    y0, y1, x0, x1 = scan.cam_boxes[z]
    assert 0 <= y0 < y1 <= 96 and 0 <= x0 < x1 <= 96 and scan.cams[z].ndim == 2
    plain = classify_scan(ph.ct, ph.lungs, "cpu")
    assert abs(plain.probability - scan.probability) < 1e-5  # the explained pass gives the same score


def test_scan_score_uses_the_manifests_scored_slice_rule(trained: Path, tmp_path: Path):
    """2.0.1: slices with under a quarter of the largest lung cross-section (apex / base slivers) are not
    scored; a manifest without the rule keeps 2.0.0's 10 %; a broken value is refused."""
    import json
    import shutil

    from CovidCTLib.errors import ModelError
    from CovidCTLib.models.runtime import integrity
    from CovidCTLib.models.runtime.classifier_inference import (
        MIN_SLICE_OF_MAX,
        SCORED_SLICE_OF_MAX,
        lung_slices,
    )

    folder = trained / "model" / "covid-classifier"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["pooling"]["min_slice_of_max"] == SCORED_SLICE_OF_MAX == 0.25
    ph = make_phantom(shape=(24, 96, 96), lesions=True, seed=4)
    lungs = ph.lungs.copy()
    largest = int(np.argmax((lungs > 0).sum(axis=(1, 2))))
    sliver = (largest + 6) % lungs.shape[0]
    side = int(np.sqrt(0.17 * (lungs[largest] > 0).sum()))  # a small lung cross-section: 17 % of the largest
    lungs[sliver] = 0
    lungs[sliver, 30 : 30 + side, 20 : 20 + side] = 1
    share = (lungs[sliver] > 0).sum() / (lungs[largest] > 0).sum()
    assert MIN_SLICE_OF_MAX <= share < SCORED_SLICE_OF_MAX
    scan = classify_scan(ph.ct, lungs, "cpu", model_dir=folder)
    assert set(scan.slice_probabilities) == set(lung_slices(lungs, SCORED_SLICE_OF_MAX))
    assert sliver not in scan.slice_probabilities and "25%" in scan.scored_slices

    older = tmp_path / "older" / "covid-classifier"
    shutil.copytree(folder, older)
    without = {**manifest, "pooling": {k: v for k, v in manifest["pooling"].items() if k != "min_slice_of_max"}}
    (older / "manifest.json").write_text(json.dumps(integrity.seal(without)))
    old_rule = classify_scan(ph.ct, lungs, "cpu", model_dir=older)
    assert sliver in old_rule.slice_probabilities  # 2.0.0's rule scores the sliver too
    assert set(old_rule.slice_probabilities) == set(lung_slices(lungs, MIN_SLICE_OF_MAX))

    broken = {**manifest, "pooling": {**manifest["pooling"], "min_slice_of_max": 1.5}}
    (older / "manifest.json").write_text(json.dumps(integrity.seal(broken)))
    with pytest.raises(ModelError, match="min_slice_of_max"):
        classify_scan(ph.ct, lungs, "cpu", model_dir=older)
