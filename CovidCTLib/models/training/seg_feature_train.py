"""Train the segmentation-feature COVID classifier (issue 13.4): ``covidct train classifier --arch seg-features``.

1. Features: every training image (and ``--views`` - 1 views of it: a left-right flip, then seeded random
   crops / rotations / gamma / blur / noise) goes through the shipped lung network (its 2-D lung mask) and
   :func:`~CovidCTLib.models.runtime.seg_features.slice_inputs`; the frozen copies of the lung and infection
   networks give the pooled feature vector. Cached in ``OUT/features_<key>.npz`` (``--resume`` reuses it).
2. Grouped 5-fold cross-validation (the folds of ``covidct train classifier``: by source group, seed
   ``--seed``): in each outer fold the L2 strength is chosen by an inner grouped 4-fold CV on the training
   groups only, the head is fitted on all views of the training images and scored on the original view of
   the held-out images. The table of the five folds is the honest estimate. Heads (``--head``): ``mlp``
   (default, 2.1.0): three seeded one-hidden-layer perceptrons per fold
   (:mod:`~CovidCTLib.models.training.mlp_head`); ``linear`` (2.0.x): an L2 logistic regression.
3. The shipped head is the ensemble of the five fold heads, Platt-calibrated on the out-of-fold logits: all
   fifteen perceptrons (mean logit), or the mean of the linear heads (still one linear head).
Research software, not a diagnosis.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from CovidCTLib.models.data.classifier_data import Item, grouped_kfold, list_dataset, read_image
from CovidCTLib.models.evaluation.calibrate import fit_platt
from CovidCTLib.models.evaluation.metrics import binary_metrics, roc_auc
from CovidCTLib.models.runtime.seg_features import SegFeatureClassifier, batch_inputs, make_head
from CovidCTLib.models.training.mlp_head import HeadEnsemble, fit_ensemble

#: L2 strengths tried by the inner cross-validation of the linear head (sklearn's C: loss sum + ||w||^2 / (2 C)).
C_GRID = (0.01, 0.03, 0.1)
#: L2 strengths tried for the perceptron head (``alpha``, as in :func:`~CovidCTLib.models.training.mlp_head.fit_mlp`)
ALPHA_GRID = (1.0, 3.0, 10.0)
#: hidden units of a perceptron member, and members (seeds) fitted per cross-validation fold
MLP_HIDDEN = 32
MLP_SEEDS_PER_FOLD = 3
FEATURE_VERSION = "segfeat-v1"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def augment_view(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random view of an 8-bit image: flip, crop (65-100 % area), rotation +-12 deg, gamma, blur, noise."""
    g = gray[:, ::-1] if rng.random() < 0.5 else gray
    h, w = g.shape
    a = np.sqrt(rng.uniform(0.65, 1.0))
    ch, cw = max(8, int(h * a)), max(8, int(w * a))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    g = ndimage.rotate(g[y0 : y0 + ch, x0 : x0 + cw], rng.uniform(-12, 12), reshape=False, order=1, mode="nearest")
    u = (g - g.min()) / max(float(g.max() - g.min()), 1e-3)
    u = u ** rng.uniform(0.7, 1.45)
    if rng.random() < 0.4:
        u = ndimage.gaussian_filter(u, rng.uniform(0.3, 1.2))
    if rng.random() < 0.4:
        u = u + rng.normal(0.0, rng.uniform(0.005, 0.03), u.shape)
    return np.ascontiguousarray(np.clip(u * 255.0, 0, 255), dtype=np.float32)


def view_of(gray: np.ndarray, view: int, seed: int, index: int) -> np.ndarray:
    """View 0: the image; 1: its left-right flip; >= 2: a random view seeded by (seed, view, index)."""
    if view == 0:
        return gray
    if view == 1:
        return np.ascontiguousarray(gray[:, ::-1])
    return augment_view(gray, np.random.default_rng([seed, view, index]))


