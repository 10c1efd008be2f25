"""Shipped-model registry: ``Resources/Models/<name>/manifest.json`` + fp16 weights with a SHA-256.

Layout of one model folder::

    Resources/Models/<name>/
        manifest.json   name, version, task, architecture {network, kwargs}, input {channels, size},
                        normalization, weights, sha256, training {command, seed, data, licence}, metrics,
                        intended_use, limitations, research_only, manifest_sha256
        <weights>.pt    torch ``state_dict`` saved in float16
        MODEL_CARD.md   human-readable card

The models folder is ``<repo>/Resources/Models`` in a checkout, ``CovidCTLib/_models`` in an installed wheel
(:mod:`CovidCTLib.resources`), unless the environment variable ``COVIDCT_MODELS_DIR`` names another. Loading
verifies the checksum first and refuses a missing or modified weights file with
:class:`~CovidCTLib.errors.ModelError`.

The architecture is rebuilt from ``architecture.network``, one entry of the fixed table in
:mod:`CovidCTLib.models.runtime.architectures`, with its typed, validated ``kwargs`` (no manifest can name a Python
callable). ``manifest_sha256`` (:mod:`CovidCTLib.models.runtime.integrity`) covers the manifest's content and, through
``sha256``, the weights: a modified manifest is refused like modified weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from CovidCTLib.atomic import write_bytes_atomic, write_text_atomic
from CovidCTLib.errors import ModelError
from CovidCTLib.models.runtime.architectures import build_network, validate_architecture
from CovidCTLib.models.runtime.integrity import check_seal, seal
from CovidCTLib.resources import default_models_dir
from CovidCTLib.version import DISCLAIMER

MANIFEST = "manifest.json"
REQUIRED_KEYS = ("name", "version", "task", "architecture", "input", "normalization", "weights", "sha256")


def models_dir() -> Path:
    """The folder holding one sub-folder per shipped model (checkout, installed wheel or the env override)."""
    return default_models_dir()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    """A network ready for inference plus its manifest."""

    name: str
    module: Any  # torch.nn.Module (typed loosely so importing the registry does not import torch)
    manifest: dict[str, Any]
    device: str = "cpu"
    folder: Path = field(default_factory=Path)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unknown"))

    @property
    def input_size(self) -> int:
        return int(self.manifest["input"]["size"])

    @property
    def normalization(self) -> str:
        return str(self.manifest["normalization"])


def _reinstall_hint(name: str) -> str:
    return (
        f"Reinstall CovidCT (or restore Resources/Models/{name}/ from the release), or retrain it with "
        f"'covidct train ...' and point COVIDCT_MODELS_DIR at the result."
    )


def read_manifest(name: str, root: Path | None = None) -> dict[str, Any]:
    """Read and validate ``<models_dir>/<name>/manifest.json``."""
    folder = (root or models_dir()) / name
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelError(f"Model '{name}' is not installed (no {path}). {_reinstall_hint(name)}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"Model '{name}': manifest {path} is unreadable ({exc}). {_reinstall_hint(name)}") from exc
    if not isinstance(manifest, dict):
        raise ModelError(f"Model '{name}': manifest {path} is not a JSON object. {_reinstall_hint(name)}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ModelError(f"Model '{name}': manifest lacks {', '.join(missing)}. {_reinstall_hint(name)}")
    check_seal(manifest, f"Model '{name}': manifest {path}", _reinstall_hint(name))  # issue 12: integrity
    try:
        validate_architecture(manifest["architecture"])  # issue 12: only the table's networks and arguments
    except ModelError as exc:
        raise ModelError(f"Model '{name}' ({path}): {exc}") from exc
    return manifest


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any], overwrite: bool = True) -> dict[str, Any]:
    """Write ``manifest`` (sealed with its ``manifest_sha256``) to ``path``; returns what was written."""
    sealed = seal(manifest)
    write_text_atomic(Path(path), json.dumps(sealed, indent=2) + "\n", overwrite=overwrite)
    return sealed


def verify(name: str, root: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Check the weights file exists and matches the manifest's SHA-256; returns (manifest, weights path)."""
    manifest = read_manifest(name, root)
    weights = (root or models_dir()) / name / manifest["weights"]
    if not weights.is_file():
        raise ModelError(f"Model '{name}': weights file {weights} is missing. {_reinstall_hint(name)}")
    actual = sha256_file(weights)
    if actual != manifest["sha256"]:
        raise ModelError(
            f"Model '{name}': weights file {weights} does not match its manifest checksum "
            f"(expected {manifest['sha256'][:12]}..., got {actual[:12]}...); it is damaged or was modified. "
            + _reinstall_hint(name)
        )
    return manifest, weights


