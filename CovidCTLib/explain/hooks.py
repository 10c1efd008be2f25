"""The analysis hook: heat volume and ``explanation`` dictionary from one scan's classification."""

from __future__ import annotations

from typing import Any

import numpy as np

from CovidCTLib.explain.heatmap import heatmap_volume
from CovidCTLib.explain.summary import explain_scan
from CovidCTLib.volume import CTVolume


def explain_classification(
    ct: CTVolume,
    lungs: np.ndarray,
    infection: np.ndarray,
    scan: Any,
    top_k: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(heat, explanation)`` for a :class:`ScanClassification` made with ``explain=True``."""
    heat = heatmap_volume(ct.image, lungs, scan.cams, scan.cam_boxes)
    explanation = explain_scan(
        ct.image, lungs, infection, heat, scan.slice_probabilities, ct.voxel_volume_ml, top_k, bool(scan.cam_boxes)
    )
    return heat, explanation.to_dict()
