"""Scan-level COVID-19 assessment: RSNA consensus category + a probability, with the reasons and features.

Features come from the segmentation (after the HU gate and the noise floor) and the slice classifier:
burden (% of lungs), right / left involvement (bilateral when each lung holds at least
``side_min_ml`` and ``side_min_share`` of the infection), peripheral share (the share of the infection in the
outer third of each lung's in-slice depth from the pleura, mediastinal pleura included: the one definition
of :mod:`CovidCTLib.anatomy.peripheral`, which also gives the per-lung and per-lobe split), lower-zone share,
posterior share (behind each lung's antero-posterior mid-plane), ground-glass share, number of
significant lesions (at least ``significant_lesion_ml``) and the share of the largest lesion.

Category (RSNA expert consensus on chest CT of COVID-19, Simpson et al. 2020), as rules:

* ``negative``: no significant infection (burden below ``min_burden_percent``) and no mass-like lesion.
* ``atypical`` also when the HU gate took a mass-like lesion out of the infection
  (:mod:`CovidCTLib.postprocess.masses`: a tumour, a nodule, a mass-like or lobar consolidation) and what is left
  is not significant: an isolated solid focus without ground glass is an atypical feature in the consensus.
* ``typical``: bilateral, not central-predominant (peripheral share >= ``typical_peripheral_share``, 0.5: the
  outer third holds 0.46-0.49 of a lung's volume, so 0.5 means at least as peripheral as a uniform spread;
  diffuse COVID-19 is still typical, perihilar-predominant disease is not),
  ground-glass-predominant (>= ``typical_ggo_share``) opacities, multifocal (>= 2 significant lesions) or
  confluent (a lesion larger than ``confluent_ml``).
* ``atypical``: one unilateral focus with a dense core (a mass-like or lobar/segmental consolidation:
  largest lesion >= ``solitary_share`` of the infection, at least ``atypical_min_consolidation`` of it
  consolidation), e.g. a tumour.
* ``indeterminate``: infection that is neither (diffuse, central, unilateral ground glass ...).

Probability: the category sets a prior, the slice classifier moves it in log-odds with weight
``classifier_weight`` (it is a weak signal on real HU scans). The priors are round a-priori values
reflecting the consensus statement's intent (typical: high likelihood, indeterminate: non-specific,
atypical / negative: uncommon or absent); NOTHING here was fitted on the real volumes in ../shared/data
(one COVID scan). With no significant infection the classifier weight is reduced and the probability
capped (``negative_cap``). Research software, not a diagnosis.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from CovidCTLib.anatomy.peripheral import PeripheralMap, peripheral_mask
from CovidCTLib.imaging.grid import block_max, block_mean, occupied_box
from CovidCTLib.labels import LEFT_LUNG, RIGHT_LUNG
from CovidCTLib.volume import CTVolume

CATEGORIES = ("negative", "atypical", "indeterminate", "typical")
#: Version of the assessment rules and priors (stated in report.json ``covid_assessment.version``).
ASSESSMENT_VERSION = "1.2.0"  # 1.1: peripheral = outer third (anatomy.peripheral); 1.2: mass-like lesions


@dataclass(frozen=True)
class AssessmentRules:
    """Thresholds and priors of the rule-based assessment (a priori values, see the module docstring)."""

    min_burden_percent: float = 1.0
    side_min_ml: float = 2.0
    side_min_share: float = 0.15
    significant_lesion_ml: float = 1.0
    confluent_ml: float = 20.0
    typical_peripheral_share: float = 0.5
    typical_ggo_share: float = 0.5
    solitary_share: float = 0.7
    atypical_min_consolidation: float = 0.25
    prior_negative: float = 0.05
    prior_atypical: float = 0.10
    prior_indeterminate: float = 0.40
    prior_typical: float = 0.85
    classifier_weight: float = 0.5
    negative_classifier_weight: float = 0.25
    negative_cap: float = 0.2

    def prior(self, category: str) -> float:
        """The prior probability of a category."""
        return float(getattr(self, f"prior_{category}"))


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def spatial_features(
    ct: CTVolume, lungs: np.ndarray, infection: np.ndarray, peripheral: PeripheralMap | None = None
) -> dict[str, float]:
    """Peripheral (outer third, :mod:`CovidCTLib.anatomy.peripheral`) and posterior share of the infection
    (0-1; 0 when there is no infection). ``peripheral``: the map when the caller already has it."""
    inf = (np.asarray(infection) > 0) & (np.asarray(lungs) > 0)
    if not inf.any():
        return {"peripheral_share": 0.0, "posterior_share": 0.0}
    pmap = peripheral or peripheral_mask(ct, lungs)
    peripheral_share = float(np.count_nonzero(inf & pmap.peripheral)) / float(np.count_nonzero(inf))
    box = occupied_box(np.asarray(lungs) > 0)
    lungs_b, inf_b = np.asarray(lungs)[box], inf[box]
    spacing = ct.spacing_zyx
    f = max(1, int(3.0 // max(min(spacing[1:]), 1e-3)))  # coarse in-plane grid of about 3 mm (speed)
    factors = (1, f, f)
    sides = [block_mean((lungs_b == s).astype(np.uint8), factors) >= 0.5 for s in (RIGHT_LUNG, LEFT_LUNG)]
    inf_c = block_max(inf_b, factors)
    posterior = total = 0.0
    direction = np.asarray(ct.image.GetDirection(), dtype=float).reshape(3, 3)
    # LPS y (posterior positive) changes along array axes (z, y, x) by these amounts per coarse voxel
    dy = direction[1] * np.asarray(ct.image.GetSpacing()) * np.array([f, f, 1.0])
    for side in sides:
        sel = inf_c & side
        if not sel.any():
            continue
        zz, yy, xx = np.nonzero(side)
        ypos = zz * dy[2] + yy * dy[1] + xx * dy[0]
        mid = 0.5 * (ypos.min() + ypos.max())
        zi, yi, xi = np.nonzero(sel)
        yinf = zi * dy[2] + yi * dy[1] + xi * dy[0]
        posterior += float(np.count_nonzero(yinf > mid))
        total += float(zi.size)
    return {"peripheral_share": peripheral_share, "posterior_share": posterior / max(total, 1.0)}


def assessment_features(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    numbers: dict[str, Any],
    classifier_probability: float | None,
    rules: AssessmentRules,
    peripheral: PeripheralMap | None = None,
    masses: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """All features of the assessment (``numbers``: the ``quantify`` result after the noise floor;
    ``masses``: the gate's ``mass_like_lesions``)."""
    inf = numbers["infection"]
    total = float(inf["total_ml"])
    lesions = numbers.get("lesions") or []
    volumes = sorted((float(d["volume_ml"]) for d in lesions), reverse=True)
    lower = sum(float(z["infection_ml"]) for z in numbers.get("zones") or [] if z["zone"] == "lower")
    features: dict[str, Any] = {
        "burden_percent": float(inf["percent_of_lungs"]),
        "infection_ml": total,
        "right_ml": float(inf["right_ml"]),
        "left_ml": float(inf["left_ml"]),
        "bilateral": bool(min(inf["right_ml"], inf["left_ml"]) >= max(rules.side_min_ml, rules.side_min_share * total)),
        "ggo_share": float(inf["ggo_ml"]) / total if total > 0 else 0.0,
        "lower_zone_share": lower / total if total > 0 else 0.0,
        "n_significant_lesions": int(sum(v >= rules.significant_lesion_ml for v in volumes)),
        "largest_lesion_ml": volumes[0] if volumes else 0.0,
        "largest_lesion_share": volumes[0] / total if volumes and total > 0 else 0.0,
        "largest_lesion_consolidation": max(lesions, key=lambda d: d["volume_ml"])["consolidation_fraction"]
        if lesions
        else 0.0,
        "classifier_probability": None if classifier_probability is None else float(classifier_probability),
        "mass_like_lesions": len(masses or []),
        "mass_like_ml": float(sum(float(m["volume_ml"]) for m in masses or [])),
    }
    features.update(spatial_features(ct, lungs, infection, peripheral))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in features.items()}