def build_network(device: str = "cpu") -> tuple[SegFeatureClassifier, dict[str, Any]]:
    """A classifier holding copies of the installed lung and infection networks (head untrained)."""
    from CovidCTLib.models.runtime.inference import get_model, model_name

    lung, infection = get_model(model_name("lung"), device), get_model(model_name("infection"), device)
    lk, ik = lung.manifest["architecture"]["kwargs"], infection.manifest["architecture"]["kwargs"]
    kwargs: dict[str, Any] = {
        "lung_channels": list(lk["channels"]),
        "infection_channels": list(ik["channels"]),
        "infection_res_units": int(ik.get("num_res_units", 1)),
    }
    net = SegFeatureClassifier(**kwargs)
    net.lung.load_state_dict(lung.module.state_dict())
    net.infection.load_state_dict(infection.module.state_dict())
    kwargs["n_features"] = net.feature_count()
    sources = {
        m.name: {"version": m.version, "sha256": m.manifest.get("sha256"), "input_size": m.input_size}
        for m in (lung, infection)
    }
    sizes = {"lung_size": lung.input_size, "infection_size": infection.input_size}
    return net.to(device).eval(), {"kwargs": kwargs, "sources": sources, **sizes}


def image_lung_masks(grays: list[np.ndarray], device: str = "cpu") -> list[np.ndarray]:
    """2-D lung masks of 8-bit images from the installed lung network (its 2-D clean-up, every hole filled:
    :data:`IMAGE_MASK_HOLE_SHARE`, as at run time)."""
    from CovidCTLib.models.runtime.classifier_inference import IMAGE_MASK_HOLE_SHARE
    from CovidCTLib.models.runtime.inference import slice_lungs

    return slice_lungs(grays, device, max_hole_share=IMAGE_MASK_HOLE_SHARE)


@torch.no_grad()
def features_of(
    net: SegFeatureClassifier, grays: list[np.ndarray], masks: list[np.ndarray], sizes: dict[str, Any]
) -> np.ndarray:
    """(N, n_features) float32 features of 8-bit images with their lung masks."""
    device = next(net.parameters()).device
    batch = batch_inputs(grays, masks, sizes["lung_size"], sizes["infection_size"], device)
    return net.features(batch.lung, batch.infection).float().cpu().numpy()


def extract(
    items: list[Item],
    net: SegFeatureClassifier,
    info: dict[str, Any],
    views: int,
    seed: int,
    cache_dir: Path | None = None,
    batch: int = 16,
) -> np.ndarray:
    """(views, N, n_features) features of every image and view; each view cached in ``cache_dir`` once done
    (a view depends only on the images, the networks, the seed and its index, so a rerun resumes)."""
    out = np.zeros((views, len(items), info["kwargs"]["n_features"]), dtype=np.float32)
    key = _feature_key(items, info, seed)
    t0 = time.time()
    for v in range(views):
        cache = cache_dir / f"features_{key}_view{v}.npy" if cache_dir else None
        if cache is not None and cache.exists():
            out[v] = np.load(cache)
            _log(f"features: view {v + 1}/{views} reused from {cache}")
            continue
        for start in range(0, len(items), batch):
            idx = range(start, min(len(items), start + batch))
            grays = [view_of(read_image(items[i].path), v, seed, i) for i in idx]
            out[v, start : start + len(grays)] = features_of(net, grays, image_lung_masks(grays), info)
        if cache is not None:
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, out[v])
            tmp.replace(cache)
        _log(f"features: view {v + 1}/{views} done ({time.time() - t0:.0f} s)")
    return out


# ------------------------------------------------------------------------------ real CT slices (--aux-data)
#: ``--aux-data`` kinds: real CT in the run-time domain (HU slices shown in the lung window, 8 bits).
AUX_KINDS = {
    "noncovid-volume": "a non-COVID CT volume (file or DICOM folder): its lung-containing slices, label 0",
    "covid-slices": "a folder of single CT slices (DICOM or images, sub-folder = patient) of COVID-19, label 1",
}


