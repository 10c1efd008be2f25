"""Scoring slices with the segmentation-feature COVID classifier (:mod:`CovidCTLib.models.runtime.seg_features`).

A slice is given in the 8-bit display range with its lung mask (the volume's lungs, or for a 2-D image the
lung network's 2-D mask, as in training). The probability is the sigmoid of the head's logit (the caller
applies the manifest's calibration); with ``explain`` the same pass gives each slice's Grad-CAM map and
the box it lies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from CovidCTLib.models.runtime.seg_features import SegFeatureClassifier, batch_inputs

ARCH = "seg-features"
NETWORK = "seg-feature-classifier"


def is_seg_feature_manifest(manifest: dict[str, Any]) -> bool:
    """True for a classifier manifest of this architecture."""
    return (manifest.get("architecture") or {}).get("network") == NETWORK


def input_sizes(manifest: dict[str, Any]) -> tuple[int, int]:
    """(lung input size, infection input size) of a manifest."""
    spec = manifest.get("input") or {}
    return int(spec.get("size", 192)), int(spec.get("infection_size", 160))


@dataclass
class SliceScores:
    """Calibrated probabilities, and with ``explain`` the Grad-CAM maps and their boxes, of scored slices."""

    probabilities: np.ndarray
    cams: list[np.ndarray] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


def score_slices(
    model: SegFeatureClassifier,
    manifest: dict[str, Any],
    device: torch.device,
    grays: list[np.ndarray],
    masks: list[np.ndarray],
    explain: bool = False,
) -> SliceScores:
    """Score 8-bit slices with their (bool) lung masks; returns the network's (uncalibrated) probabilities."""
    if not grays:
        return SliceScores(np.zeros(0))
    lung_size, infection_size = input_sizes(manifest)
    batch = batch_inputs(grays, masks, lung_size, infection_size, device)
    lung, infection = batch.lung, batch.infection
    model.eval()
    cams: list[np.ndarray] = []
    if explain:
        logits, maps = model.logits_and_cams(lung, infection)
        cams = list(maps.float().cpu().numpy())
    else:
        with torch.no_grad():
            logits = model(lung, infection)
    probabilities = torch.sigmoid(logits.float()).cpu().numpy()
    return SliceScores(probabilities, cams, batch.boxes if explain else [])
