"""How a loaded segmentation network is run: memory layout, grad-free mode, autocast and host memory.

One :class:`ExecutionPlan` per (device, network), chosen by :func:`plan_for` from measurements
(``benchmarks/bench_analyze.py``), never by touching torch's global state (thread count, default dtype):

* CPU: ``torch.inference_mode``, float32 (bfloat16 autocast changed the lung network's probabilities by up to
  1.0 on the same inputs, so it is not used); channels-last memory for the networks where it measured faster
  (:data:`CHANNELS_LAST_NETWORKS`: the attention U-Net about 1.3x; the plain U-Net was not faster).
* CUDA: float16 autocast, batches copied from pinned host memory without blocking; the same memory layout
  table as on the CPU (no CUDA measurement says otherwise).
* Batch norm folded into the convolution before it (:mod:`.fusion`) on the CPU, where batch norm was a fifth
  of the lung network's time; the network run is a folded copy (:func:`network`), the loaded model is unchanged.
* Batch size: :data:`CPU_BATCH` slices per forward pass on the CPU (32 measured about 1.2x faster per slice
  than 16 for the attention U-Net on 2 cores), :data:`CUDA_BATCH` on CUDA.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

#: networks (manifest ``architecture.network``) run channels-last on the CPU because it measured faster there
CHANNELS_LAST_NETWORKS = frozenset({"attention-unet"})
#: slices per forward pass
CPU_BATCH, CUDA_BATCH = 32, 16


@dataclass(frozen=True)
class ExecutionPlan:
    """How batches go through one network on one device."""

    device: str
    channels_last: bool
    autocast: bool  # float16 autocast (CUDA only)
    pin_memory: bool  # copy batches from pinned host memory, non-blocking (CUDA only)
    fold_batchnorm: bool = False  # run a copy with batch norm folded into the convolutions
    batch: int = 16  # slices per forward pass


def plan_for(device: str, network: str) -> ExecutionPlan:
    """The plan for ``network`` (manifest name) on ``device`` (``cpu`` / ``cuda[:N]``, already resolved)."""
    cuda = device.startswith("cuda")
    return ExecutionPlan(
        device=device,
        channels_last=network in CHANNELS_LAST_NETWORKS,
        autocast=cuda,
        pin_memory=cuda,
        fold_batchnorm=not cuda,
        batch=CUDA_BATCH if cuda else CPU_BATCH,
    )


def network_of(model: Any) -> str:
    """The manifest's network name of a loaded model ("" when the manifest has none, e.g. a test module)."""
    return str(model.manifest.get("architecture", {}).get("network", ""))


def prepare_module(module: Any, plan: ExecutionPlan) -> Any:
    """Put ``module``'s weights in the plan's memory layout (in place; idempotent) and return it."""
    import torch

    if plan.channels_last:
        module.to(memory_format=torch.channels_last)
    return module


_NETWORKS: weakref.WeakKeyDictionary[Any, dict[ExecutionPlan, Any]] = weakref.WeakKeyDictionary()
_NETWORKS_LOCK = threading.Lock()


def network(module: Any, plan: ExecutionPlan) -> Any:
    """The module to run under ``plan``: ``module`` itself, or (once per module and plan) its batch-norm-folded
    copy; either way in the plan's memory layout. The loaded ``module`` keeps its batch norms."""
    if not plan.fold_batchnorm:
        return prepare_module(module, plan)
    with _NETWORKS_LOCK:
        cached = _NETWORKS.setdefault(module, {})
        if plan not in cached:
            from CovidCTLib.models.runtime.fusion import fold_batchnorm

            cached[plan] = prepare_module(fold_batchnorm(module)[0], plan)
        return cached[plan]


def to_batch(chunk: np.ndarray, plan: ExecutionPlan) -> Any:
    """A float32 ``(B, C, H, W)`` numpy batch as a tensor on the plan's device, in its memory layout."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
    if plan.pin_memory:
        tensor = tensor.pin_memory()
    tensor = tensor.to(plan.device, non_blocking=plan.pin_memory)
    if plan.channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


@contextlib.contextmanager
def running(plan: ExecutionPlan) -> Iterator[None]:
    """Grad-free inference (``torch.inference_mode``), with float16 autocast when the plan says so."""
    import torch

    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=plan.autocast):
        yield