@dataclass
class AuxSlices:
    """Real CT slices added to every training fold (never to the cross-validation's held-out images)."""

    source: str
    label: int
    grays: list[np.ndarray]
    masks: list[np.ndarray]


def parse_aux(spec: str | None) -> list[tuple[str, Path]]:
    """``kind:path,kind:path`` -> [(kind, path)]; refuses unknown kinds and missing paths."""
    from CovidCTLib.errors import InputError

    out = []
    for part in [p for p in (spec or "").split(",") if p.strip()]:
        kind, _, path = part.partition(":")
        if kind not in AUX_KINDS or not path:
            raise InputError(f"--aux-data entry {part!r}: use {' or '.join(k + ':PATH' for k in AUX_KINDS)}.")
        if not Path(path).exists():
            raise InputError(f"--aux-data path {path} does not exist.")
        out.append((kind, Path(path)))
    return out


def volume_slices(path: Path) -> AuxSlices:
    """Lung-containing slices of a HU volume as the analysis shows them to the classifier (classical lungs)."""
    from CovidCTLib.classical.lungs import segment_lungs_classical
    from CovidCTLib.io.loader import load_ct
    from CovidCTLib.models.runtime.classifier import quantize_8bit, to_unit
    from CovidCTLib.models.runtime.classifier_inference import lung_slices, radiological_view

    ct = load_ct(path)
    arr, lungs = radiological_view(ct.array.reshape(ct.shape), segment_lungs_classical(ct), ct.image)
    zs = lung_slices(lungs)
    grays = [quantize_8bit(to_unit(arr[z], ct.intensity)).astype(np.float32) for z in zs]
    return AuxSlices(str(path), 0, grays, [lungs[z] > 0 for z in zs])


def covid_slice_files(folder: Path) -> AuxSlices:
    """Single CT slices (DICOM or image files, any depth) of COVID-19 patients; 2-D lung masks as for images."""
    from CovidCTLib.io.loader import load_ct
    from CovidCTLib.models.runtime.classifier import quantize_8bit, to_unit

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".dcm", ".png", ".jpg", ".jpeg"))
    grays = []
    for f in files:
        ct = load_ct(f, require_3d=False)
        grays.append(quantize_8bit(to_unit(ct.array.reshape(ct.shape)[0], ct.intensity)).astype(np.float32))
    return AuxSlices(str(folder), 1, grays, image_lung_masks(grays))


def aux_features(net: SegFeatureClassifier, info: dict[str, Any], spec: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, n_features) features and labels of every ``--aux-data`` source (original view only)."""
    feats, labels = [np.zeros((0, info["kwargs"]["n_features"]), np.float32)], [np.zeros(0)]
    for kind, path in parse_aux(spec):
        aux = volume_slices(path) if kind == "noncovid-volume" else covid_slice_files(path)
        for start in range(0, len(aux.grays), 16):
            feats.append(features_of(net, aux.grays[start : start + 16], aux.masks[start : start + 16], info))
        labels.append(np.full(len(aux.grays), float(aux.label)))
        _log(f"aux: {len(aux.grays)} slices of {path} (label {aux.label})")
    return np.concatenate(feats), np.concatenate(labels)


# ------------------------------------------------------------------------------ logistic regression
@dataclass
class LinearHead:
    """``logit = x @ weight + bias`` on raw (unstandardised) features."""

    weight: np.ndarray
    bias: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weight + self.bias


def fit_logistic(
    x: np.ndarray, y: np.ndarray, c: float, steps: int = 200, weights: np.ndarray | None = None
) -> LinearHead:
    """L2 logistic regression (``weighted sum of log-losses + ||w||^2 / (2 c)`` on standardised features, by
    L-BFGS in float64), returned with the standardisation folded into the weights."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(np.asarray(y, dtype=np.float64))
    wt = torch.from_numpy(np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=steps, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = xs @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt, weight=wt, reduction="sum") + (w @ w) / (
            2 * c
        )
        loss.backward()
        return loss

    opt.step(closure)
    wn, bn = w.detach().numpy(), float(b.detach())
    return LinearHead(wn / std, bn - float((wn * mean / std).sum()))


