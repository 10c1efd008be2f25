"""Segmentation and classification metrics (binary masks / scores); no torch needed.

For masks: Dice (= F1), IoU (Jaccard), precision, recall (= sensitivity), specificity, accuracy, from the
confusion counts. ``pooled`` sums the counts over all images before the ratio (large lesions weigh more);
``mean per image`` averages the per-image values over images where truth or prediction is non-empty.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

METRIC_NAMES = ("dice", "iou", "precision", "recall", "specificity", "f1", "accuracy")


def confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) of two same-shaped binary masks (any non-zero = positive)."""
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return tp, fp, fn, int(p.size - tp - fp - fn)


def from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """All metrics from confusion counts; an empty truth and empty prediction count as perfect."""

    def ratio(a: float, b: float, empty: float = 1.0) -> float:
        return float(a / b) if b > 0 else empty

    dice = ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "dice": dice,
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "f1": dice,
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
    }


def mask_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Metrics of one prediction against its truth."""
    return from_counts(*confusion(pred, truth))


def pooled_metrics(counts: Iterable[tuple[int, int, int, int]]) -> dict[str, float]:
    """Metrics of the summed confusion counts."""
    arr = np.array(list(counts), dtype=np.int64).reshape(-1, 4)
    return from_counts(*(int(v) for v in arr.sum(0)))


def mean_metrics(rows: list[dict[str, float]], counts: list[tuple[int, int, int, int]]) -> dict[str, float]:
    """Mean of per-image metrics over images where truth or prediction is non-empty."""
    keep = [r for r, c in zip(rows, counts, strict=True) if c[0] + c[1] + c[2] > 0]
    if not keep:
        return dict.fromkeys(METRIC_NAMES, float("nan"))
    return {k: float(np.mean([r[k] for r in keep])) for k in METRIC_NAMES}


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie handling); NaN when one class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------- scores (classification)


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and thresholds (descending scores)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    thr = np.r_[np.inf, np.unique(s)[::-1]]
    tpr = np.array([(s[y] >= t).mean() if y.any() else 0.0 for t in thr])
    fpr = np.array([(s[~y] >= t).mean() if (~y).any() else 0.0 for t in thr])
    return fpr, tpr, thr


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, F1, accuracy, sensitivity, specificity, precision at ``threshold``."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    sens = tp / max(tp + fn, 1)
    spec = tn / max(tn + fp, 1)
    prec = tp / max(tp + fp, 1)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {
        "auc": round(roc_auc(y, scores), 4),
        "f1": round(f1, 4),
        "accuracy": round((tp + tn) / max(y.size, 1), 4),
        "sensitivity": round(sens, 4),
        "specificity": round(spec, 4),
        "precision": round(prec, 4),
        "threshold": threshold,
        "n": int(y.size),
        "n_positive": int(y.sum()),
    }
