"""Segmenters by (task, method): the one place that decides which implementation runs.

``method``: ``auto`` (the trained networks when installed and verified, else classical), ``classical`` or
``model``. Adding a method means registering its factories here; callers (pipeline, ``segment-slices``,
``compare``) do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from CovidCTLib.errors import CovidCTError
from CovidCTLib.segmentation.base import InfectionSegmenter, LungSegmenter, SliceSegmenter

METHODS = ("auto", "classical", "model")
TASKS = ("lung", "infection", "slices")


def _classical(task: str, device: str, options: dict[str, Any]) -> Any:
    from CovidCTLib.segmentation import classical

    if task == "lung":
        return classical.ClassicalLungs()
    if task == "infection":
        return classical.ClassicalInfection(options.get("infection_thresholds"))
    return classical.ClassicalSlices()


def _model(task: str, device: str, options: dict[str, Any]) -> Any:
    from CovidCTLib.segmentation import model

    shared = options.get("shared") or model.shared_slices()
    if task == "lung":
        return model.ModelLungs(device, shared)
    if task == "infection":
        return model.ModelInfection(device, shared)
    return model.ModelSlices(device)


#: (method) -> factory(task, device, options); one entry per method
FACTORIES: dict[str, Callable[[str, str, dict[str, Any]], Any]] = {"classical": _classical, "model": _model}


def trained_segmentation_available() -> bool:
    """True when the installed lung and infection models verify (checksums) and torch is importable."""
    try:
        from CovidCTLib.models.runtime import inference

        available = inference.models_available()
    except ImportError:
        return False
    return bool(available.get("lung")) and bool(available.get("infection"))


def resolve_method(method: str) -> str:
    """Turn ``auto`` into ``model`` or ``classical``; refuse ``model`` when no model is installed."""
    if method not in METHODS:
        raise CovidCTError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if method == "classical":
        return method
    if trained_segmentation_available():
        return "model"
    if method == "model":
        from CovidCTLib.fallbacks import require_segmentation_models

        require_segmentation_models()  # names a refused (damaged, modified) model file
    return "classical"


@dataclass
class Segmenters:
    """The lung and infection segmenters of one analysis (sharing what they can)."""

    method: str
    lungs: LungSegmenter
    infection: InfectionSegmenter


def make_segmenters(method: str = "auto", device: str = "auto", **options: Any) -> Segmenters:
    """Lung + infection segmenters for ``method`` (resolved) on ``device``; options go to the factories
    (``infection_thresholds`` for the classical infection rules)."""
    resolved = resolve_method(method)
    factory = FACTORIES[resolved]
    if resolved == "model":
        from CovidCTLib.segmentation.model import shared_slices

        options = {**options, "shared": shared_slices()}
    return Segmenters(resolved, factory("lung", device, options), factory("infection", device, options))


def make_slice_segmenter(method: str = "auto", device: str = "auto") -> SliceSegmenter:
    """The 2-D slice segmenter for ``method`` (resolved) on ``device``."""
    return FACTORIES[resolve_method(method)]("slices", device, {})
