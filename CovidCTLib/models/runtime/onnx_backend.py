"""Optional ONNX Runtime backend for a loaded network on the CPU (``pip install "CovidCTLib[onnx]"``).

The verified torch module is exported in memory (``torch.onnx``, dynamic batch axis) once per process and
model, or taken from the on-disk cache of earlier exports after a probe against the module
(:mod:`.onnx_cache`: saves the exporter's ~2 s per process), and run by an ONNX Runtime CPU session with the
same thread count torch uses (read, never set).
Same function as the torch module up to float32 rounding (about 3e-5 in the lung network's probabilities).
Measured on the lung attention U-Net on 2 cores: about 1.5x faster per slice than torch with batch norm
folded; for the infection U-Net it measured no faster, so only the networks in
:data:`CovidCTLib.models.runtime.execution.ONNX_NETWORKS` use it.

When ``onnxruntime`` or ``onnx`` is not installed, when ``COVIDCT_ONNXRUNTIME=0`` is set, or when the export
or the session fails, the caller keeps torch (:func:`onnx_network` returns None and says why once).
"""

from __future__ import annotations

import importlib.util
import io
import logging
from typing import Any

from CovidCTLib.models.runtime import onnx_cache

LOG = logging.getLogger(__name__)
#: environment switch: ``0`` keeps every network on torch even with ONNX Runtime installed
ENV_SWITCH = "COVIDCT_ONNXRUNTIME"
#: ONNX Runtime's CPU memory arena (off: it held about 1 GB more resident memory through the analysis)
ARENA = False
#: input size of the dummy batch used for the export (the batch axis is dynamic)
_EXPORT_BATCH = 2


def onnxruntime_usable() -> bool:
    """True when ONNX Runtime and the ONNX package are importable and not switched off by the environment."""
    if onnx_cache.switched_off(ENV_SWITCH):
        return False
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


class OnnxNetwork:
    """A callable like the torch module: ``(B, C, H, W)`` float32 CPU tensor in, logits tensor out."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import torch

        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def export_onnx(module: Any, channels: int, size: int) -> bytes:
    """The ONNX model (bytes) of an evaluation-mode copy of ``module`` for ``(B, channels, size, size)`` inputs."""
    import copy
    import warnings

    import torch

    net = copy.deepcopy(module).eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(_EXPORT_BATCH, channels, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter notices (tracer, deprecations) are not the user's concern
        torch.onnx.export(
            net,
            (dummy,),
            buffer,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def make_session(model_bytes: bytes) -> Any:
    """An ONNX Runtime CPU session with torch's current intra-op thread count and one inter-op thread."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = ARENA  # the arena keeps the largest batch's activations after the run
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def cached_session(module: Any, channels: int, size: int, weights_sha256: str) -> Any:
    """A session of the cached export of ``module`` (probed against it), or of a new export (then cached)."""
    probed: list[Any] = []

    def accept(data: bytes) -> bool:
        session = make_session(data)
        if onnx_cache.probe_agrees(module, OnnxNetwork(session), channels, size):
            probed.append(session)
            return True
        return False

    key = onnx_cache.cache_key(weights_sha256, channels, size)
    data = onnx_cache.cached_model(key, lambda: export_onnx(module, channels, size), accept)
    return probed[0] if probed else make_session(data)


def onnx_network(module: Any, channels: int, size: int, weights_sha256: str | None = None) -> OnnxNetwork | None:
    """``module`` as an :class:`OnnxNetwork`, or None (torch is kept) when ONNX Runtime cannot run it.
    ``weights_sha256`` (the sealed manifest's) lets the export come from the on-disk cache."""
    if not onnxruntime_usable():
        return None
    try:
        if weights_sha256 and onnx_cache.cache_enabled():
            return OnnxNetwork(cached_session(module, channels, size, weights_sha256))
        return OnnxNetwork(make_session(export_onnx(module, channels, size)))
    except Exception as exc:  # noqa: BLE001 - any export/runtime failure means: keep torch
        LOG.warning("ONNX Runtime not used for this network (%s: %s); running it with torch.", type(exc).__name__, exc)
        return None