def model_for_task(task: str, root: Path | None = None) -> str | None:
    """The installed model whose manifest ``task`` is ``task`` (first by name when several); None when none.

    This is how the analysis picks its networks: swapping the lung network means installing a model folder
    whose manifest says ``"task": "lung"`` (and removing the old one), not changing code.
    """
    base = root or models_dir()
    if not base.is_dir():
        return None
    for folder in sorted(p for p in base.iterdir() if (p / MANIFEST).is_file()):
        try:
            if json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("task") == task:
                return folder.name
        except (OSError, json.JSONDecodeError):
            continue
    return None


def list_models(root: Path | None = None) -> list[dict[str, Any]]:
    """Every model folder with a manifest: name, version, task, and whether its weights verify."""
    base = root or models_dir()
    out: list[dict[str, Any]] = []
    if not base.is_dir():
        return out
    for folder in sorted(p for p in base.iterdir() if (p / MANIFEST).is_file()):
        entry: dict[str, Any] = {"name": folder.name}
        try:
            manifest, _ = verify(folder.name, base)
            entry.update(
                version=manifest["version"],
                task=manifest["task"],
                ok=True,
                metrics=manifest.get("metrics", {}),
                path=str(folder),
            )
        except ModelError as exc:
            entry.update(ok=False, error=str(exc), path=str(folder))
        out.append(entry)
    return out


def build_module(manifest: dict[str, Any]) -> Any:
    """Instantiate the (untrained) network a manifest describes (only networks of the fixed table)."""
    return build_network(manifest["architecture"])


def load_model(name: str, device: str = "cpu", root: Path | None = None) -> LoadedModel:
    """Verify the checksum, rebuild the architecture, load the fp16 weights as float32, eval mode."""
    import torch

    manifest, weights = verify(name, root)
    module = build_module(manifest)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except Exception as exc:  # incompatible state dict, corrupt pickle
        raise ModelError(f"Model '{name}' cannot be loaded ({exc}). {_reinstall_hint(name)}") from exc
    module.to(device).eval()
    return LoadedModel(name, module, manifest, device, (root or models_dir()) / name)


def save_model(
    module: Any,
    folder: str | os.PathLike,
    manifest: dict[str, Any],
    weights_name: str = "weights.pt",
    overwrite: bool = True,
    float32_prefixes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write ``module``'s weights in fp16 plus ``manifest.json`` (checksum filled in) into ``folder``.

    Parameters whose names start with one of ``float32_prefixes`` (e.g. a linear head) stay float32.

    ``manifest`` must hold at least name, version, task, architecture, input and normalization; weights,
    sha256 and the research-only statement are added here. Returns the manifest as written.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def stored(name: str, v: Any) -> Any:
        if not v.is_floating_point():
            return v.detach()
        return v.detach().float() if name.startswith(float32_prefixes) else v.detach().half()

    state = {k: stored(k, v).cpu() for k, v in module.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(folder / weights_name, buf.getvalue(), overwrite=overwrite)
    out = dict(manifest)
    out["weights"] = weights_name
    out["weights_dtype"] = "float16" + (f" ({', '.join(float32_prefixes)} float32)" if float32_prefixes else "")
    out["sha256"] = sha256_file(folder / weights_name)
    out.setdefault("research_only", DISCLAIMER)
    missing = [k for k in REQUIRED_KEYS if k not in out]
    if missing:
        raise ValueError(f"manifest lacks {missing}")
    validate_architecture(out["architecture"])
    return write_manifest(folder / MANIFEST, out, overwrite=overwrite)
