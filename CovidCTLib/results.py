"""The result of analysing one scan, passed from the pipeline to writers, reports and the MRML adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from CovidCTLib.volume import CTVolume, labelmap_like


@dataclass
class AnalysisResult:
    """Everything one ``analyze`` run produced.

    Attributes:
        ct: the input volume.
        lungs: uint8 ``(z, y, x)``: 0 background, 1 right lung, 2 left lung.
        infection: uint8 ``(z, y, x)``: 0 none, 1 ground-glass, 2 consolidation (always inside the lungs).
        report: the report dictionary (the content of report.json).
        covid_probability: scan-level probability, or None when no classifier ran.
        slice_probabilities: per-axial-slice probabilities ``{z_index: p}`` when a classifier ran.
        method: ``"classical"`` or ``"model"``; model_versions: name -> version of every model used.
        lobes: uint8 ``(z, y, x)``: 1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL (None when not segmented).
        heatmap: float32 ``(z, y, x)`` 0..1 Grad-CAM heat of the classifier in the lungs (None when not made).
    """

    ct: CTVolume
    lungs: np.ndarray
    infection: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)
    covid_probability: float | None = None
    slice_probabilities: dict[int, float] = field(default_factory=dict)
    method: str = "classical"
    model_versions: dict[str, str] = field(default_factory=dict)
    lobes: np.ndarray | None = None
    heatmap: np.ndarray | None = None

    def lungs_image(self) -> sitk.Image:
        """The lungs labelmap with the CT's exact geometry."""
        return labelmap_like(self.lungs, self.ct.image)

    def infection_image(self) -> sitk.Image:
        """The infection labelmap with the CT's exact geometry."""
        return labelmap_like(self.infection, self.ct.image)
