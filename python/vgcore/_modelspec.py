"""Plain-data model descriptions (flags, TOML tables, sweep grid points) -> models and inputs.

A *spec* is a flat mapping of simple values, so it can travel through the command line, a TOML
file, a Parquet column or a Dask task unchanged::

    {"model": "mlp", "depth": 50, "width": 128, "activation": "sigmoid", "init": "default"}
    {"model": "lstm", "hidden_size": 64, "input_size": 32, "steps": 200, "forget_bias": 1.0}

:func:`build` turns one into ``(model, x)`` deterministically (the weights from ``seed``, the
inputs from ``seed + 1``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MODEL_KINDS", "SPEC_KEYS", "ModelSpec", "build", "describe", "spec_from_model"]

MODEL_KINDS = ("mlp", "rnn", "lstm", "gru")

#: Every key a spec may hold, with its default (``None``: depends on the model kind).
SPEC_KEYS: dict[str, Any] = {
    "model": "mlp",
    "name": None,
    # dense stacks
    "depth": 20,
    "width": 64,
    "activation": "tanh",
    "block": "plain",
    "alpha": 1.0,
    "norm": None,
    # recurrent cells
    "hidden_size": None,
    "input_size": None,
    "steps": 100,
    "nonlinearity": "tanh",
    "forget_bias": None,
    # both
    "init": None,
    "sigma_w2": None,
    "sigma_b2": None,
    "bias": True,
    "batch": None,
    "seed": 0,
    "dtype": "float64",
    "input_scale": 1.0,
}

_INT_KEYS = ("depth", "width", "hidden_size", "input_size", "steps", "batch", "seed")
_FLOAT_KEYS = ("alpha", "sigma_w2", "sigma_b2", "forget_bias", "input_scale")


@dataclass(frozen=True)
class ModelSpec:
    """A validated model description (see the module docstring for the keys).

    Parameters
    ----------
    values : mapping
        Keys of :data:`SPEC_KEYS`; missing keys take their defaults, unknown keys raise
        ``ValueError`` naming them.
    """

    values: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        raw = dict(self.values)
        unknown = sorted(set(raw) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(
                f"unknown model setting(s) {unknown}; known settings: {', '.join(SPEC_KEYS)}"
            )
        v = {**SPEC_KEYS, **{k: x for k, x in raw.items() if x is not None}}
        kind = str(v["model"]).lower()
        if kind not in MODEL_KINDS:
            raise ValueError(f"model must be one of {', '.join(MODEL_KINDS)}, got {v['model']!r}")
        v["model"] = kind
        for k in _INT_KEYS:
            if v[k] is not None:
                v[k] = _as_int(v[k], k, minimum=0 if k == "seed" else 1)
        for k in _FLOAT_KEYS:
            if v[k] is not None:
                v[k] = _as_float(v[k], k)
        for k in ("sigma_w2", "sigma_b2"):
            if v[k] is not None and v[k] < 0:
                raise ValueError(f"{k} must be >= 0, got {v[k]}")
        if kind == "mlp":
            v["batch"] = v["batch"] or 64
            v["input_size"] = v["input_size"] or v["width"]
        else:
            v["hidden_size"] = v["hidden_size"] or v["width"]
            v["input_size"] = v["input_size"] or 32
            v["batch"] = v["batch"] or 16
        if v["block"] not in ("plain", "residual", "highway"):
            raise ValueError(f"block must be plain, residual or highway, got {v['block']!r}")
        if v["norm"] in ("none", ""):
            v["norm"] = None
        if v["norm"] not in (None, "layernorm", "batchnorm"):
            raise ValueError(f"norm must be none, layernorm or batchnorm, got {v['norm']!r}")
        if kind != "lstm" and raw.get("forget_bias") is not None:
            raise ValueError(f"forget_bias applies to LSTM only, not to {kind}")
        if kind != "rnn" and raw.get("nonlinearity") not in (None, "tanh"):
            raise ValueError(f"nonlinearity applies to RNN only, not to {kind}")
        if v["dtype"] not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {v['dtype']!r}")
        object.__setattr__(self, "values", v)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def kind(self) -> str:
        return str(self.values["model"])

    def init_spec(self) -> Any:
        """The ``init`` argument for :mod:`vgcore.init` (sigma_w2 / sigma_b2 imply gaussian)."""
        v = self.values
        init = v["init"]
        if isinstance(init, Mapping):
            init = dict(init)
        gauss = {k: v[k] for k in ("sigma_w2", "sigma_b2") if v[k] is not None}
        if gauss:
            if init is None:
                init = "gaussian"
            if isinstance(init, str):
                init = {"name": init}
            init = {**init, **gauss}
        if v["model"] == "lstm" and v["forget_bias"] is not None:
            if init is None or isinstance(init, str):
                init = {"name": init or "default"}
            init = {**init, "forget_bias": v["forget_bias"]}
        return init

    def to_dict(self) -> dict[str, Any]:
        """The settings that matter for this model kind (for tables and file names)."""
        keep = {
            "mlp": (
                "model",
                "depth",
                "width",
                "input_size",
                "activation",
                "block",
                "alpha",
                "norm",
            ),
            "rnn": ("model", "hidden_size", "input_size", "steps", "nonlinearity"),
            "lstm": ("model", "hidden_size", "input_size", "steps", "forget_bias"),
            "gru": ("model", "hidden_size", "input_size", "steps"),
        }[self.kind]
        common = ("init", "sigma_w2", "sigma_b2", "bias", "batch", "seed", "dtype")
        return {k: self.values[k] for k in (*keep, *common) if self.values[k] is not None}


def _as_int(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not f.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if f < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {int(f)}")
    return int(f)


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return f


def _as_spec(spec: ModelSpec | Mapping[str, Any]) -> ModelSpec:
    return spec if isinstance(spec, ModelSpec) else ModelSpec(spec)


def build_model(spec: ModelSpec | Mapping[str, Any]) -> Any:
    """The vgcore model a spec describes (weights seeded by ``seed``)."""
    from vgcore.models import MLP, model_kind

    s = _as_spec(spec)
    v = s.values
    init = s.init_spec()
    if s.kind == "mlp":
        sizes = [v["input_size"]] + [v["width"]] * v["depth"]
        residual: bool | float = False
        if v["block"] == "residual":
            residual = True if v["alpha"] == 1.0 else v["alpha"]
        return MLP.from_sizes(
            sizes,
            v["activation"],
            init=init,
            bias=v["bias"],
            seed=v["seed"],
            dtype=v["dtype"],
            residual=residual,
            highway=v["block"] == "highway",
            norm=v["norm"],
        )
    cls: Any = model_kind(s.kind).cls
    kw: dict[str, Any] = {"nonlinearity": v["nonlinearity"]} if s.kind == "rnn" else {}
    return cls.from_sizes(
        v["input_size"],
        v["hidden_size"],
        init=init,
        bias=v["bias"],
        seed=v["seed"],
        dtype=v["dtype"],
        **kw,
    )


def build_input(spec: ModelSpec | Mapping[str, Any]) -> np.ndarray:
    """Standard-normal inputs (times ``input_scale``) of the right shape, seeded ``seed + 1``."""
    s = _as_spec(spec)
    v = s.values
    rng = np.random.default_rng(v["seed"] + 1)
    shape = (
        (v["batch"], v["input_size"])
        if s.kind == "mlp"
        else (v["steps"], v["batch"], v["input_size"])
    )
    return (v["input_scale"] * rng.standard_normal(shape)).astype(v["dtype"])


def build(spec: ModelSpec | Mapping[str, Any]) -> tuple[Any, np.ndarray]:
    """``(model, x)`` for a spec."""
    s = _as_spec(spec)
    return build_model(s), build_input(s)


def _init_name(init: Any) -> str:
    if init is None:
        return "default init"
    if isinstance(init, Mapping):
        name = str(init.get("name", "default"))
        extra = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in init.items()
            if k != "name"
        )
        return f"{name}({extra})" if extra else name
    return str(init)


def describe(spec: ModelSpec | Mapping[str, Any]) -> str:
    """A short human-readable name, e.g. ``"MLP sigmoid L=50 (default init)"``."""
    s = _as_spec(spec)
    v = s.values
    if v["name"]:
        return str(v["name"])
    init = _init_name(s.init_spec())
    if s.kind == "mlp":
        extra = "" if v["block"] == "plain" else f" {v['block']}"
        extra += f" +{v['norm']}" if v["norm"] else ""
        return f"MLP {v['activation']}{extra} L={v['depth']} ({init})"
    name = "RNN " + v["nonlinearity"] if s.kind == "rnn" else s.kind.upper()
    return f"{name} T={v['steps']} ({init})"


def spec_from_model(model: Any) -> dict[str, Any]:
    """Best-effort flat description of an existing model (for tables and reports); the model
    says it (:meth:`vgcore.models.Model.flat_spec`)."""
    return dict(model.flat_spec())
