"""The one device helper: turn ``auto`` / ``cpu`` / ``cuda[:N]`` into a torch device, leaving global state alone.

Runtime code (analysis, Slicer) never changes torch's thread count: in an in-process Slicer run that would cap
torch for the whole application. Training processes may ask for a thread count explicitly with
:func:`set_training_threads`.
"""

from __future__ import annotations

from typing import Any

from CovidCTLib.errors import InputError

#: the devices every command and ``analyze`` accept
DEVICES = ("auto", "cpu", "cuda")


def device_name(device: Any = "auto") -> str:
    """``auto`` (or None) -> ``cuda`` when a CUDA GPU is available, else ``cpu``; checks an explicit CUDA request."""
    import torch

    if isinstance(device, torch.device):
        return str(device)
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    name = str(device)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu.")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda.")
    return name


def resolve_device(device: Any = "auto") -> Any:
    """:func:`device_name` as a ``torch.device``."""
    import torch

    return torch.device(device_name(device))


def set_training_threads(threads: int | None) -> None:
    """Set torch's CPU thread count for a training process (never called by the analysis)."""
    import torch

    if threads:
        torch.set_num_threads(max(1, int(threads)))
