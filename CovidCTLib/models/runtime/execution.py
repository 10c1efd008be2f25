"""How a loaded segmentation network is run: memory layout, grad-free mode, autocast and host memory.

One :class:`ExecutionPlan` per (device, network), chosen by :func:`plan_for` from measurements
(``benchmarks/bench_analyze.py``), never by touching torch's global state (thread count, default dtype):

* CPU: ``torch.inference_mode``, float32 (bfloat16 autocast changed the lung network's probabilities by up to
  1.0 on the same inputs, so it is not used); channels-last memory for the networks where it measured faster
  (:data:`CHANNELS_LAST_NETWORKS`: the attention U-Net about 1.3x; the plain U-Net was not faster).
* CUDA: float16 autocast, batches copied from pinned host memory without blocking; the same memory layout
  table as on the CPU (no CUDA measurement says otherwise).
* Batch norm folded into the convolution before it (:mod:`.fusion`) on the CPU, where batch norm was 22 % of
  the lung network's profile; the network run is a folded copy (:func:`network`), the loaded model is unchanged.
* Batch size: :data:`CPU_BATCH` slices per forward pass on the CPU (32 measured about 1.2x faster per slice
  than 16 for the attention U-Net on 2 cores), :data:`CUDA_BATCH` on CUDA; test-time flips share the pass.
* ONNX Runtime (optional extra ``onnx``, :mod:`.onnx_backend`) for the networks of :data:`ONNX_NETWORKS` on
  the CPU when it is installed (the attention U-Net about 1.5x faster than folded torch); any failure to
  export or start it keeps torch.
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
#: networks run by ONNX Runtime on the CPU when it is installed (the plain U-Net measured no faster there)
ONNX_NETWORKS = frozenset({"attention-unet"})


@dataclass(frozen=True)
class ExecutionPlan:
    """How batches go through one network on one device."""

    device: str
    channels_last: bool
    autocast: bool  # float16 autocast (CUDA only)
    pin_memory: bool  # copy batches from pinned host memory, non-blocking (CUDA only)
    fold_batchnorm: bool = False  # run a copy with batch norm folded into the convolutions
    batch: int = 16  # slices per forward pass
    onnxruntime: bool = False  # run the network with ONNX Runtime (CPU; falls back to torch)


def plan_for(device: str, network: str) -> ExecutionPlan:
    """The plan for ``network`` (manifest name) on ``device`` (``cpu`` / ``cuda[:N]``, already resolved)."""
    from CovidCTLib.models.runtime.onnx_backend import onnxruntime_usable

    cuda = device.startswith("cuda")
    return ExecutionPlan(
        device=device,
        channels_last=network in CHANNELS_LAST_NETWORKS,
        autocast=cuda,
        pin_memory=cuda,
        fold_batchnorm=not cuda,
        batch=CUDA_BATCH if cuda else CPU_BATCH,
        onnxruntime=not cuda and network in ONNX_NETWORKS and onnxruntime_usable(),
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


def network(model: Any, plan: ExecutionPlan) -> Any:
    """What runs ``model`` (a loaded model: ``module``, ``manifest``, ``input_size``) under ``plan``, made once
    per module and plan: an ONNX Runtime session when the plan asks for it and it starts, else the module or
    its batch-norm-folded copy in the plan's memory layout. The loaded module keeps its batch norms."""
    module = model.module
    if not plan.fold_batchnorm and not plan.onnxruntime:
        return prepare_module(module, plan)
    with _NETWORKS_LOCK:
        cached = _NETWORKS.setdefault(module, {})
        if plan not in cached:
            runner = None
            if plan.onnxruntime:
                from CovidCTLib.models.runtime.onnx_backend import onnx_network

                channels = int(model.manifest.get("input", {}).get("channels", 1))
                runner = onnx_network(module, channels, model.input_size, model.manifest.get("sha256"))
            if runner is None and plan.fold_batchnorm:
                from CovidCTLib.models.runtime.fusion import fold_batchnorm

                runner = prepare_module(fold_batchnorm(module)[0], plan)
            cached[plan] = runner if runner is not None else prepare_module(module, plan)
        return cached[plan]


def backend_of(runner: Any) -> str:
    """``onnxruntime`` or ``torch``: what :func:`network` returned."""
    from CovidCTLib.models.runtime.onnx_backend import OnnxNetwork

    return "onnxruntime" if isinstance(runner, OnnxNetwork) else "torch"


def to_batch(chunk: np.ndarray, plan: ExecutionPlan) -> Any:
    """A float32 ``(B, C, H, W)`` numpy batch as a tensor on the plan's device, in its memory layout."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
    if plan.pin_memory:
        tensor = tensor.pin_memory()
    tensor = tensor.to(plan.device, non_blocking=plan.pin_memory)
    if plan.channels_last and not plan.onnxruntime:  # ONNX Runtime takes plain (B, C, H, W) arrays
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


@contextlib.contextmanager
def running(plan: ExecutionPlan) -> Iterator[None]:
    """Grad-free inference (``torch.inference_mode``), with float16 autocast when the plan says so."""
    import torch

    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=plan.autocast):
        yield
