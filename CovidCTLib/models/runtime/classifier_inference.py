"""COVID vs non-COVID classification of CT scans and 2-D images with the installed classifier.

``classify_scan`` scores every lung-containing axial slice of a volume (lung-cropped like in training)
and pools them: the scan probability is the mean slice probability, ``top_k_mean`` the mean of the
top ``TOP_K_FRACTION`` (10 %) slices. ``classify_images`` scores 2-D images (8-bit display range),
``classify_path`` does either for a file or DICOM folder. Research software, not a diagnosis.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F  # noqa: N812

from CovidCTLib.errors import AnalysisError, InputError, ModelError
from CovidCTLib.models.runtime.classifier import (
    CROP_MARGIN,
    CROP_SIZE,
    TOP_K_FRACTION,
    ClassifierConfig,
    crop_to_lungs,
    pool_probabilities,
    quantize_8bit,
    to_gray,
    to_unit,
)
from CovidCTLib.models.runtime.device import resolve_device
from CovidCTLib.models.runtime.seg_feature_inference import ARCH as SEG_ARCH
from CovidCTLib.models.runtime.seg_feature_inference import is_seg_feature_manifest, score_slices
from CovidCTLib.progress import Reporter
from CovidCTLib.version import DISCLAIMER
from CovidCTLib.volume import CTVolume

MODEL_NAME = "covid-classifier"
MODEL_VERSION = "1.0.0"
WEIGHTS_FILE = "covid-classifier.pt"
#: The lung region of a 2-D image for the classifier fills every hole of the network's mask (as when the
#: 2.x classifiers were trained): a region for its features, where the lung segmentation of 2-D images
#: leaves out large enclosed regions (``segmentation.postprocess.MAX_HOLE_SHARE_2D``).
IMAGE_MASK_HOLE_SHARE = 1.0
#: A slice counts as lung-containing when its lung area is at least this share of the slice ...
MIN_SLICE_LUNG_FRACTION = 0.01
#: ... and at least this share of the largest lung cross-section of the scan (drops apex/base slivers): the
#: rule of the training slices taken from volumes, and of scan scoring for models whose manifest names none.
MIN_SLICE_OF_MAX = 0.10
#: the scoring rule new manifests get (``pooling.min_slice_of_max``): slices with less than a quarter of the
#: largest lung cross-section are mostly partial volume of the diaphragm or apex; on the six real volumes the
#: 2.0.0 classifier scored those of the five non-COVID scans 0.09-0.46 on average against 0.02-0.17 overall
SCORED_SLICE_OF_MAX = 0.25

HOW_TO = (
    "No COVID classifier is installed. Train one with `covidct train classifier --data "
    "/path/to/covid_ct_classification --out runs/classifier` and copy its model/ folder to "
    "Resources/Models/covid-classifier/ (or set COVIDCT_MODELS_DIR to the folder holding it), or install "
    "a released covid-classifier model folder (manifest.json + weights) there."
)


@dataclass
class ScanClassification:
    """Result of classifying one scan (probabilities of COVID-19 pattern, 0..1)."""

    probability: float
    top_k_mean: float
    slice_probabilities: dict[int, float]
    n_slices: int
    model_name: str
    model_version: str
    top_k: int = 1
    disclaimer: str = DISCLAIMER
    #: Grad-CAM map per slice (radiological view, crop's feature grid) when classified with ``explain=True``
    cams: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    #: (y0, y1, x0, x1) in the radiological view of the slice each map lies on (absent: the classic lung crop)
    cam_boxes: dict[int, tuple[int, int, int, int]] = field(default_factory=dict, repr=False)
    #: which slices were scored (:func:`slice_rule`)
    scored_slices: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "probability": round(self.probability, 4),
            "top_k_mean": round(self.top_k_mean, 4),
            "top_k": self.top_k,
            "top_k_fraction": TOP_K_FRACTION,
            "n_slices": self.n_slices,
            "slice_probabilities": {str(k): round(v, 4) for k, v in self.slice_probabilities.items()},
            "model_name": self.model_name,
            "model_version": self.model_version,
            "disclaimer": self.disclaimer,
        }


@dataclass
class LoadedClassifier:
    """A classifier ready to run: network (eval mode), its config, manifest and device."""

    model: torch.nn.Module
    config: ClassifierConfig
    manifest: dict[str, Any]
    device: torch.device
    tta: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- model folder / manifest


def default_model_dir() -> Path:
    """``<models dir>/covid-classifier`` (``$COVIDCT_MODELS_DIR`` or ``Resources/Models``)."""
    from CovidCTLib.models.runtime.registry import models_dir

    return models_dir() / MODEL_NAME


def classifier_manifest(config: ClassifierConfig, info: dict[str, Any]) -> dict[str, Any]:
    """Manifest (registry format) describing the classifier network, preprocessing and pooling."""
    from CovidCTLib.models.runtime.normalization import HU_WINDOW, NORMALIZATION_ID

    manifest: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "task": "classification",
        "description": "COVID-19 vs non-COVID axial CT slice classifier (lung-cropped), pooled to a scan score",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "framework": f"torch {torch.__version__.split('+')[0]} + MONAI EfficientNetBN (trained from scratch)",
        "architecture": {
            "network": "efficientnet",
            "kwargs": {"model_name": config.arch, "in_channels": config.in_channels},
        },
        "input": {"channels": config.in_channels, "size": config.input_size},
        "normalization": f"{NORMALIZATION_ID} (CLAHE off; HU window {list(HU_WINDOW)})",
        "preprocessing": {
            "crop": f"lung bounding box + {int(CROP_MARGIN * 100)} % margin per slice, resized to {CROP_SIZE} px "
            "then to the input size; whole image when the lung mask is empty or too small; 2-D images "
            "get an automatic Otsu lung mask",
            "standardize": "per crop zero mean / unit standard deviation",
            "test_time_augmentation": "mean of the image and its left-right flip",
        },
        "output": "sigmoid(logit) = probability of a COVID-19 pneumonia pattern",
        "pooling": {
            "scan_probability": "mean over lung-containing slices",
            "top_k_mean": f"mean of the top {int(TOP_K_FRACTION * 100)} % slices (k >= 1)",
            "lung_containing_slice": f"lung area >= {MIN_SLICE_LUNG_FRACTION:.0%} of the slice and >= "
            f"{MIN_SLICE_OF_MAX:.0%} of the largest lung slice",
        },
        "intended_use": "Research on COVID-19 chest CT; not a medical device; not for diagnosis.",
        "disclaimer": DISCLAIMER,
    }
    manifest.update(info)
    return manifest


def seg_feature_manifest(
    info: dict[str, Any],
    metrics: dict[str, Any],
    calibration: dict[str, Any],
    command: str | None,
    seed: int,
    views: int,
    n_images: int,
) -> dict[str, Any]:
    """Manifest of a segmentation-feature classifier (``covidct train classifier --arch seg-features``)."""
    from CovidCTLib.models.runtime.seg_feature_inference import NETWORK
    from CovidCTLib.models.runtime.seg_features import STATS

    head = info["kwargs"].get("head") or {"kind": "linear"}
    mlp = head["kind"] == "mlp-ensemble"
    head_text = (
        f"an ensemble of {head.get('members')} one-hidden-layer perceptron heads ({head.get('hidden')} ReLU units; "
        "the members of the five cross-validation folds)"
        if mlp
        else "logistic-regression head"
    )
    return {
        "name": MODEL_NAME,
        "version": "2.1.0" if mlp else "2.0.1",
        "task": "classification",
        "description": "COVID-19 vs non-COVID axial CT slice classifier on the features of the lung and "
        "infection segmentation networks, pooled to a scan score",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "framework": f"torch {torch.__version__.split('+')[0]} + MONAI AttentionUnet / UNet encoders (frozen) "
        f"+ {head_text}",
        "architecture": {"network": NETWORK, "kwargs": info["kwargs"]},
        "input": {"channels": 1, "size": info["lung_size"], "infection_size": info["infection_size"]},
        "normalization": "8-bit display range (HU: lung window [-1250, 250], rounded to 8 bits), min-max per "
        "input, no CLAHE (lungwin-minmax-clahe-v1, CLAHE off)",
        "preprocessing": {
            "lung_features": f"lung network encoder (4 levels) on the whole slice at {info['lung_size']} px",
            "infection_features": f"infection network (all 8 levels) on the lung box + 10 % margin at "
            f"{info['infection_size']} px, with the lung mask channel (all ones for lung-region crops)",
            "pooling": f"{', '.join(STATS)} of every map over the image",
            "lung_mask": "volumes: the analysis' lung mask; 2-D images: the lung network's 2-D mask",
            "test_time_augmentation": "none",
        },
        "feature_sources": info["sources"],
        "output": "sigmoid(logit) = probability of a COVID-19 pneumonia pattern (Platt-calibrated)",
        "pooling": {
            "scan_probability": "mean over the scored slices",
            "top_k_mean": f"mean of the top {int(TOP_K_FRACTION * 100)} % slices (k >= 1)",
            "lung_containing_slice": slice_rule(SCORED_SLICE_OF_MAX),
            "min_slice_of_max": SCORED_SLICE_OF_MAX,
            "training_volume_slices": slice_rule(MIN_SLICE_OF_MAX),
        },
        "calibration": {**calibration, "fitted_on": "out-of-fold logits of the grouped 5-fold cross-validation"},
        "metrics": {"grouped_5fold_cv": metrics},
        "training": {"command": command, "seed": seed, "views": views, "n_images": n_images},
        "intended_use": "Research on COVID-19 chest CT; not a medical device; not for diagnosis.",
        "disclaimer": DISCLAIMER,
    }


_CACHE: dict[tuple[str, str, float], LoadedClassifier] = {}


def load_classifier(
    model_dir: str | Path | None = None, device: str | torch.device | None = "auto"
) -> LoadedClassifier:
    """Load (and cache) the classifier from its folder via the registry (SHA-256 checked first).

    Raises :class:`ModelError` with instructions when no model is installed or the weights do not match.
    """
    from CovidCTLib.models.runtime.registry import load_model

    folder = Path(model_dir) if model_dir else default_model_dir()
    if folder.is_file():
        folder = folder.parent
    if model_dir and not folder.exists():  # a model *name* in the models folder
        from CovidCTLib.models.runtime.registry import models_dir

        if (models_dir() / str(model_dir)).is_dir():
            folder = models_dir() / str(model_dir)
    manifest_path, dev = folder / "manifest.json", resolve_device(device)
    if not manifest_path.is_file():
        raise ModelError(f"{HOW_TO} (looked in {folder})")
    key = (str(folder.resolve()), str(dev), manifest_path.stat().st_mtime)
    if key in _CACHE:
        return _CACHE[key]
    loaded = load_model(folder.name, device=str(dev), root=folder.parent)
    arch = loaded.manifest["architecture"].get("kwargs", {})
    if is_seg_feature_manifest(loaded.manifest):
        result = LoadedClassifier(loaded.module, ClassifierConfig(SEG_ARCH, loaded.input_size, 1), loaded.manifest, dev)
        _CACHE[key] = result
        return result
    config = ClassifierConfig(
        arch=arch.get("model_name", "efficientnet-b0"),
        input_size=loaded.input_size,
        in_channels=int(arch.get("in_channels", 1)),
    )
    result = LoadedClassifier(loaded.module, config, loaded.manifest, dev)
    _CACHE[key] = result
    return result


def classifier_available(model_dir: str | Path | None = None) -> bool:
    """True when a classifier is installed and its weights verify."""
    try:
        load_classifier(model_dir, "cpu")
    except ModelError:
        return False
    return True


# ---------------------------------------------------------------- scoring


@torch.no_grad()
def _score_crops(
    loaded: LoadedClassifier,
    crops: list[np.ndarray],
    cams: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Probabilities for ``CROP_SIZE`` 0..1 crops (resized to the input size, flip TTA).

    With ``cams`` (a list), the same forward pass also gives each crop's Grad-CAM map, appended to it
    (:mod:`CovidCTLib.models.runtime.gradcam`).
    """
    from CovidCTLib.models.runtime.classifier import predict_crops

    if not crops:
        return np.zeros(0)
    x = torch.from_numpy(np.stack(crops).astype(np.float32))[:, None]
    size = loaded.config.input_size
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if loaded.config.in_channels == 3:
        x = x.repeat(1, 3, 1, 1)
    if cams is None:
        raw = predict_crops(loaded.model, x, loaded.device, tta=loaded.tta)
    else:
        from CovidCTLib.models.runtime.gradcam import predict_with_cams

        batch = predict_with_cams(loaded.model, x, loaded.device, tta=loaded.tta)
        raw = batch.probabilities
        cams.extend(batch.cams)
    return apply_calibration(raw, loaded.manifest.get("calibration"))