def mean_head(heads: list[LinearHead]) -> LinearHead:
    """The head whose logit is the mean of the heads' logits (an exact ensemble of linear heads)."""
    return LinearHead(np.mean([h.weight for h in heads], axis=0), float(np.mean([h.bias for h in heads])))


@dataclass
class Aux:
    """Extra training rows and the total weight they share (``--aux-weight`` x a quarter of the images)."""

    x: np.ndarray
    y: np.ndarray
    weight: float = 1.0


NO_AUX = Aux(np.zeros((0, 1)), np.zeros(0), 0.0)


def _rows(feats: np.ndarray, idx: np.ndarray, labels: np.ndarray, aux: Aux) -> tuple[np.ndarray, ...]:
    """Training rows: all views of the images ``idx`` (weight 1 per image in all) plus the aux rows."""
    x, y = feats[:, idx].reshape(-1, feats.shape[-1]), np.tile(labels[idx], feats.shape[0])
    w = np.full(len(x), 1.0 / feats.shape[0])
    if len(aux.y) and aux.weight > 0:
        x, y = np.concatenate([x, aux.x]), np.concatenate([y, aux.y])
        w = np.concatenate([w, np.full(len(aux.y), aux.weight * len(idx) / 4 / len(aux.y))])
    return x, y, w


@dataclass(frozen=True)
class HeadRecipe:
    """How a head is fitted: its kind, the L2 strengths the inner CV tries, the name of that parameter and
    whether a larger value regularises more (alpha) or less (C); the inner CV breaks ties towards more L2."""

    kind: str
    grid: tuple[float, ...]
    param: str
    larger_is_stronger: bool

    def fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, value: float, seeds: tuple[int, ...]) -> Any:
        """A linear head (``seeds`` unused) or an ensemble of one perceptron per seed."""
        if self.kind == "linear":
            return fit_logistic(x, y, value, weights=w)
        return fit_ensemble(x, y, value, MLP_HIDDEN, seeds, w)


LINEAR = HeadRecipe("linear", C_GRID, "c", larger_is_stronger=False)
MLP = HeadRecipe("mlp", ALPHA_GRID, "alpha", larger_is_stronger=True)
#: ``--head`` choices: ``mlp`` (the 2.1.0 recipe, default) or ``linear`` (2.0.x)
RECIPES = {r.kind: r for r in (MLP, LINEAR)}


def recipe_of(name: str) -> HeadRecipe:
    """``--head`` value -> recipe (refuses unknown names)."""
    from CovidCTLib.errors import InputError

    if name not in RECIPES:
        raise InputError(f"--head {name!r}: use one of {', '.join(RECIPES)}.")
    return RECIPES[name]


def _fit(
    feats: np.ndarray,
    idx: np.ndarray,
    labels: np.ndarray,
    aux: Aux,
    value: float,
    recipe: HeadRecipe = LINEAR,
    seeds: tuple[int, ...] = (0,),
) -> Any:
    """Fit a head on all views of the images ``idx`` (weight 1 per image) plus the aux rows."""
    return recipe.fit(*_rows(feats, idx, labels, aux), value, seeds)


