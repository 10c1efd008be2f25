"""Lung / infection networks: losses, augmentation, data split, synthetic lesions, metrics, smoke training
with resume on phantom slices, and inference with the shipped models (skipped until they are shipped)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from required import skip_or_fail  # noqa: E402

from CovidCTLib.models.data.datasets import grouped_split, load_nifti_pairs
from CovidCTLib.models.data.synthetic_lesions import insert_lesions
from CovidCTLib.models.evaluation import metrics
from CovidCTLib.models.training.augment import AugmentConfig, augment_batch
from CovidCTLib.models.training.losses import focal_tversky_loss, partial_label_infection_loss
from CovidCTLib.phantom import make_phantom


# ----------------------------------------------------------------------------------------------- losses
def _probs(fg: torch.Tensor) -> torch.Tensor:
    """Two-class probabilities from a foreground probability map (B, H, W)."""
    return torch.stack([1 - fg, fg], 1)


def test_focal_tversky_known_values() -> None:
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, :5] = 1  # 50 foreground pixels
    perfect = focal_tversky_loss(_probs(target.float()), target, smooth=0.0)
    assert float(perfect) == pytest.approx(0.0, abs=1e-6)
    wrong = focal_tversky_loss(_probs(1 - target.float()), target, smooth=0.0)
    assert float(wrong) == pytest.approx(1.0, abs=1e-6)
    # half the target found, nothing extra: TI = 25 / (25 + 0.7 * 25) -> (1 - TI) ** 0.75
    half = target.clone().float()
    half[0, :, 5:] = 0
    ti = 25 / (25 + 0.7 * 25)
    assert float(focal_tversky_loss(_probs(half), target, smooth=0.0)) == pytest.approx((1 - ti) ** 0.75, rel=1e-5)


def test_focal_tversky_penalises_misses_more_than_extras() -> None:
    target = torch.zeros(1, 20, 20, dtype=torch.long)
    target[0, 5:15, 5:15] = 1  # 100 px
    miss = target.clone().float()
    miss[0, 5:10, 5:15] = 0  # 50 false negatives
    extra = target.clone().float()
    extra[0, 0:5, 5:15] = 1  # 50 false positives
    assert float(focal_tversky_loss(_probs(miss), target)) > float(focal_tversky_loss(_probs(extra), target))


def test_focal_tversky_gradient_points_to_target() -> None:
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, 4:12, 4:12] = 1
    logits = torch.zeros(2, 2, 16, 16, requires_grad=True)
    loss = focal_tversky_loss(torch.softmax(logits, 1), target)
    loss.backward()
    grad = logits.grad
    assert torch.isfinite(grad).all()
    fg = target.bool()
    # raising the lung logit lowers the loss inside the target and raises it outside
    assert float(grad[:, 1][fg].mean()) < 0 < float(grad[:, 1][~fg].mean())


def test_partial_label_loss_binary_ignores_class_multiclass_does_not() -> None:
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    as_ggo = torch.full((1, 3, 8, 8), -4.0)
    as_ggo[:, 0] = 4.0
    as_ggo[0, 1, 2:6, 2:6], as_ggo[0, 0, 2:6, 2:6] = 4.0, -4.0
    as_cons = as_ggo[:, [0, 2, 1]]
    binary = torch.tensor([False])
    a = partial_label_infection_loss(as_ggo, target, binary)
    b = partial_label_infection_loss(as_cons, target, binary)
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    multi = torch.tensor([True])
    assert (
        float(partial_label_infection_loss(as_cons, target, multi))
        > float(partial_label_infection_loss(as_ggo, target, multi)) + 0.5
    )


# ------------------------------------------------------------------------------------ data, augmentation
def test_augment_moves_image_and_mask_together() -> None:
    mask = torch.zeros(4, 1, 32, 32, dtype=torch.long)
    mask[:, :, 8:20, 4:14] = 1
    image = mask.float()
    cfg = AugmentConfig(p_intensity=0.0, p_hflip=0.5, p_vflip=0.5)
    img2, mask2 = augment_batch(image, mask, cfg, torch.Generator().manual_seed(1))
    assert img2.shape == image.shape and mask2.shape == mask.shape
    assert set(mask2.unique().tolist()) <= {0, 1}
    agree = ((img2 > 0.5).long() == mask2).float().mean()
    assert float(agree) > 0.97
    img3, _ = augment_batch(torch.rand(4, 1, 32, 32), mask, AugmentConfig(), torch.Generator().manual_seed(2))
    assert float(img3.min()) >= 0.0 and float(img3.max()) <= 1.0


def test_grouped_split_never_splits_a_group() -> None:
    groups = [f"a/{i // 10}" for i in range(100)] + [f"b/{i // 5}" for i in range(40)]
    tr, va = grouped_split(groups, 0.2, seed=3)
    assert len(tr) + len(va) == 140 and len(va) > 0
    assert not {groups[i] for i in tr} & {groups[i] for i in va}
    assert {groups[i].split("/")[0] for i in va} == {"a", "b"}
    tr2, va2 = grouped_split(groups, 0.2, seed=3)
    assert np.array_equal(va, va2)


def test_synthetic_lesions_inside_lung_and_denser() -> None:
    ph = make_phantom((24, 80, 80), lesions=False, seed=1)
    hu = ph.ct.array.astype(np.float32)
    lung = (ph.lungs > 0).astype(np.uint8)
    out, inf = insert_lesions(hu, lung, ph.ct.spacing_zyx, seed=4)
    assert inf.any() and not (inf[lung == 0]).any()
    assert set(np.unique(inf).tolist()) <= {0, 1, 2}
    assert (out[inf > 0] > hu[inf > 0] + 50).mean() > 0.9
    assert np.array_equal(out[lung == 0], hu[lung == 0])
    if (inf == 2).any():
        assert np.median(out[inf == 2]) > -250


def test_dependent_consolidation_lies_along_the_posterior_base() -> None:
    from CovidCTLib.models.data.synthetic_lesions import LesionParams, dependent_band

    hu = np.full((40, 60, 60), 40.0, np.float32)  # soft tissue
    lung = np.zeros(hu.shape, bool)
    lung[5:35, 10:50, 8:28] = True  # right lung (low x); LPS: z to the head, y to the back
    lung[5:35, 10:50, 32:52] = True
    hu[lung] = -850.0
    sp = (2.0, 1.0, 1.0)
    band = dependent_band(lung, np.ones(hu.shape, bool), sp, np.random.default_rng(0), 12.0, 0.4)
    assert band.max() == 1.0 and not band[~lung].any()
    zs, ys, _ = np.nonzero(band > 0.5)
    assert ys.min() >= 49 - 1.6 * 12 and ys.max() == 49  # the back of the lung, never its front
    assert zs.min() == 5 and zs.max() <= 5 + 0.4 * 29 + 1  # the base, up to 40 % of the lung's height
    only_band = LesionParams(n_lesions=(0, 0), p_dependent=1.0)
    out, inf = insert_lesions(hu, lung.astype(np.uint8), sp, seed=2, params=only_band)
    dense = inf == 2
    assert dense.any() and not inf[~lung].any()
    assert np.median(out[dense]) > -100 and np.array_equal(out[~lung], hu[~lung])


def test_metrics_known_counts() -> None:
    truth = np.zeros((10, 10), bool)
    truth[:5] = True
    pred = np.zeros((10, 10), bool)
    pred[:4] = True
    pred[9, :5] = True
    m = metrics.mask_metrics(pred, truth)
    assert m["dice"] == pytest.approx(2 * 40 / (45 + 50))
    assert m["recall"] == pytest.approx(0.8) and m["precision"] == pytest.approx(40 / 45)
    assert m["specificity"] == pytest.approx(45 / 50) and m["accuracy"] == pytest.approx(85 / 100)
    assert m["iou"] == pytest.approx(40 / 55)
    pooled = metrics.pooled_metrics([metrics.confusion(pred, truth), metrics.confusion(truth, truth)])
    assert pooled["dice"] == pytest.approx(2 * 90 / (95 + 100))
    assert metrics.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


# --------------------------------------------------------------------------------- smoke training + resume
def _phantom_folder(root: Path, n: int = 2) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for seed in range(n):
        ph = make_phantom((16, 64, 64), seed=seed)
        sitk.WriteImage(ph.ct.image, str(root / "images" / f"case{seed}.nii.gz"))
        mask = sitk.GetImageFromArray(ph.lungs.astype(np.uint8))
        mask.CopyInformation(ph.ct.image)
        sitk.WriteImage(mask, str(root / "masks" / f"case{seed}.nii.gz"))
    return root


def test_smoke_train_checkpoint_and_resume(tmp_path: Path) -> None:
    from CovidCTLib.models.cli import main
    from CovidCTLib.models.runtime import registry

    data = _phantom_folder(tmp_path / "data")
    ss = load_nifti_pairs(data, "lung", size=64)
    assert len(ss) > 0 and ss.img.shape[1:] == (64, 64) and ss.lung.any()
    out = tmp_path / "run"
    args = [
        "train",
        "lung",
        "--data",
        f"nifti:{data}",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--steps-per-epoch",
        "1",
        "--batch-size",
        "2",
        "--size",
        "64",
        "--val-fraction",
        "0.5",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "dice" in json.loads(lines[-1])
    manifest = registry.read_manifest("lung-attunet", out / "model")
    assert manifest["input"]["size"] == 64 and "covidct train lung" in manifest["training"]["command"]
    registry.load_model("lung-attunet", root=out / "model")
    assert main([*args[:6], "--epochs", "3", *args[8:], "--resume"]) == 0
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    assert "resumed from" in (out / "train.log").read_text()

    # evaluation through the public inference path, with this (barely trained) model folder
    from CovidCTLib.models.evaluation.evaluate import evaluate
    from CovidCTLib.models.runtime import inference

    try:
        result = evaluate("lung", f"nifti:{data}", tmp_path / "eval", model=str(out / "model" / "lung-attunet"))
    finally:
        inference.use_model_folder("lung-attunet", None)
    summary = result["summary"]["nifti"]
    assert summary["n_images"] > 0 and {"pooled", "mean_per_image"} <= set(summary)
    assert 0.0 <= summary["pooled"]["dice"] <= 1.0
    csv_text = (tmp_path / "eval" / "per_image.csv").read_text()
    assert "not a medical device" in csv_text and "dice" in csv_text.splitlines()[1]


# ------------------------------------------------------------------------------------------ shipped models
def _shipped() -> dict[str, str]:
    from CovidCTLib.models.runtime.inference import models_available

    return models_available()


def test_inference_on_phantom_with_shipped_models() -> None:
    available = _shipped()
    if "lung" not in available:
        skip_or_fail("lung model not shipped")
    from CovidCTLib.models.runtime.inference import segment_infection_model, segment_lungs_model

    ph = make_phantom((40, 128, 128), seed=2)
    lungs = segment_lungs_model(ph.ct, device="cpu")
    assert lungs.shape == ph.ct.shape and lungs.dtype == np.uint8
    assert set(np.unique(lungs).tolist()) == {0, 1, 2}
    dice = metrics.mask_metrics(lungs > 0, ph.lungs > 0)["dice"]
    assert dice > 0.8, dice
    side_agree = (lungs[(lungs > 0) & (ph.lungs > 0)] == ph.lungs[(lungs > 0) & (ph.lungs > 0)]).mean()
    assert side_agree > 0.95
    if "infection" in available:
        inf = segment_infection_model(ph.ct, lungs, device="cpu")
        assert inf.shape == ph.ct.shape and not inf[lungs == 0].any()
        assert set(np.unique(inf).tolist()) <= {0, 1, 2}


def test_finetune_starts_from_shipped_model(tmp_path: Path) -> None:
    if "lung" not in _shipped():
        skip_or_fail("lung model not shipped")
    from CovidCTLib.models.cli import main
    from CovidCTLib.models.runtime import registry

    data = _phantom_folder(tmp_path / "data", n=2)
    out = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "lung",
                "--data",
                f"nifti:{data}",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--max-steps",
                "1",
                "--batch-size",
                "2",
                "--val-fraction",
                "0.5",
                "--threads",
                "1",
                "--tversky",
                "0.5,0.5",
            ]
        )
        == 0
    )
    assert "initialised from model lung-attunet" in (out / "train.log").read_text()
    manifest = registry.read_manifest("lung-attunet", out / "model")
    assert manifest["training"]["init_from"] == "lung-attunet"
    assert (
        manifest["training"]["tversky_alpha_beta"] == [0.5, 0.5]
        and "--tversky 0.5,0.5" in manifest["training"]["command"]
    )


def test_tversky_weights_are_parsed_and_checked() -> None:
    from CovidCTLib.errors import InputError
    from CovidCTLib.models.cli import parse_tversky
    from CovidCTLib.models.training.losses import focal_tversky_loss

    assert parse_tversky(None) == (0.7, 0.3) and parse_tversky("0.5,0.5") == (0.5, 0.5)
    for bad in ("0.5", "a,b", "0,1", "0.5,-1"):
        with pytest.raises(InputError, match="--tversky"):
            parse_tversky(bad)
    # an over-segmenting prediction costs more when false positives weigh more
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    probs = torch.zeros(1, 2, 8, 8)
    probs[0, 1, 1:7, 1:7] = 1.0
    probs[0, 0] = 1.0 - probs[0, 1]
    recall_weighted = focal_tversky_loss(probs, target, alpha=0.7, beta=0.3)
    balanced = focal_tversky_loss(probs, target, alpha=0.5, beta=0.5)
    assert float(balanced) > float(recall_weighted) > 0.0


def test_lung_postprocess_drops_solid_organs_keeps_dense_lesions() -> None:
    from CovidCTLib.segmentation.postprocess import clean_lung_mask

    hu = np.full((6, 40, 40), 40.0, np.float32)  # soft tissue
    hu[:, 5:20, 5:18] = -850.0  # aerated lung
    hu[:, 10:14, 8:12] = 30.0  # consolidation inside it
    mask = np.zeros(hu.shape, bool)
    mask[:, 5:20, 5:18] = True  # lung (with its lesion)
    mask[:, 25:35, 22:35] = True  # false positive over solid tissue (liver-like)
    out = clean_lung_mask(mask, hu)
    assert out[:, 10:14, 8:12].all()
    assert not out[:, 25:35, 22:35].any()
    assert clean_lung_mask(mask).sum() == mask.sum()


def test_lung_postprocess_removes_gas_under_the_lungs_and_the_liver_dome() -> None:
    from CovidCTLib.segmentation.postprocess import clean_lung_mask, drop_gas_below_lungs

    hu = np.full((30, 40, 40), 40.0, np.float32)  # soft tissue; LPS: z index grows to the head
    lung = np.zeros(hu.shape, bool)
    lung[8:30, 4:36, 4:18] = True  # right lung, base at z = 8
    lung[8:30, 4:36, 22:36] = True  # left lung
    hu[lung] = -850.0
    hu[12:15, 8:11, 8:11] = 30.0  # a dense lesion enclosed by lung
    hu[8:16, 14:24, 7:15] = 60.0  # the liver dome: rises from below into the right lung's base
    gas = np.zeros(hu.shape, bool)
    gas[0:7, 10:20, 26:34] = True  # stomach gas under the left lung; z = 7 is the diaphragm
    hu[gas] = -950.0
    predicted = lung.copy()
    predicted[12:15, 8:11, 8:11] = False  # the network missed the lesion...
    predicted[8:16, 14:24, 7:15] = False  # ...and rightly left the dome out
    predicted |= gas  # but took the gas for lung
    predicted[2:9, 8:22, 24:36] = True  # with its wall
    dropped = drop_gas_below_lungs(predicted, hu)
    assert not dropped[gas].any() and dropped[lung & (hu < -600)].all()
    out = clean_lung_mask(predicted, hu)
    assert out[12:15, 8:11, 8:11].all()  # enclosed lesion filled in
    assert not out[8:16, 14:24, 7:15].any()  # dome open to the abdomen below: not filled
    assert not out[:8].any()  # nothing under the lungs' base survives
    assert out[lung & (hu < -600)].all()
    small_bulla = predicted.copy()
    hu2 = hu.copy()
    hu2[20:22, 30:32, 10:12] = 40.0  # a walled air pocket inside the lung's height is left alone
    assert drop_gas_below_lungs(small_bulla, hu2)[20:22, 29:33, 9:13].sum() == small_bulla[20:22, 29:33, 9:13].sum()


def test_data_spec_parsing_prefixed_detected_and_missing(tmp_path) -> None:
    from CovidCTLib.errors import InputError
    from CovidCTLib.models.data.datasets import parse_data_spec

    medseg = tmp_path / "medseg_like"
    (medseg / "Imgs").mkdir(parents=True)
    (medseg / "GT_multiclass").mkdir()
    other = tmp_path / "mine"
    other.mkdir()
    assert parse_data_spec(f" {medseg} , nifti-binary:{other}") == [("medseg", medseg), ("nifti-binary", other)]
    with pytest.raises(InputError, match="does not exist"):
        parse_data_spec(f"png256:{tmp_path / 'absent'}")


def test_source_weights_option_parsed_and_applied() -> None:
    from CovidCTLib.errors import InputError
    from CovidCTLib.models.cli import parse_source_weights
    from CovidCTLib.models.data.datasets import SliceSet
    from CovidCTLib.models.training.train_seg import _sampling_probs

    assert parse_source_weights(None) is None
    assert parse_source_weights("png256=0.8, lidc-synth=0.2") == {"png256": 0.8, "lidc-synth": 0.2}
    for bad in ("png256", "png256=x", "png256=-1", "png256=0"):
        with pytest.raises(InputError, match="source-weights"):
            parse_source_weights(bad)
    n = 10  # 8 png256 slices, 2 lidc-synth slices
    zeros = np.zeros((n, 4, 4), np.uint8)
    data = SliceSet(
        zeros.astype(np.float32),
        zeros.astype(np.float32),
        zeros,
        np.ones(n, bool),
        zeros,
        np.zeros(n, np.int64),
        ["g"] * n,
        ["png256"] * 8 + ["lidc-synth"] * 2,
    )
    default = _sampling_probs(data, "lung")
    assert default[:8].sum() == pytest.approx(0.5) and default[8:].sum() == pytest.approx(0.5)
    tuned = _sampling_probs(data, "lung", {"png256": 0.8, "lidc-synth": 0.2})
    assert tuned[:8].sum() == pytest.approx(0.8) and tuned[9] == pytest.approx(0.1)


def test_lesion_emphasis_draws_consolidated_slices_more_often() -> None:
    from CovidCTLib.models.data.datasets import INF_BINARY, SliceSet
    from CovidCTLib.models.training.train_seg import _sampling_probs, lesion_share

    lung = np.zeros((3, 4, 4), np.uint8)
    lung[:, :, :2] = 1  # 8 lung pixels per slice
    inf = np.zeros_like(lung)
    inf[0, :, 0] = 1  # slice 0: half of its lung is infected
    inf[2, :, 3] = 1  # slice 2: infection outside the lung does not count
    img = lung.astype(np.float32)
    data = SliceSet(img, img, lung, np.ones(3, bool), inf, np.full(3, INF_BINARY), ["g"] * 3, ["png256"] * 3)
    np.testing.assert_allclose(lesion_share(data), [0.5, 0.0, 0.0])
    plain = _sampling_probs(data, "lung")
    np.testing.assert_allclose(plain, [1 / 3] * 3)
    emphasised = _sampling_probs(data, "lung", lesion_emphasis=4.0)  # weights 3 : 1 : 1
    np.testing.assert_allclose(emphasised, [0.6, 0.2, 0.2])


def _png256_from_phantom(root: Path) -> Path:
    """A covid19_ct_seg_png256-shaped folder made of lung-window phantom slices (5 groups)."""
    import csv as _csv

    from PIL import Image

    for sub in ("ct", "lungs", "covid"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for g in range(5):
        ph = make_phantom((16, 96, 96), seed=g)
        hu = ph.ct.array.reshape(ph.ct.shape).astype(np.float32)
        for z in np.nonzero(ph.infection.reshape(ph.infection.shape[0], -1).any(1))[0]:
            i = f"{len(rows):04d}"
            img = np.clip((hu[z] + 1250) / 1500 * 255, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "ct" / f"{i}.png")
            Image.fromarray((ph.lungs[z] > 0).astype(np.uint8) * 255).save(root / "lungs" / f"{i}.png")
            Image.fromarray((ph.infection[z] > 0).astype(np.uint8) * 255).save(root / "covid" / f"{i}.png")
            rows.append(
                {
                    "index": i,
                    "ct": f"ct/{i}.png",
                    "lung_mask": f"lungs/{i}.png",
                    "infection_mask": f"covid/{i}.png",
                    "source": "coronacases",
                    "inferred_group": f"g{g}",
                }
            )
    with open(root / "index.csv", "w", newline="") as f:
        w = _csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.mark.parametrize("task", ["lung", "infection"])
def test_calibrate_stores_best_training_threshold_in_manifest(task: str, tmp_path: Path) -> None:
    import shutil

    from CovidCTLib.models.cli import main
    from CovidCTLib.models.evaluation.calibrate import THRESHOLDS
    from CovidCTLib.models.runtime import registry
    from CovidCTLib.models.runtime.inference import models_available

    name = {"lung": "lung-attunet", "infection": "infection-unet"}[task]
    if task not in models_available():
        skip_or_fail("shipped models not installed")
    data = _png256_from_phantom(tmp_path / "png")
    folder = tmp_path / "model" / name
    shutil.copytree(registry.models_dir() / name, folder)
    before = json.loads((folder / "manifest.json").read_text()).get("postprocess", {})
    assert main(["calibrate", task, "--data", f"png256:{data}", "--model", str(folder)]) == 0
    post = json.loads((folder / "manifest.json").read_text())["postprocess"]
    kept = {k: v for k, v in before.items() if k not in ("threshold", "calibration")}
    assert {k: post[k] for k in kept} == kept  # e.g. test-time flips survive a re-calibration
    table = post["calibration"]["pooled_dice"]["png256"]
    assert set(table) == {str(t) for t in THRESHOLDS} and all(0.0 <= d <= 1.0 for d in table.values())
    assert table[str(post["threshold"])] == max(table.values())
    assert max(table.values()) > 0.5  # the shipped networks do find the phantom's lungs / lesions
    registry.load_model(name, root=folder.parent)  # weights untouched: the checksum still verifies
    if task == "lung":  # choosing on the validation groups is recorded as such
        assert main(["calibrate", task, "--data", f"png256:{data}", "--model", str(folder), "--split", "val"]) == 0
        post_val = json.loads((folder / "manifest.json").read_text())["postprocess"]
        assert post_val["calibration"]["split"] == "val" and "VALIDATION" in post_val["calibration"]["rule"]
        assert post_val["calibration"]["pooled_dice"] != post["calibration"]["pooled_dice"]  # other slices


def test_infection_finetune_from_folder_with_predicted_lung_input(tmp_path: Path) -> None:
    if not {"lung", "infection"} <= set(_shipped()):
        skip_or_fail("models not shipped")
    import shutil

    from CovidCTLib.models.cli import main
    from CovidCTLib.models.data.datasets import CROP_TO_LUNG, load_png256
    from CovidCTLib.models.runtime import registry

    data = _png256_from_phantom(tmp_path / "png")
    CROP_TO_LUNG["on"] = False
    truth = load_png256(data, 64)
    predicted = load_png256(data, 64, predicted_lungs=True)
    assert len(predicted) == len(truth)
    inter = (truth.lung & predicted.lung).sum()
    assert 0.8 < 2 * inter / (truth.lung.sum() + predicted.lung.sum()) < 1.0  # the lung model's masks, not a copy

    start = tmp_path / "start" / "infection-unet"
    shutil.copytree(registry.models_dir() / "infection-unet", start)
    out = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "infection",
                "--model",
                str(start),
                "--data",
                f"png256:{data}",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--max-steps",
                "1",
                "--batch-size",
                "2",
                "--size",
                "64",
                "--lung-input",
                "predicted",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert f"initialised from model {start}" in (out / "train.log").read_text()
    training = registry.read_manifest("infection-unet", out / "model")["training"]
    assert training["lung_input"].startswith("predicted by lung-attunet")
    assert "--lung-input predicted" in training["command"]


def test_test_time_flips_average_mirrored_predictions() -> None:
    from CovidCTLib.errors import ModelError
    from CovidCTLib.models.runtime import inference
    from CovidCTLib.models.runtime.registry import LoadedModel

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, kernel_size=3, padding=1).eval()  # not mirror-symmetric
    x = np.random.default_rng(0).random((3, 1, 12, 12)).astype(np.float32)
    manifest = {"input": {"size": 12}, "postprocess": {}}
    plain = LoadedModel("toy", net, manifest)
    flipped = LoadedModel("toy", net, {**manifest, "postprocess": {"test_time_flips": ["h", "v", "hv"]}})
    shapes = [(12, 12)] * 3
    p0 = np.stack(inference._predict_probs(plain, list(x), shapes))
    p1 = np.stack(inference._predict_probs(flipped, list(x), shapes))
    with torch.no_grad():
        expected = (
            sum(
                torch.flip(torch.softmax(net(torch.flip(torch.from_numpy(x), a)), 1), a).numpy()
                if a
                else torch.softmax(net(torch.from_numpy(x)), 1).numpy()
                for a in [(), (3,), (2,), (2, 3)]
            )
            / 4
        )
    np.testing.assert_allclose(p1, expected, atol=1e-5)
    assert np.abs(p1 - p0).max() > 1e-3  # the flips change the result
    np.testing.assert_allclose(p1.sum(1), 1.0, atol=1e-5)
    bad = LoadedModel("toy", net, {**manifest, "postprocess": {"test_time_flips": ["rot90"]}})
    with pytest.raises(ModelError, match="test_time_flips"):
        inference._predict_probs(bad, list(x), shapes)


def test_soup_averages_a_runs_best_and_last_checkpoints(tmp_path: Path) -> None:
    """`covidct soup` exports the element-wise mean of the run's checkpoints as a loadable, verified model."""
    from CovidCTLib.errors import InputError
    from CovidCTLib.models.cli import main
    from CovidCTLib.models.runtime import registry
    from CovidCTLib.models.training.checkpoints import save_checkpoint
    from CovidCTLib.models.training.soup import average_states
    from CovidCTLib.models.training.train_seg import build_model

    if "lung" not in _shipped():
        skip_or_fail("lung model not shipped")
    run = tmp_path / "run"
    torch.manual_seed(0)
    first, second = build_model("lung"), build_model("lung")
    for p in second.parameters():
        torch.nn.init.normal_(p, std=0.05)
    template = registry.read_manifest("lung-attunet")
    manifest = {k: v for k, v in template.items() if k not in ("sha256", "manifest_sha256", "postprocess")}
    manifest["postprocess"] = {"threshold": 0.5, "calibration": {"split": "train"}, "test_time_flips": ["h"]}
    registry.save_model(second, run / "model" / "lung-attunet", manifest)
    save_checkpoint({"model": first.state_dict(), "epoch": 2, "metrics": {}}, run / "best.pt")
    save_checkpoint({"model": second.state_dict(), "epoch": 4}, run / "last.pt")
    assert main(["soup", "lung", "--run", str(run)]) == 0
    soup = registry.load_model("lung-attunet", "cpu", root=run / "soup")
    assert soup.manifest["training"]["soup"]["epochs"] == [3, 5]
    assert "threshold" not in soup.manifest.get("postprocess", {})  # to be chosen again by calibrate
    assert soup.manifest["postprocess"] == {"test_time_flips": ["h"]}  # other settings stay
    a, b = first.state_dict(), second.state_dict()
    for key, value in soup.module.state_dict().items():
        if value.is_floating_point():
            expected = (a[key].float() + b[key].float()) / 2
            torch.testing.assert_close(value.float(), expected, atol=2e-3, rtol=2e-3)  # stored as float16
        else:
            assert torch.equal(value, b[key])
    assert not torch.allclose(
        soup.module.state_dict()["model.0.conv.0.conv.weight"].float(),
        b["model.0.conv.0.conv.weight"].float(),
        atol=1e-3,
    )
    with pytest.raises(InputError, match="different networks"):
        average_states([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