def mass_reason(features: dict[str, Any]) -> str | None:
    """The sentence naming the mass-like lesions taken out of the infection, or None."""
    n = int(features.get("mass_like_lesions") or 0)
    if not n:
        return None
    return (
        f"{n} mass-like solid lesion(s) ({float(features['mass_like_ml']):.0f} mL: a compact solid core with a "
        "narrow rim) not counted as infection: a mass, a nodule or a lobar consolidation; review it."
    )


def categorise(features: dict[str, Any], rules: AssessmentRules) -> tuple[str, list[str]]:
    """RSNA category and the reasons for it (short sentences)."""
    burden = features["burden_percent"]
    masses = mass_reason(features)
    if burden < rules.min_burden_percent:
        reasons = [f"No significant infection: {burden:.2f} % of the lungs (below {rules.min_burden_percent:g} %)."]
        if masses is None:
            return "negative", reasons
        reasons += [
            masses,
            "Atypical appearance: an isolated solid focus without the ground-glass pattern of COVID-19.",
        ]
        return "atypical", reasons
    reasons = [f"Infection covers {burden:.1f} % of the lungs ({features['infection_ml']:.0f} mL)."]
    if masses is not None:
        reasons.append(masses)
    bilateral, peripheral = features["bilateral"], features["peripheral_share"]
    ggo, n_sig = features["ggo_share"], features["n_significant_lesions"]
    reasons.append("Bilateral." if bilateral else f"Unilateral (or one lung under {rules.side_min_ml:g} mL).")
    reasons.append(
        f"Peripheral/subpleural share {peripheral:.0%}; ground-glass share {ggo:.0%}; "
        f"lower-zone share {features['lower_zone_share']:.0%}; posterior share "
        f"{features['posterior_share']:.0%}; {n_sig} significant lesion(s)."
    )
    multifocal = n_sig >= 2 or features["largest_lesion_ml"] >= rules.confluent_ml
    if bilateral and peripheral >= rules.typical_peripheral_share and ggo >= rules.typical_ggo_share and multifocal:
        reasons.append(
            "Typical appearance: bilateral, peripheral, ground-glass-predominant, multifocal or confluent opacities."
        )
        return "typical", reasons
    if (
        not bilateral
        and features["largest_lesion_share"] >= rules.solitary_share
        and features["largest_lesion_consolidation"] >= rules.atypical_min_consolidation
    ):
        reasons.append(
            "Atypical appearance: one unilateral focus with a dense core (mass-like or "
            "lobar/segmental consolidation, e.g. a tumour or bacterial pneumonia)."
        )
        return "atypical", reasons
    reasons.append("Indeterminate appearance: opacities without the typical distribution.")
    return "indeterminate", reasons


