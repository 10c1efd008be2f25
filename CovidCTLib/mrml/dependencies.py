"""Python packages the engine needs inside Slicer: checked without importing, installed on first use only.

Nothing is installed at start-up and nothing without asking. Slicer's own packages (vtk, numpy,
SimpleITK, pydicom) are never installed or upgraded here. Torch goes through the PyTorch extension's
installer (``PyTorchUtils``) when it is present, so that the right CUDA/CPU build is chosen.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable

from CovidCTLib.errors import CovidCTError

#: pip requirement -> import name, per feature.
GROUPS: dict[str, dict[str, str]] = {
    "classical": {"scipy": "scipy", "scikit-image": "skimage"},
    "model": {"torch": "torch", "monai": "monai"},
    "report": {"matplotlib": "matplotlib", "reportlab": "reportlab"},
}
#: Bundled with Slicer; installing another version would break it.
NEVER_INSTALL = frozenset({"vtk", "numpy", "SimpleITK", "simpleitk", "pydicom"})


class DependencyError(CovidCTError):
    """A Python package the chosen feature needs is missing and was not installed."""


def is_importable(module: str) -> bool:
    """True when ``module`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_packages(groups: Iterable[str]) -> list[str]:
    """pip names of the packages missing for the given feature groups."""
    missing: list[str] = []
    for group in groups:
        for requirement, module in GROUPS[group].items():
            if not is_importable(module) and requirement not in missing:
                missing.append(requirement)
    return missing


def torch_cuda_status() -> str:
    """What the device selector shows: only inspects torch when it is already installed (no install here)."""
    if not is_importable("torch"):
        return "PyTorch not installed (CPU)"
    try:
        torch = importlib.import_module("torch")
        if torch.cuda.is_available():
            return f"GPU available: {torch.cuda.get_device_name(0)}"
        return "no GPU detected; CPU"
    except Exception as error:  # noqa: BLE001 - a broken torch install must not break the module panel
        return f"PyTorch unusable ({error.__class__.__name__}); CPU"


#: Run in a separate Python so that importing torch (seconds) never blocks Slicer's GUI thread.
DEVICE_PROBE_SCRIPT = (
    "import json\n"
    "try:\n"
    "    import torch\n"
    "    ok = torch.cuda.is_available()\n"
    "    text = ('GPU available: ' + torch.cuda.get_device_name(0)) if ok else 'no GPU detected; CPU'\n"
    "except Exception as error:\n"
    "    text = 'PyTorch unusable (' + error.__class__.__name__ + '); CPU'\n"
    "print(json.dumps({'event': 'device', 'message': text}), flush=True)\n"
)


def device_probe_command(python: str) -> list[str]:
    """Command printing one ``{"event": "device", "message": ...}`` line (see :data:`DEVICE_PROBE_SCRIPT`)."""
    return [python, "-c", DEVICE_PROBE_SCRIPT]


def _install_torch(slicer) -> None:  # noqa: ANN001
    try:
        import PyTorchUtils  # the PyTorch extension (declared as extension dependency)
    except ImportError:
        _pip_install(slicer, ["torch"])
        return
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled():
        torch = logic.installTorch(askConfirmation=False)
        if torch is None:
            raise DependencyError("PyTorch was not installed; install it from the PyTorch module and retry.")


def _pip_install(slicer, requirements: list[str]) -> None:  # noqa: ANN001
    requirements = [r for r in requirements if r not in NEVER_INSTALL]
    if not requirements:
        return
    for module_name in ("pydeps", "packaging"):
        module = getattr(slicer, module_name, None)
        if module is None:
            try:
                module = importlib.import_module(f"slicer.{module_name}")
            except ImportError:
                module = None
        ensure: Callable | None = getattr(module, "pip_ensure", None) if module else None
        if ensure is not None:
            try:
                from packaging.requirements import Requirement

                ensure([Requirement(r) for r in requirements], requester="CovidCT")
            except ImportError:
                ensure(requirements, requester="CovidCT")
            return
    slicer.util.pip_install(" ".join(requirements))


def ensure_dependencies(groups: Iterable[str], interactive: bool = True) -> list[str]:
    """Make the packages of ``groups`` importable, asking first; returns what was installed.

    Raises :class:`DependencyError` when something is missing and the user declines (or ``interactive`` is
    False, as in scripts and tests, where nothing is ever installed).
    """
    import slicer

    missing = missing_packages(groups)
    if not missing:
        return []
    question = (
        "CovidCT needs these Python packages, which are not installed yet:\n\n  "
        + ", ".join(missing)
        + "\n\nDownload and install them now (this can take several minutes; PyTorch is large)?"
    )
    if not interactive or not slicer.util.confirmOkCancelDisplay(question, "CovidCT: install dependencies"):
        raise DependencyError(
            f"Missing Python packages: {', '.join(missing)}. Accept the installation when asked, or install "
            "them from Slicer's Python console with slicer.util.pip_install(...)."
        )
    if "torch" in missing:
        _install_torch(slicer)
    _pip_install(slicer, [r for r in missing if r != "torch"])
    importlib.invalidate_caches()
    still = missing_packages(groups)
    if still:
        raise DependencyError(f"Installing {', '.join(still)} failed; see the Python console for pip's output.")
    return missing
