"""Activation functions by name, with PyTorch's parameters and defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

#: Canonical names and their parameters with PyTorch's defaults.
ACTIVATIONS: dict[str, dict[str, float]] = {
    "identity": {},
    "sigmoid": {},
    "tanh": {},
    "relu": {},
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
    "selu": {},
    "softplus": {"beta": 1.0, "threshold": 20.0},
    "silu": {},
    "gelu": {},
    "gelu_tanh": {},
}
ALIASES = {"linear": "identity", "swish": "silu", "gelu_erf": "gelu", "none": "identity"}

#: What each activation is, for the questions analyses ask: its ``family`` ("linear";
#: "saturating": bounded, flattens at both ends; "rectifier": ReLU-like, unbounded above) and
#: what a unit whose derivative (nearly) vanishes is called, ``low_derivative``: "saturated"
#: where the output flattens against a bound (tanh, sigmoid; elu/selu towards -alpha), or
#: "inactive" where a rectifier switches the unit off (output and derivative ~0: relu, its
#: smooth variants); None where the derivative never vanishes.
ACTIVATION_CLASSES: dict[str, tuple[str, str | None]] = {
    "identity": ("linear", None),
    "sigmoid": ("saturating", "saturated"),
    "tanh": ("saturating", "saturated"),
    "relu": ("rectifier", "inactive"),
    "leaky_relu": ("rectifier", "inactive"),
    "elu": ("rectifier", "saturated"),
    "selu": ("rectifier", "saturated"),
    "softplus": ("rectifier", "inactive"),
    "silu": ("rectifier", "inactive"),
    "gelu": ("rectifier", "inactive"),
    "gelu_tanh": ("rectifier", "inactive"),
}


@dataclass(frozen=True)
class Activation:
    """A named activation with its parameters.

    Parameters
    ----------
    name : str
        One of :data:`ACTIVATIONS` (aliases: linear, swish, gelu_erf).
    **params
        ``negative_slope`` (leaky_relu), ``alpha`` (elu), ``beta`` and ``threshold``
        (softplus); PyTorch's defaults when omitted.
    """

    name: str
    params: dict[str, float] = field(default_factory=dict)

    def __init__(self, name: str, **params: float) -> None:
        if not isinstance(name, str):
            raise TypeError(f"activation name must be a string, got {type(name).__name__}")
        canon = ALIASES.get(name.lower(), name.lower())
        if canon not in ACTIVATIONS:
            allowed = ", ".join(ACTIVATIONS)
            raise ValueError(f"unknown activation {name!r}; expected one of: {allowed}")
        defaults = ACTIVATIONS[canon]
        unknown = set(params) - set(defaults)
        if unknown:
            raise ValueError(
                f"activation {canon!r} has no parameter(s) {sorted(unknown)}; "
                f"it takes {sorted(defaults) or 'none'}"
            )
        merged = {**defaults, **{k: float(v) for k, v in params.items()}}
        for k, v in merged.items():
            if not math.isfinite(v):
                raise ValueError(f"activation parameter {k} must be finite, got {v}")
        object.__setattr__(self, "name", canon)
        object.__setattr__(self, "params", merged)

    def core_args(self) -> tuple[str, float, float]:
        """(name, alpha, beta) as the compiled core takes them."""
        p = self.params
        if self.name == "leaky_relu":
            return (self.name, p["negative_slope"], math.nan)
        if self.name == "elu":
            return (self.name, p["alpha"], math.nan)
        if self.name == "softplus":
            return (self.name, p["beta"], p["threshold"])
        return (self.name, math.nan, math.nan)

    @property
    def is_linear(self) -> bool:
        return self.name == "identity"

    @property
    def family(self) -> str:
        """ "linear", "saturating" (tanh, sigmoid) or "rectifier" (the ReLU family)."""
        return ACTIVATION_CLASSES[self.name][0]

    @property
    def low_derivative(self) -> str | None:
        """What a unit with a vanishing derivative is: "saturated" (tanh, sigmoid, elu, selu),
        "inactive" (relu and its smooth variants: switched off), or None (identity).

        A leaky ReLU's derivative is ``negative_slope`` when off: its units only count as
        inactive when that slope is below the saturation threshold of the analysis.
        """
        return ACTIVATION_CLASSES[self.name][1]

    def __str__(self) -> str:
        if not self.params or self.params == ACTIVATIONS[self.name]:
            return self.name
        args = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.name}({args})"

    def __repr__(self) -> str:
        return f"Activation({str(self)!r})"

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.params.items()))))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            try:
                other = Activation(other)
            except ValueError:
                return False
        if not isinstance(other, Activation):
            return NotImplemented
        return self.name == other.name and self.params == other.params


ActivationLike = Union[str, Activation, tuple]


def as_activation(value: Any, name: str = "activation") -> Activation:
    """Accept ``"tanh"``, ``Activation(...)``, or ``("leaky_relu", {"negative_slope": 0.2})``."""
    if isinstance(value, Activation):
        return value
    try:
        if isinstance(value, str):
            return Activation(value)
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
            return Activation(value[0], **value[1])
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from None
    raise TypeError(
        f"{name} must be a name, an Activation or a (name, params) tuple, got {value!r}"
    )


# PyTorch module class name -> (activation name, {our param: module attribute})
TORCH_MODULES: dict[str, tuple[str, dict[str, str]]] = {
    "Identity": ("identity", {}),
    "Sigmoid": ("sigmoid", {}),
    "Tanh": ("tanh", {}),
    "ReLU": ("relu", {}),
    "LeakyReLU": ("leaky_relu", {"negative_slope": "negative_slope"}),
    "ELU": ("elu", {"alpha": "alpha"}),
    "SELU": ("selu", {}),
    "Softplus": ("softplus", {"beta": "beta", "threshold": "threshold"}),
    "SiLU": ("silu", {}),
    "GELU": ("gelu", {}),
}


def from_torch_module(module: Any) -> Activation | None:
    """The Activation equivalent of a torch.nn activation module, or None if not one."""
    cls = type(module).__name__
    if cls == "GELU":
        approx = getattr(module, "approximate", "none")
        return Activation("gelu_tanh" if approx == "tanh" else "gelu")
    if cls not in TORCH_MODULES:
        return None
    name, attrs = TORCH_MODULES[cls]
    return Activation(name, **{k: float(getattr(module, a)) for k, a in attrs.items()})


def to_torch_module(act: Activation) -> Any:
    """A torch.nn module computing the same function (imports torch lazily)."""
    from torch import nn

    p = act.params
    return {
        "identity": lambda: nn.Identity(),
        "sigmoid": lambda: nn.Sigmoid(),
        "tanh": lambda: nn.Tanh(),
        "relu": lambda: nn.ReLU(),
        "leaky_relu": lambda: nn.LeakyReLU(p.get("negative_slope", 0.01)),
        "elu": lambda: nn.ELU(p.get("alpha", 1.0)),
        "selu": lambda: nn.SELU(),
        "softplus": lambda: nn.Softplus(p.get("beta", 1.0), p.get("threshold", 20.0)),
        "silu": lambda: nn.SiLU(),
        "gelu": lambda: nn.GELU(),
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    }[act.name]()