def apply_calibration(probabilities: np.ndarray, calibration: dict[str, Any] | None) -> np.ndarray:
    """Platt scaling ``sigmoid(slope * logit(p) + intercept)`` from the manifest (identity when absent)."""
    if not calibration or calibration.get("method") != "platt":
        return probabilities
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1 - 1e-6)
    z = float(calibration["slope"]) * np.log(p / (1 - p)) + float(calibration["intercept"])
    return 1.0 / (1.0 + np.exp(-z))


def lung_slices(lungs: np.ndarray, min_of_max: float = MIN_SLICE_OF_MAX) -> list[int]:
    """Indices of slices whose lung area is at least ``MIN_SLICE_LUNG_FRACTION`` of the slice and
    ``min_of_max`` of the largest lung cross-section."""
    areas = (np.asarray(lungs) > 0).reshape(lungs.shape[0], -1).sum(axis=1)
    if areas.max(initial=0) == 0:
        return []
    plane = lungs.shape[1] * lungs.shape[2]
    thr = max(MIN_SLICE_LUNG_FRACTION * plane, min_of_max * areas.max())
    return [int(z) for z in np.nonzero(areas >= thr)[0]]


def scored_slice_share(manifest: dict[str, Any]) -> float:
    """The manifest's ``pooling.min_slice_of_max`` (share of the largest lung slice a scored slice needs)."""
    value = (manifest.get("pooling") or {}).get("min_slice_of_max", MIN_SLICE_OF_MAX)
    if not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
        raise ModelError(f"covid-classifier manifest: pooling.min_slice_of_max {value!r} is not a share in [0, 1).")
    return float(value)


