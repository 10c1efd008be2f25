"""Training checkpoints that load with ``torch.load(weights_only=True)`` (no unpickling of arbitrary objects).

A checkpoint (``last.pt``, ``best.pt``) may only hold tensors, numbers, strings, booleans, None and
lists / tuples / dicts of them. :func:`save_checkpoint` converts numpy scalars and arrays (metrics, RNG
state) to those types; :func:`load_checkpoint` refuses anything else with a :class:`CheckpointError`, so a
crafted ``last.pt`` given to ``--resume`` cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from CovidCTLib.atomic import atomic_path
from CovidCTLib.errors import InputError


class CheckpointError(InputError):
    """A checkpoint holds something other than tensors and plain values, or cannot be read."""


def to_safe(obj: Any) -> Any:
    """``obj`` with numpy values turned into Python numbers / tensors and paths into strings (recursively)."""
    if isinstance(obj, dict):
        return {to_safe(k): to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_safe(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``obj`` (made safe by :func:`to_safe`) atomically with ``torch.save``."""
    with atomic_path(Path(path), overwrite=True) as tmp:
        torch.save(to_safe(obj), tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; refuse one that needs arbitrary unpickling."""
    try:
        ck = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely (it holds more than tensors and plain values, or is "
            f"damaged: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). Delete it and train "
            "again without --resume, or resume from a checkpoint written by this CovidCT version."
        ) from exc
    if not isinstance(ck, dict):
        raise CheckpointError(f"checkpoint {path} is not a CovidCT checkpoint (no dictionary); delete it.")
    return ck
