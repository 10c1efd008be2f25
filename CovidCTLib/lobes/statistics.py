"""Per-lobe burden and the lobar CT severity score (0-25).

Per lobe: ``lung_ml`` (lobe volume), ``infection_ml`` (infected voxels of the lobe), ``percent``
(infection / lobe volume) and ``score`` 0-5: 0 none, 1 < 5 %, 2 5-25 %, 3 > 25-50 %, 4 > 50-75 %, 5 > 75 %
(the scale of :func:`CovidCTLib.quantify.severity_from_percent`). The lobar total is the sum over the five
lobes, 0-25 (the per-lobe 0-5 CT severity score of Pan et al., Radiology 2020).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from CovidCTLib.errors import InputError
from CovidCTLib.imaging.grid import COUNT_SLAB
from CovidCTLib.labels import CONSOLIDATION, GGO, LOBE_NAMES, LOBE_SEGMENTS, LOBES_OF_LUNG
from CovidCTLib.quantify import SEVERITY_BINS, severity_from_percent
from CovidCTLib.volume import CTVolume

LOBAR_SCALE = (
    "Sum over the 5 lobes (RUL, RML, RLL, LUL, LLL) of a 0-5 score of the lobe's infected volume: "
    + "; ".join(SEVERITY_BINS)
    + ". Total 0-25."
)


def lobe_statistics(
    ct: CTVolume, lungs: np.ndarray, infection: np.ndarray, lobes: np.ndarray, min_percent: float = 0.0
) -> list[dict[str, Any]]:
    """One entry per lobe (RUL, RML, RLL, LUL, LLL): name, label, lung_ml, infection_ml, ggo_ml,
    consolidation_ml, percent, score. Infection counts only inside the lungs. ``min_percent`` is the noise
    floor: a lobe involved less than that scores 0 (the analysis passes the zones' floor)."""
    for name, arr in (("lungs", lungs), ("infection", infection), ("lobes", lobes)):
        if np.shape(arr) != ct.shape:
            raise InputError(f"{name} labelmap shape {np.shape(arr)} does not match the CT {ct.shape} (z, y, x)")
    voxel_ml = ct.voxel_volume_ml
    n = len(LOBE_NAMES) + 1
    # one code per voxel, lobe (0 outside the lungs) x infection class, counted slab by slab (memory)
    classes = max(GGO, CONSOLIDATION) + 1
    lungs, lobes, infection = np.asarray(lungs), np.asarray(lobes), np.asarray(infection)
    counts = np.zeros((n, classes), np.float64)
    for start in range(0, lungs.shape[0], COUNT_SLAB):
        part = slice(start, start + COUNT_SLAB)
        lob = np.where(lungs[part] > 0, lobes[part], 0).astype(np.intp)
        inf = infection[part]
        code = lob * classes + np.where(inf < classes, inf, 0)
        counts += np.bincount(code.ravel(), minlength=n * classes)[: n * classes].reshape(n, classes)
    total, ggo, con = counts.sum(axis=1), counts[:, GGO], counts[:, CONSOLIDATION]
    out = []
    for spec in LOBE_SEGMENTS:
        k = spec.label
        lung_ml = float(total[k] * voxel_ml)
        inf_ml = float((ggo[k] + con[k]) * voxel_ml)
        percent = float(100.0 * (ggo[k] + con[k]) / total[k]) if total[k] else 0.0
        out.append(
            {
                "name": spec.name,
                "key": LOBE_NAMES[k],
                "label": k,
                "lung": "right" if k in LOBES_OF_LUNG[1] else "left",
                "lung_ml": round(lung_ml, 2),
                "infection_ml": round(inf_ml, 2),
                "ggo_ml": round(float(ggo[k] * voxel_ml), 2),
                "consolidation_ml": round(float(con[k] * voxel_ml), 2),
                "percent": round(percent, 2),
                "score": 0 if percent < min_percent else severity_from_percent(percent),
            }
        )
    return out


def severity_score_lobar(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"total": 0-25, "per_lobe": {RUL: s, ...}, "scale": ...}`` from :func:`lobe_statistics` entries."""
    return {
        "total": int(sum(int(s["score"]) for s in stats)),
        "per_lobe": {s["key"]: int(s["score"]) for s in stats},
        "scale": LOBAR_SCALE,
    }


def lobe_change(baseline: list[dict[str, Any]], followup: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-lobe change between two :func:`lobe_statistics` results (for the longitudinal comparison).

    One entry per lobe: key, name, infection_ml / percent / score at both time points and their differences
    (follow-up minus baseline).
    """
    before = {s["key"]: s for s in baseline}
    out = []
    for after in followup:
        b = before.get(after["key"])
        if b is None:
            raise InputError(f"lobe {after['key']} is missing from the baseline statistics")
        out.append(
            {
                "key": after["key"],
                "name": after["name"],
                "baseline_infection_ml": b["infection_ml"],
                "followup_infection_ml": after["infection_ml"],
                "change_infection_ml": round(after["infection_ml"] - b["infection_ml"], 2),
                "baseline_percent": b["percent"],
                "followup_percent": after["percent"],
                "change_percent": round(after["percent"] - b["percent"], 2),
                "baseline_score": b["score"],
                "followup_score": after["score"],
                "change_score": int(after["score"]) - int(b["score"]),
            }
        )
    return out