def choose_l2(
    feats: np.ndarray,
    labels: np.ndarray,
    items: list[Item],
    idx: np.ndarray,
    seed: int,
    aux: Aux = NO_AUX,
    recipe: HeadRecipe = LINEAR,
) -> tuple[float, dict]:
    """The L2 strength with the best mean AUC of an inner grouped 4-fold CV over the images ``idx`` (a
    perceptron head is one member of seed ``seed`` here); ties go to the stronger L2."""
    sub = [items[i] for i in idx]
    inner = grouped_kfold(sub, 4, seed + 1)
    scores: dict[float, float] = {}
    for value in recipe.grid:
        aucs = []
        for fold in inner:
            te = idx[np.array(fold)]
            tr = np.setdiff1d(idx, te)
            head = _fit(feats, tr, labels, aux, value, recipe, (seed,))
            aucs.append(roc_auc(labels[te], head.logits(feats[0, te])))
        scores[value] = float(np.mean(aucs))
    sign = 1.0 if recipe.larger_is_stronger else -1.0
    return max(scores, key=lambda v: (scores[v], sign * v)), scores


def fold_seeds(seed: int, fold: int) -> tuple[int, ...]:
    """Seeds of the perceptron members of one outer fold (distinct across folds)."""
    return tuple(1000 * seed + 10 * fold + s for s in range(MLP_SEEDS_PER_FOLD))


def cross_validate(
    feats: np.ndarray,
    labels: np.ndarray,
    items: list[Item],
    seed: int,
    k: int = 5,
    aux: Aux = NO_AUX,
    recipe: HeadRecipe = LINEAR,
) -> dict[str, Any]:
    """Nested grouped k-fold CV: per fold the inner choice of the L2 strength, the fold head and its held-out
    metrics."""
    folds = grouped_kfold(items, k, seed)
    oof = np.zeros(len(items))
    oof_tta = np.zeros(len(items))
    heads, rows = [], []
    for f, fold in enumerate(folds):
        te = np.array(sorted(fold))
        tr = np.setdiff1d(np.arange(len(items)), te)
        value, inner = choose_l2(feats, labels, items, tr, seed, aux, recipe)
        head = _fit(feats, tr, labels, aux, value, recipe, fold_seeds(seed, f))
        heads.append(head)
        oof[te] = head.logits(feats[0, te])
        oof_tta[te] = 0.5 * (head.logits(feats[0, te]) + head.logits(feats[1, te])) if feats.shape[0] > 1 else oof[te]
        m = binary_metrics(labels[te], 1 / (1 + np.exp(-oof[te])))
        m.update(
            fold=f,
            inner_auc={str(k_): round(v, 4) for k_, v in inner.items()},
            auc_flip_tta=round(roc_auc(labels[te], oof_tta[te]), 4),
            groups=len({items[i].group for i in te}),
        )
        m[recipe.param] = value
        rows.append(m)
        _log(
            f"fold {f}: {recipe.param} {value} (inner {inner}) AUC {m['auc']:.3f} "
            f"(flip TTA {m['auc_flip_tta']:.3f}) F1 {m['f1']:.3f}"
        )
    aucs = np.array([r["auc"] for r in rows])
    return {
        "head": recipe.kind,
        "folds": rows,
        "heads": heads,
        "oof_logits": oof,
        "auc_mean": round(float(aucs.mean()), 4),
        "auc_sd": round(float(aucs.std()), 4),
        "f1_mean": round(float(np.mean([r["f1"] for r in rows])), 4),
        "f1_sd": round(float(np.std([r["f1"] for r in rows])), 4),
        "auc_flip_tta_mean": round(float(np.mean([r["auc_flip_tta"] for r in rows])), 4),
        "pooled_oof_auc": round(roc_auc(labels, oof), 4),
    }


def shipped_head(recipe: HeadRecipe, fold_heads: list[Any]) -> Any:
    """The fold ensemble: the mean linear head, or every fold's perceptron members together."""
    if recipe.kind == "linear":
        return mean_head(fold_heads)
    return HeadEnsemble([m for h in fold_heads for m in h.members])


