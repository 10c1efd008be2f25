"""The only networks a model manifest may ask for: an explicit table with typed, validated arguments.

A manifest's ``architecture`` is ``{"network": "<name in NETWORKS>", "kwargs": {...}}``. Each argument has
a type and an allowed range; an unknown network, an unknown argument or a value of the wrong type or out of
range is refused with :class:`~CovidCTLib.errors.ModelError` before anything is built. No manifest can name
a Python callable. Manifests written before this table used ``"builder": "<module>:<function>"``; the three
builders CovidCT ever wrote are mapped to their table entries (:data:`LEGACY_BUILDERS`), nothing else is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from CovidCTLib.errors import ModelError


@dataclass(frozen=True)
class Arg:
    """One constructor argument: its kind (``int``, ``float``, ``str``, ``int-list``, ``head``) and allowed
    values."""

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    min_len: int = 1
    max_len: int = 1

    def check(self, network: str, name: str, value: Any) -> Any:
        """The validated value (a list becomes a tuple of ints); raises ModelError when it is not allowed."""
        where = f"model manifest: network '{network}' argument '{name}'"
        if self.kind == "head":
            return _check_head(network, name, value)
        if self.kind == "str":
            if not isinstance(value, str) or value not in self.choices:
                raise ModelError(f"{where} is {value!r}; allowed: {', '.join(self.choices)}. Reinstall the model.")
            return value
        if self.kind == "int-list":
            if not isinstance(value, (list, tuple)) or not self.min_len <= len(value) <= self.max_len:
                raise ModelError(
                    f"{where} must be a list of {self.min_len}-{self.max_len} integers, not {value!r}. "
                    "Reinstall the model."
                )
            return tuple(self._number(where, v, int) for v in value)
        return self._number(where, value, int if self.kind == "int" else float)

    def _number(self, where: str, value: Any, kind: type) -> Any:
        ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            raise ModelError(f"{where} must be {kind.__name__}, not {value!r}. Reinstall the model.")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ModelError(f"{where} = {value!r} is outside {self.low}..{self.high}. Reinstall the model.")
        return kind(value)


#: classifier heads a manifest may describe, and the integer fields (with their ranges) each one takes
HEAD_FIELDS: dict[str, dict[str, tuple[int, int]]] = {
    "linear": {},
    "mlp-ensemble": {"hidden": (1, 1024), "members": (1, 256)},
}


def _check_head(network: str, name: str, value: Any) -> dict[str, Any]:
    """A classifier head description ``{"kind": ..., <its integer fields>}``, checked field by field."""
    where = f"model manifest: network '{network}' argument '{name}'"
    if not isinstance(value, dict) or value.get("kind") not in HEAD_FIELDS:
        raise ModelError(f"{where} must name a head kind ({', '.join(HEAD_FIELDS)}), not {value!r}. Reinstall it.")
    fields = HEAD_FIELDS[value["kind"]]
    if set(value) != {"kind", *fields}:
        raise ModelError(f"{where}: a {value['kind']} head takes {', '.join(['kind', *fields])}. Reinstall it.")
    checked = {
        key: Arg("int", low, high).check(network, f"{name}.{key}", value[key]) for key, (low, high) in fields.items()
    }
    return {"kind": value["kind"], **checked}


def _attention_unet(**kwargs: Any) -> Any:
    from CovidCTLib.models.runtime.networks import attention_unet

    return attention_unet(**kwargs)


def _unet(**kwargs: Any) -> Any:
    from CovidCTLib.models.runtime.networks import unet

    return unet(**kwargs)


def _efficientnet(**kwargs: Any) -> Any:
    from CovidCTLib.models.runtime.classifier import build_efficientnet

    return build_efficientnet(**kwargs)


def _seg_feature_classifier(**kwargs: Any) -> Any:
    from CovidCTLib.models.runtime.seg_features import SegFeatureClassifier

    return SegFeatureClassifier(**kwargs)


def _cyclegan_resnet(**kwargs: Any) -> Any:
    from CovidCTLib.models.runtime.synth_networks import cyclegan_resnet

    return cyclegan_resnet(**kwargs)


@dataclass(frozen=True)
class Network:
    """A constructor and the arguments it may receive from a manifest."""

    build: Callable[..., Any]
    args: dict[str, Arg]


_CHANNELS = Arg("int", 1, 16)
_DROPOUT = Arg("float", 0.0, 0.9)
_FEATURES = Arg("int-list", 1, 1024, min_len=2, max_len=7)

NETWORKS: dict[str, Network] = {
    "attention-unet": Network(
        _attention_unet,
        {"in_channels": _CHANNELS, "out_channels": _CHANNELS, "channels": _FEATURES, "dropout": _DROPOUT},
    ),
    "unet": Network(
        _unet,
        {
            "in_channels": _CHANNELS,
            "out_channels": _CHANNELS,
            "channels": _FEATURES,
            "num_res_units": Arg("int", 0, 4),
            "dropout": _DROPOUT,
        },
    ),
    "efficientnet": Network(
        _efficientnet,
        {
            "model_name": Arg("str", choices=tuple(f"efficientnet-b{i}" for i in range(8))),
            "in_channels": Arg("int", 1, 3),
        },
    ),
    "seg-feature-classifier": Network(  # issue 13.4: COVID classifier on the segmentation networks' features
        _seg_feature_classifier,
        {
            "lung_channels": _FEATURES,
            "infection_channels": _FEATURES,
            "infection_res_units": Arg("int", 0, 4),
            "n_features": Arg("int", 1, 100000),
            "head": Arg("head"),
        },
    ),
    "cyclegan-resnet": Network(  # issue 16: generator of the COVID synthesizer
        _cyclegan_resnet,
        {
            "in_channels": Arg("int", 1, 3),
            "base": Arg("int", 4, 128),
            "n_down": Arg("int", 1, 4),
            "n_blocks": Arg("int", 1, 12),
        },
    ),
}

#: the builder strings of manifests written before the table (read only; new manifests use "network")
LEGACY_BUILDERS = {
    "CovidCTLib.models.networks:attention_unet": "attention-unet",
    "CovidCTLib.models.networks:unet": "unet",
    "CovidCTLib.models.classifier:build_efficientnet": "efficientnet",
}


def network_name(architecture: Any) -> str:
    """The table entry an ``architecture`` block names; refuses anything else."""
    if not isinstance(architecture, dict):
        raise ModelError("model manifest: 'architecture' must be an object; reinstall the model.")
    if "network" in architecture:
        name = architecture["network"]
    elif "builder" in architecture:
        name = LEGACY_BUILDERS.get(architecture["builder"]) if isinstance(architecture["builder"], str) else None
        if name is None:
            raise ModelError(
                f"model manifest: architecture builder {architecture['builder']!r} is not allowed "
                f"(allowed networks: {', '.join(NETWORKS)}); reinstall the model."
            )
    else:
        raise ModelError("model manifest: 'architecture' names no network; reinstall the model.")
    if not isinstance(name, str) or name not in NETWORKS:
        raise ModelError(
            f"model manifest: network {name!r} is not one of {', '.join(NETWORKS)}; "
            "reinstall the model or update CovidCT."
        )
    return name


def validate_architecture(architecture: Any) -> tuple[str, dict[str, Any]]:
    """``(network name, validated keyword arguments)`` of a manifest's ``architecture`` block."""
    name = network_name(architecture)
    kwargs = architecture.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ModelError(f"model manifest: network '{name}' kwargs must be an object; reinstall the model.")
    spec = NETWORKS[name]
    unknown = sorted(set(kwargs) - set(spec.args))
    if unknown:
        raise ModelError(
            f"model manifest: network '{name}' does not take {', '.join(map(repr, unknown))} "
            f"(it takes {', '.join(spec.args)}); reinstall the model."
        )
    return name, {key: spec.args[key].check(name, key, value) for key, value in kwargs.items()}


def build_network(architecture: Any) -> Any:
    """Instantiate the (untrained) network of a validated ``architecture`` block."""
    name, kwargs = validate_architecture(architecture)
    return NETWORKS[name].build(**kwargs)
