"""``covidct calibrate lung|infection|classifier``: post-processing settings stored in a model's manifest.

Lung / infection: the threshold that turns the network's probabilities into masks
(``postprocess.threshold``), chosen by pooled Dice on a subsample of the slices of the *training* groups of
the grouped split (the same split as ``covidct train``), so the validation groups stay untouched for the
numbers reported in the model card; ``split="val"`` chooses on the validation groups instead (recorded as
such, and those numbers are then optimistic).

- lung: every 4th png256 training slice, through the 2-D lung inference;
- infection: every 8th png256 and every 2nd MedSeg training slice, through the 2-D infection inference
  (lungs from the installed lung model); the threshold with the best mean of the per-source Dice wins.

Classifier: Platt scaling of the slice probabilities (``calibration``), fitted on its grouped validation
split (:func:`calibrate_classifier`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from CovidCTLib.errors import InputError
from CovidCTLib.models.data.datasets import grouped_split, medseg_items, parse_data_spec, png256_items, read_gray
from CovidCTLib.models.evaluation.metrics import confusion, pooled_metrics
from CovidCTLib.models.runtime import inference
from CovidCTLib.models.runtime.registry import read_manifest, write_manifest
from CovidCTLib.segmentation.postprocess import clean_lung_mask_2d

#: Below this validation AUC a probability calibration is refused (it would be fitted to noise).
MIN_AUC_TO_CALIBRATE = 0.6
THRESHOLDS = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: Slice subsampling of the training groups per source (speed; neighbouring slices are near-duplicates).
EVERY = {"lung": {"png256": 4}, "infection": {"png256": 8, "medseg": 2}}


def _split_items(kind: str, root: Path, every: int, seed: int, val_fraction: float, split: str) -> list[dict[str, Any]]:
    """Every ``every``-th slice of the training groups (``split="train"``) or all validation slices (``"val"``)."""
    items = png256_items(root) if kind == "png256" else medseg_items(root)
    train, val = grouped_split([it["group"] for it in items], val_fraction, seed)
    return [items[i] for i in train[::every]] if split == "train" else [items[i] for i in val]


def _truth(path: Path, multiclass: bool) -> np.ndarray:
    t = read_gray(path)
    return t > 0 if multiclass else t > 127


def dice_by_threshold(
    task: str,
    data: str,
    seed: int = 0,
    val_fraction: float = 0.2,
    thresholds: tuple[float, ...] = THRESHOLDS,
    batch: int = 32,
    split: str = "train",
) -> dict[str, dict[str, float]]:
    """``{source: {threshold: pooled Dice}}`` on the subsampled training groups (or the validation groups,
    ``split="val"``) of each 8-bit source."""
    if task not in EVERY:
        raise InputError(f"unknown task {task!r}; use lung or infection.")
    if split not in ("train", "val"):
        raise InputError(f"calibration split {split!r}: use train or val.")
    result: dict[str, dict[str, float]] = {}
    for kind, root in parse_data_spec(data):
        if kind not in EVERY[task]:
            continue
        items = _split_items(kind, root, EVERY[task][kind], seed, val_fraction, split)
        counts: dict[float, list[tuple[int, int, int, int]]] = {t: [] for t in thresholds}
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            grays = [read_gray(it["image"]).astype(np.float32) for it in chunk]
            if task == "lung":
                for it, p in zip(chunk, inference.slice_lung_probabilities(grays), strict=True):
                    truth = _truth(it["lung"], False)
                    for t in thresholds:
                        counts[t].append(confusion(clean_lung_mask_2d(p >= t), truth))
            else:
                lungs = inference.slice_lungs(grays)
                regions = inference.slice_infection_probabilities(grays, lungs)
                for it, region in zip(chunk, regions, strict=True):
                    truth = _truth(it["inf"], bool(it.get("multiclass")))
                    for t in thresholds:
                        counts[t].append(confusion(region.labels(t) > 0, truth))
        if items:
            result[kind] = {str(t): round(pooled_metrics(c)["dice"], 4) for t, c in counts.items()}
    if not result:
        raise InputError(
            f"calibrating the {task} model needs 8-bit labelled data: "
            f"{' or '.join(k + ':<folder>' for k in EVERY[task])}."
        )
    return result


def calibrate(
    task: str, data: str, model_dir: str | Path, seed: int = 0, val_fraction: float = 0.2, split: str = "train"
) -> dict[str, Any]:
    """Measure the thresholds with the model in ``model_dir`` and store the best in its manifest.

    ``split="val"`` chooses on the validation groups instead: the networks are more confident on the slices
    they were trained on, so the training groups favour too high a threshold for new patients; the
    validation numbers reported afterwards are then optimistic (the manifest records which split chose).
    """
    model_dir = Path(model_dir)
    manifest_path = model_dir / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{model_dir} is not a model folder (no manifest.json); give <train --out>/model/<name>.")
    name = inference.model_name(task)
    inference.use_model_folder(name, model_dir)
    try:
        table = dice_by_threshold(task, data, seed, val_fraction, split=split)
    finally:
        inference.use_model_folder(name, None)
    thresholds = list(next(iter(table.values())))
    score = {t: float(np.mean([table[s][t] for s in table])) for t in thresholds}
    best = max(thresholds, key=lambda t: score[t])
    manifest = read_manifest(model_dir.name, model_dir.parent)  # seal checked before it is re-sealed
    manifest["postprocess"] = {
        **manifest.get("postprocess", {}),  # other settings (test-time flips) stay
        "threshold": float(best),
        "calibration": {
            "rule": "best mean over sources of the pooled Dice on "
            + (
                "subsampled TRAINING-group slices"
                if split == "train"
                else "the VALIDATION-group slices (validation numbers are optimistic)"
            )
            + f" (split seed {seed}, validation fraction {val_fraction})",
            "split": split,
            "pooled_dice": table,
        },
    }
    write_manifest(manifest_path, manifest)  # re-sealed (manifest_sha256)
    return manifest["postprocess"]


def fit_platt(probabilities: np.ndarray, labels: np.ndarray, l2: float = 1e-3, steps: int = 100) -> tuple[float, float]:
    """Slope and intercept of ``sigmoid(slope * logit(p) + intercept)`` by penalised maximum likelihood
    (Newton's method on the two parameters)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1 - 1e-6)
    y = np.asarray(labels, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise InputError("calibration needs both classes (COVID and non-COVID) in the validation split.")
    x = np.column_stack([np.log(p / (1 - p)), np.ones_like(p)])
    w = np.array([1.0, 0.0])
    for _ in range(steps):
        q = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (q - y) + l2 * w
        hess = (x * (q * (1 - q))[:, None]).T @ x + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(w[0]), float(w[1])


def calibrate_classifier(
    data: str | Path, model_dir: str | Path, seed: int = 0, val_fraction: float = 0.2, fold: int = 0
) -> dict[str, Any]:
    """Fit Platt scaling of the classifier on the grouped validation split and store it in its manifest.

    The ranking (AUC) does not change; the probabilities get a usable scale (the raw network output of a
    model trained with label smoothing and a class weight crowds around 0.5). The split is the one used
    to pick the best epoch, so the calibrated F1 there is optimistic.
    """
    from CovidCTLib.models.data.classifier_data import grouped_split, list_dataset
    from CovidCTLib.models.evaluation.metrics import binary_metrics
    from CovidCTLib.models.runtime.classifier_inference import classify_images, load_classifier

    model_dir = Path(model_dir)
    manifest_path = model_dir / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{model_dir} is not a model folder (no manifest.json); give <train --out>/model.")
    items = list_dataset(data)
    _, val = grouped_split(items, val_fraction, seed, fold)
    items = [items[i] for i in val]
    labels = np.array([it.label for it in items])
    loaded = load_classifier(model_dir, "cpu")
    raw_output = replace(loaded, manifest={k: v for k, v in loaded.manifest.items() if k != "calibration"})
    raw = np.asarray(classify_images([it.path for it in items], loaded=raw_output))
    from CovidCTLib.models.evaluation.metrics import roc_auc

    auc = roc_auc(labels, raw)
    if not auc >= MIN_AUC_TO_CALIBRATE:
        raise InputError(
            f"the classifier does not separate COVID from non-COVID on the validation split "
            f"(AUC {auc:.2f}); train it further before calibrating its probabilities."
        )
    slope, intercept = fit_platt(raw, labels)
    from CovidCTLib.models.runtime.classifier_inference import apply_calibration

    calibration = {
        "method": "platt",
        "slope": round(slope, 5),
        "intercept": round(intercept, 5),
        "fitted_on": f"grouped validation split (seed {seed}, fraction {val_fraction}, fold {fold}): "
        f"{len(items)} images, {int(labels.sum())} COVID",
    }
    calibrated = apply_calibration(raw, calibration)
    calibration["before"] = binary_metrics(labels, raw)
    calibration["after"] = binary_metrics(labels, calibrated)
    manifest = read_manifest(model_dir.name, model_dir.parent)  # seal checked before it is re-sealed
    manifest["calibration"] = calibration
    write_manifest(manifest_path, manifest)  # re-sealed (manifest_sha256)
    return calibration