def install_head(net: SegFeatureClassifier, head: Any) -> None:
    """Copy a fitted head (float64 numpy) into the network's head parameters."""
    with torch.no_grad():
        if isinstance(head, LinearHead):
            net.head.weight.copy_(torch.from_numpy(head.weight[None]).float())
            net.head.bias.fill_(head.bias)
            return
        for name, value in head.stacked().items():
            getattr(net.head, name).copy_(torch.from_numpy(value).float())


# ------------------------------------------------------------------------------ the command
def _feature_key(items: list[Item], info: dict[str, Any], seed: int) -> str:
    text = json.dumps([[str(i.path), i.label] for i in items] + [info["sources"], seed, FEATURE_VERSION])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def train_seg_feature_classifier(args: argparse.Namespace) -> dict[str, Any]:
    """``covidct train classifier --arch seg-features``: features, nested grouped CV, fold ensemble, export."""
    from CovidCTLib.models.runtime.classifier_inference import seg_feature_manifest
    from CovidCTLib.models.runtime.registry import save_model

    data, out = Path(args.data), Path(args.out)
    seed = 0 if getattr(args, "seed", None) is None else int(args.seed)
    views = int(getattr(args, "views", None) or 6)
    out.mkdir(parents=True, exist_ok=True)
    items = list_dataset(data)
    labels = np.array([it.label for it in items])
    recipe = recipe_of(getattr(args, "head", None) or "mlp")
    net, info = build_network("cpu")
    feats = extract(items, net, info, views, seed, cache_dir=out)
    aux_spec = getattr(args, "aux_data", None)
    aux_weight = float(getattr(args, "aux_weight", None) or 1.0)
    aux = NO_AUX
    if aux_spec:
        key = hashlib.sha1(json.dumps([aux_spec, info["sources"], FEATURE_VERSION]).encode()).hexdigest()[:12]
        aux_cache = out / f"aux_features_{key}.npz"
        if aux_cache.exists():
            data_aux = np.load(aux_cache)
            ax, ay = data_aux["x"], data_aux["y"]
        else:
            ax, ay = aux_features(net, info, aux_spec)
            np.savez_compressed(aux_cache, x=ax, y=ay)
        aux = Aux(ax, ay, aux_weight)
    cv = cross_validate(feats, labels, items, seed, aux=aux, recipe=recipe)
    head = shipped_head(recipe, cv["heads"])
    slope, intercept = fit_platt(1 / (1 + np.exp(-cv["oof_logits"])), labels)
    if isinstance(head, HeadEnsemble):
        info["kwargs"]["head"] = {"kind": "mlp-ensemble", "hidden": MLP_HIDDEN, "members": len(head.members)}
        net.head = make_head(info["kwargs"]["n_features"], info["kwargs"]["head"])
    install_head(net, head)
    metrics = {k: v for k, v in cv.items() if k not in ("heads", "oof_logits")}
    command = (
        f"covidct train classifier --arch seg-features --data {data} --out {out} --seed {seed} --views {views} "
        f"--head {recipe.kind}"
    )
    if aux_spec:
        command += f" --aux-data {aux_spec} --aux-weight {aux_weight:g}"
        metrics["aux_training_rows"] = {"covid": int(aux.y.sum()), "noncovid": int((aux.y == 0).sum())}
    manifest = seg_feature_manifest(
        info,
        metrics,
        {"method": "platt", "slope": round(slope, 5), "intercept": round(intercept, 5)},
        command=command,
        seed=seed,
        views=views,
        n_images=len(items),
    )
    written = save_model(
        net,
        out / "model" / "covid-classifier",
        manifest,
        weights_name="covid-classifier.pt",
        float32_prefixes=("head.",),
    )
    (out / "cv.json").write_text(json.dumps(metrics, indent=2))
    _log(f"grouped 5-fold CV AUC {metrics['auc_mean']:.3f} +- {metrics['auc_sd']:.3f}; model in {out / 'model'}")
    return {"metrics": metrics, "manifest": written}
