"""The segmentation protocols: what a lung, an infection and a 2-D slice segmenter must offer.

A segmenter is built for one method (``classical`` / ``model``) and device by
:func:`CovidCTLib.segmentation.registry.make_segmenters`; the pipeline, the slice command and the longitudinal
comparison only see these protocols.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from CovidCTLib.progress import Reporter
from CovidCTLib.volume import CTVolume


@runtime_checkable
class LungSegmenter(Protocol):
    """Lungs of a CT: uint8 ``(z, y, x)`` on the CT grid, 0 background, 1 right lung, 2 left lung."""

    method: str

    def segment(self, ct: CTVolume, reporter: Reporter | None = None) -> np.ndarray: ...

    def versions(self) -> dict[str, str]:
        """Model name + version per task this segmenter used (empty for classical rules)."""
        ...


@runtime_checkable
class InfectionSegmenter(Protocol):
    """Infection inside given lungs: uint8 ``(z, y, x)``, 0 none, 1 ground-glass, 2 consolidation."""

    method: str

    def segment(self, ct: CTVolume, lungs: np.ndarray, reporter: Reporter | None = None) -> np.ndarray: ...

    def versions(self) -> dict[str, str]: ...


@runtime_checkable
class SliceSegmenter(Protocol):
    """8-bit 2-D axial images (display orientation) to masks of the same size, for one task."""

    method: str

    def segment_images(self, task: str, images: list[np.ndarray]) -> list[np.ndarray]: ...