def slice_rule(min_of_max: float) -> str:
    """The scored-slice rule in words (manifests and report.json)."""
    return f"lung area >= {MIN_SLICE_LUNG_FRACTION:.0%} of the slice and >= {min_of_max:.0%} of the largest lung slice"


def radiological_view(arr: np.ndarray, lungs: np.ndarray, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Flip each axial slice in-plane so it shows the radiological view the training images have
    (anterior at the top, patient right on the image left). Slice indices are unchanged."""
    if image.GetDimension() != 3:
        return arr, lungs
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)  # columns: x, y, z axes in LPS
    if np.argmax(np.abs(d[:, 2])) != 2:  # not an axial stack: keep as is (best effort)
        return arr, lungs
    col_axis, row_axis = int(np.argmax(np.abs(d[:, 0]))), int(np.argmax(np.abs(d[:, 1])))
    if col_axis == 1 and row_axis == 0:  # x runs anterior-posterior: transpose in-plane
        arr, lungs = arr.transpose(0, 2, 1), lungs.transpose(0, 2, 1)
        d = d[:, [1, 0, 2]]
    if d[0, 0] < 0:  # columns must run towards patient left (+L)
        arr, lungs = arr[:, :, ::-1], lungs[:, :, ::-1]
    if d[1, 1] < 0:  # rows must run towards posterior (+P)
        arr, lungs = arr[:, ::-1, :], lungs[:, ::-1, :]
    return np.ascontiguousarray(arr), np.ascontiguousarray(lungs)


def classify_scan(
    ct: CTVolume,
    lungs: np.ndarray,
    device: str = "auto",
    reporter: Reporter | None = None,
    model_dir: str | Path | None = None,
    batch_size: int = 32,
    explain: bool = False,
) -> ScanClassification:
    """COVID probability of a CT volume from its lung-containing slices (mean; top-k mean reported).

    ``lungs`` is the lung labelmap ``(z, y, x)`` of ``ct`` (any value > 0 is lung). ``explain``: also keep
    each slice's Grad-CAM map from the same forward pass (``cams``; :mod:`CovidCTLib.explain`). Raises
    :class:`AnalysisError` when no slice contains lung, :class:`ModelError` when no model is installed.
    """
    loaded = load_classifier(model_dir, device)
    lungs = np.asarray(lungs)
    if lungs.ndim == 2:
        lungs = lungs[None]
    if lungs.shape != ct.shape:
        raise InputError(
            f"lung mask shape {lungs.shape} does not match the CT {ct.shape}; segment the lungs "
            "of this very scan first."
        )
    arr, lungs = radiological_view(ct.array.reshape(ct.shape), lungs, ct.image)
    share = scored_slice_share(loaded.manifest)
    zs = lung_slices(lungs, share)
    if not zs:
        raise AnalysisError(
            "no lung found in the scan, so it cannot be classified; check the input is a chest "
            "CT and the lung segmentation."
        )
    probs: dict[int, float] = {}
    cams: dict[int, np.ndarray] = {}
    boxes: dict[int, tuple[int, int, int, int]] = {}
    seg = loaded.config.arch == SEG_ARCH
    for start in range(0, len(zs), batch_size):
        chunk = zs[start : start + batch_size]
        if seg:
            grays = [quantize_8bit(to_unit(arr[z], ct.intensity)) for z in chunk]
            scored = score_slices(
                loaded.model, loaded.manifest, loaded.device, grays, [lungs[z] > 0 for z in chunk], explain
            )
            calibrated = apply_calibration(scored.probabilities, loaded.manifest.get("calibration"))
            probs.update(zip(chunk, (float(p) for p in calibrated), strict=True))
            cams.update(zip(chunk, scored.cams, strict=False))
            boxes.update(zip(chunk, scored.boxes, strict=False))
            _report(reporter, start + len(chunk), len(zs))
            continue
        crops = [crop_to_lungs(quantize_8bit(to_unit(arr[z], ct.intensity)), lungs[z] > 0, CROP_SIZE)[0] for z in chunk]
        chunk_cams: list[np.ndarray] | None = [] if explain else None
        for z, p in zip(chunk, _score_crops(loaded, crops, chunk_cams), strict=True):
            probs[z] = float(p)
        if chunk_cams is not None:
            cams.update(zip(chunk, chunk_cams, strict=True))
        _report(reporter, start + len(chunk), len(zs))
    mean, top, k = pool_probabilities(list(probs.values()))
    return ScanClassification(
        mean,
        top,
        probs,
        len(zs),
        loaded.manifest.get("name", MODEL_NAME),
        str(loaded.manifest.get("version", MODEL_VERSION)),
        top_k=k,
        cams=cams,
        cam_boxes=boxes,
        scored_slices=slice_rule(share),
    )


def _report(reporter: Reporter | None, done: int, total: int) -> None:
    if reporter is not None:
        reporter.update("classify", min(1.0, done / total), f"classified {done} / {total} lung slices")


def classify_images(
    paths_or_arrays: list[str | Path | np.ndarray],
    device: str = "auto",
    loaded: LoadedClassifier | None = None,
    model_dir: str | Path | None = None,
) -> list[float]:
    """COVID probability of each 2-D image (file path, or array in the 8-bit 0..255 display range).

    Each image is lung-cropped automatically (Otsu; whole image when no lungs are found), as in training.
    """
    from CovidCTLib.models.data.classifier_data import read_image

    loaded = loaded or load_classifier(model_dir, device)
    if loaded.config.arch == SEG_ARCH:
        return _classify_images_seg(loaded, paths_or_arrays, device)
    out: list[float] = []
    batch: list[np.ndarray] = []
    for item in paths_or_arrays:
        img = to_gray(item) if isinstance(item, np.ndarray) else read_image(item)
        batch.append(crop_to_lungs(to_unit(img, "8bit"), None, CROP_SIZE)[0])
        if len(batch) == 32:
            out += [float(p) for p in _score_crops(loaded, batch)]
            batch = []
    out += [float(p) for p in _score_crops(loaded, batch)]
    return out


def _classify_images_seg(
    loaded: LoadedClassifier, paths_or_arrays: list[str | Path | np.ndarray], device: str
) -> list[float]:
    """2-D images with the segmentation-feature classifier: the lung network's 2-D masks, as in training."""
    from CovidCTLib.models.data.classifier_data import read_image
    from CovidCTLib.models.runtime.inference import slice_lungs

    out: list[float] = []
    for start in range(0, len(paths_or_arrays), 32):
        chunk = paths_or_arrays[start : start + 32]
        grays = [to_gray(i).astype(np.float32) if isinstance(i, np.ndarray) else read_image(i) for i in chunk]
        masks = slice_lungs(grays, device, max_hole_share=IMAGE_MASK_HOLE_SHARE)
        scored = score_slices(loaded.model, loaded.manifest, loaded.device, grays, masks)
        out += [float(p) for p in apply_calibration(scored.probabilities, loaded.manifest.get("calibration"))]
    return out


def _lungs_for(ct: CTVolume) -> np.ndarray:
    """Lung mask of a volume: the classical 3-D segmenter when available, else per-slice Otsu boxes."""
    try:
        from CovidCTLib.classical.lungs import segment_lungs_classical

        return np.asarray(segment_lungs_classical(ct))
    except ImportError:
        from CovidCTLib.models.runtime.classifier import lung_mask_from_unit

        arr = ct.array
        return np.stack([lung_mask_from_unit(to_unit(s, ct.intensity)) for s in arr]).astype(np.uint8)


def classify_path(
    path: str | Path, device: str = "auto", reporter: Reporter | None = None, model_dir: str | Path | None = None
) -> float:
    """COVID probability of an image file or a CT volume (file or DICOM folder; volumes: pooled mean)."""
    return float(classify_path_details(path, device, reporter, model_dir)["probability"])


def classify_path_details(
    path: str | Path, device: str = "auto", reporter: Reporter | None = None, model_dir: str | Path | None = None
) -> dict[str, Any]:
    """Classify an image file or a CT volume; a row with probability, top-k mean, slices and model version."""
    from CovidCTLib.io.loader import load_checked  # issue 12.1 hook: refuse blank / non-CT inputs

    loaded = load_classifier(model_dir, device)
    ct = load_checked(path, require_3d=False)
    row: dict[str, Any] = {
        "input": str(path),
        "model_name": loaded.manifest.get("name", MODEL_NAME),
        "model_version": str(loaded.manifest.get("version", MODEL_VERSION)),
    }
    if ct.is_3d:
        res = classify_scan(ct, _lungs_for(ct), device, reporter, model_dir)
        row.update(
            kind="volume",
            probability=round(res.probability, 4),
            top_k_mean=round(res.top_k_mean, 4),
            n_slices=res.n_slices,
        )
    else:
        img = ct.array
        if img.ndim == 3 and img.shape[0] == 1:
            img = img[0]
        img8 = to_unit(img, ct.intensity) * 255.0
        p = classify_images([img8], device, loaded=loaded)[0]
        row.update(kind="image", probability=round(p, 4), top_k_mean=round(p, 4), n_slices=1)
    row["disclaimer"] = DISCLAIMER
    return row
