"""Say every fallback out loud: a refused (damaged, modified) or missing model never disappears silently.

``--method auto`` falls back to the classical method when the trained segmentation models cannot be used,
and the scan gets no COVID probability when the classifier cannot be used. :func:`segmentation_fallback`
and :func:`classifier_fallback` return the sentence that says so; the pipeline puts it in the report's
``notes`` (report.json, HTML / PDF) and in ``fallbacks`` (the console summary and the Slicer panel show it).
:func:`require_segmentation_models` is the error for ``--method model``: it names the refused file.
"""

from __future__ import annotations

import importlib
from typing import Any

from CovidCTLib.errors import ModelError

NO_MODEL_HINT = "Train one with `covidct train lung --data ... --out ...` (see README), or use --method classical."


def _module(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def segmentation_problems() -> tuple[bool, list[str]]:
    """``(any model installed but refused, messages)`` for the lung / infection models that cannot be used."""
    inference = _module("CovidCTLib.models.runtime.inference")
    if inference is None:
        return False, ["the model packages (torch, MONAI) are not installed"]
    problems = inference.model_problems()
    return any(installed for installed, _ in problems.values()), [msg for _, msg in problems.values()]


def require_segmentation_models() -> None:
    """For ``--method model``: raise :class:`ModelError` naming the refused file, or saying none is installed."""
    refused, messages = segmentation_problems()
    if refused:
        raise ModelError(" ".join(messages) + " --method model cannot run; use --method classical meanwhile.")
    raise ModelError(f"No trained lung/infection model is installed. {NO_MODEL_HINT}")


def segmentation_fallback(requested: str, resolved: str) -> str | None:
    """The sentence stating that ``auto`` fell back to the classical method (None when it did not)."""
    if requested != "auto" or resolved != "classical":
        return None
    refused, messages = segmentation_problems()
    if refused:
        return (
            "Fallback: the trained segmentation model was REFUSED, so the classical HU-threshold method was "
            "used instead. " + " ".join(messages)
        )
    why = "; ".join(messages) or "the trained models could not be loaded"
    return (
        f"Fallback: no trained segmentation model is installed, so the classical HU-threshold method was used ({why})."
    )


def classifier_fallback(classify: bool) -> str | None:
    """Why no COVID classifier ran, when it was asked for but is installed and refused (None otherwise)."""
    if not classify:
        return None
    inference = _module("CovidCTLib.models.runtime.classifier_inference")
    if inference is None:
        return None
    folder = inference.default_model_dir()
    if not (folder / "manifest.json").is_file():
        return None  # not installed: the pipeline's own note says so
    try:
        inference.load_classifier(folder, "cpu")
    except ModelError as exc:
        return (
            "Fallback: the COVID classifier was REFUSED, so no slice classifier was used (covid_probability comes "
            f"from the segmentation findings alone). {exc}"
        )
    return None
