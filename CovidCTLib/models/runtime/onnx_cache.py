"""On-disk cache of the ONNX export of a verified network (issue 15: the export cost about 2 s per process,
most of it importing the exporter).

The key is a SHA-256 of the weights' SHA-256 (from the sealed manifest), the input shape, the torch and
ONNX Runtime versions and :data:`EXPORT_VERSION`, so new weights or a new exporter never reuse an old file.
A cached file is trusted only after a **probe**: a fixed input goes through the verified torch module and
the ONNX Runtime session, and their probabilities must agree within :data:`PROBE_TOLERANCE`; a file that
disagrees (damaged, tampered, another exporter) is exported again and replaced. Nothing here ever uses the
network: the cache is written locally, atomically, and skipped (with the in-memory export) when the folder
is not writable. ``COVIDCT_CACHE_DIR`` chooses the folder (default ``$XDG_CACHE_HOME/covidct`` or
``~/.cache/covidct``); ``COVIDCT_ONNX_CACHE=0`` switches the cache off.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from CovidCTLib.atomic import write_bytes_atomic

LOG = logging.getLogger(__name__)
#: bump when :func:`CovidCTLib.models.runtime.onnx_backend.export_onnx` changes what it writes
EXPORT_VERSION = "1"
#: largest difference of softmax probabilities allowed between torch and a cached ONNX model on the probe
PROBE_TOLERANCE = 1e-3
ENV_DIR = "COVIDCT_CACHE_DIR"
ENV_SWITCH = "COVIDCT_ONNX_CACHE"


def switched_off(variable: str) -> bool:
    """True when the environment switch ``variable`` is 0 / false / no / off (unset means on)."""
    return os.environ.get(variable, "1").strip().lower() in ("0", "false", "no", "off")


def cache_enabled() -> bool:
    """False when ``COVIDCT_ONNX_CACHE`` is switched off."""
    return not switched_off(ENV_SWITCH)


def cache_dir() -> Path:
    """The folder of the cached ONNX files."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "covidct" / "onnx"


def cache_key(weights_sha256: str, channels: int, size: int) -> str:
    """The file stem of one export: new weights, shape, torch, ONNX Runtime or exporter give a new key."""
    import onnxruntime
    import torch

    parts = [EXPORT_VERSION, weights_sha256, str(channels), str(size), torch.__version__, onnxruntime.__version__]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def probe_batch(channels: int, size: int) -> Any:
    """A fixed, structured input (smooth gradients and a disc), the same in every process."""
    import torch

    axis = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    image = 0.5 + 0.3 * torch.sin(3.0 * xx) * torch.cos(2.0 * yy) + 0.2 * ((xx**2 + yy**2) < 0.3).float()
    return image.expand(1, channels, size, size).contiguous()


def probe_agrees(module: Any, run: Callable[[Any], Any], channels: int, size: int) -> bool:
    """Whether ``run`` (an ONNX network) gives the verified ``module``'s probabilities on the probe."""
    import copy

    import torch

    batch = probe_batch(channels, size)
    net = copy.deepcopy(module).eval().to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        expected = torch.softmax(net(batch).float(), dim=1)
    got = torch.softmax(run(batch).float(), dim=1)
    return got.shape == expected.shape and float((got - expected).abs().max()) <= PROBE_TOLERANCE


def cached_model(
    key: str, export: Callable[[], bytes], accept: Callable[[bytes], bool], folder: Path | None = None
) -> bytes:
    """The ONNX bytes for ``key``: the cached file when ``accept`` passes it, else ``export()`` (written to the
    cache when the folder is writable)."""
    folder = folder or cache_dir()
    path = folder / f"{key}.onnx"
    if path.is_file():
        try:
            data = path.read_bytes()
            if accept(data):
                return data
            LOG.warning("Cached ONNX model %s disagrees with the verified weights; exporting it again.", path)
        except Exception as exc:  # noqa: BLE001 - an unreadable or broken cache file means: export again
            LOG.warning("Cached ONNX model %s not usable (%s); exporting it again.", path, exc)
    data = export()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data, overwrite=True)
    except OSError as exc:
        LOG.info("ONNX export not cached (%s): it is made again in the next process.", exc)
    return data
