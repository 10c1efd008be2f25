"""The classical (HU rule) segmenters behind the segmentation protocols."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from CovidCTLib.progress import Reporter
from CovidCTLib.volume import CTVolume


@dataclass
class ClassicalLungs:
    """HU threshold, outside-air and airway removal, right/left split (:mod:`CovidCTLib.classical.lungs`)."""

    method: str = "classical"

    def segment(self, ct: CTVolume, reporter: Reporter | None = None) -> np.ndarray:
        from CovidCTLib.classical.lungs import segment_lungs_classical

        return segment_lungs_classical(ct, reporter=reporter)

    def versions(self) -> dict[str, str]:
        return {}


@dataclass
class ClassicalInfection:
    """HU classes inside the lungs (:mod:`CovidCTLib.classical.infection`); ``thresholds`` may be None."""

    thresholds: Any | None = None
    method: str = "classical"

    def segment(self, ct: CTVolume, lungs: np.ndarray, reporter: Reporter | None = None) -> np.ndarray:
        from CovidCTLib.classical.infection import segment_infection_classical

        return segment_infection_classical(ct, lungs, self.thresholds, reporter=reporter)

    def versions(self) -> dict[str, str]:
        return {}


@dataclass
class ClassicalSlices:
    """Relative-intensity rules for 8-bit slices (:mod:`CovidCTLib.classical.slices2d`)."""

    method: str = "classical"

    def segment_images(self, task: str, images: list[np.ndarray]) -> list[np.ndarray]:
        from CovidCTLib.classical.slices2d import segment_slice_classical

        return [np.asarray(segment_slice_classical(image, task)) for image in images]