def combine_probability(category: str, classifier_probability: float | None, rules: AssessmentRules) -> float:
    """Category prior moved by the classifier in log-odds (capped when negative)."""
    logit = _logit(rules.prior(category))
    if classifier_probability is not None:
        weight = rules.negative_classifier_weight if category == "negative" else rules.classifier_weight
        logit += weight * _logit(classifier_probability)
    p = _sigmoid(logit)
    return min(p, rules.negative_cap) if category == "negative" else p


def assess(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    numbers: dict[str, Any],
    classifier_probability: float | None,
    rules: AssessmentRules | None = None,
    peripheral: PeripheralMap | None = None,
    masses: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``covid_assessment`` block of report.json: category, probability, reasons, features, method.
    ``masses``: the HU gate's ``mass_like_lesions`` (none when the gate did not run)."""
    rules = rules or AssessmentRules()
    features = assessment_features(ct, lungs, infection, numbers, classifier_probability, rules, peripheral, masses)
    category, reasons = categorise(features, rules)
    probability = combine_probability(category, classifier_probability, rules)
    if classifier_probability is None:
        reasons.append("No slice classifier ran: the probability is the category prior.")
    else:
        reasons.append(
            f"Slice classifier {classifier_probability:.2f} (weight {rules.classifier_weight:g} in "
            "log-odds; a weak signal on real scans)."
        )
    return {
        "version": ASSESSMENT_VERSION,
        "category": category,
        "probability": round(probability, 4),
        "reasons": reasons,
        "features": features,
        "method": (
            "Rule-based RSNA consensus category (typical / indeterminate / atypical / negative) from the "
            "segmentation, prior probability per category (a priori, not fitted on real volumes) moved by the "
            "slice classifier in log-odds. Research use only, not a diagnosis."
        ),
        "rules": asdict(rules),
    }
