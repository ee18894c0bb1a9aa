"""The one list of model kinds the conformance battery runs (tests/test_conformance.py).

A new kind is tested by every analysis by adding one :class:`Kind` to :data:`KINDS`. Each entry
is what a registry entry would hold (an id, a seeded builder, the matching torch module where
one exists, the input layout, the analyses that apply), so the battery can later iterate over
``vgcore.models.model_kinds()`` instead; until then the battery checks that every registered
kind has at least one entry here. Entries are configurations (activations, blocks, norms, bias,
layout), several per registered kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import vgcore

GRADIENT_FLOW = "gradient_flow"
TANGENT_MAP = "tangent_map"
LYAPUNOV = "lyapunov"
SPECTRUM = "jacobian_spectrum"
SINGULAR_VALUES = "jacobian_singular_values"
ANALYSES = (GRADIENT_FLOW, TANGENT_MAP, LYAPUNOV, SPECTRUM, SINGULAR_VALUES)
JACOBIAN_ANALYSES = (TANGENT_MAP, LYAPUNOV, SPECTRUM, SINGULAR_VALUES)
# Lyapunov exponents need a state of fixed size: an MLP whose width changes has none.
NO_LYAPUNOV = frozenset(a for a in ANALYSES if a != LYAPUNOV)

MLP_LAYOUT = "(B, in)"
TIME_MAJOR = "(T, B, in)"
BATCH_FIRST = "(B, T, in)"


@dataclass(frozen=True)
class Kind:
    """One model kind.

    Attributes
    ----------
    id : str
        Test id.
    build : callable() -> vgcore model
        A seeded float64 model (the battery casts it with ``astype``).
    torch_module : callable(torch, model) -> torch.nn.Module, or None
        The matching float64 PyTorch module (same parameters), where one exists.
    layout : str
        How the analyses take ``x``: ``(B, in)``, ``(T, B, in)`` or ``(B, T, in)``.
    analyses : frozenset of str
        The analyses that apply; the others must refuse the model with a ValueError.
    lyapunov_k : int or None
        How many exponents are well defined (ReLU units switch off, so a rank-deficient
        Jacobian product has -inf or rounding-level exponents below the top ones); None: all.
    h0 : bool
        Recurrent kinds: start from a random initial state (h0, and c0 for an LSTM).
    param_grads : bool
        Its gradient flow measures parameter-gradient norms (the fused sweeps do; the generic
        sweep measures the state's).
    """

    id: str
    build: Callable[[], Any]
    torch_module: Callable[[Any, Any], Any] | None = None
    layout: str = MLP_LAYOUT
    analyses: frozenset[str] = frozenset(ANALYSES)
    lyapunov_k: int | None = None
    h0: bool = False
    param_grads: bool = True
    steps: int = 6
    batch: int = 3

    @property
    def recurrent(self) -> bool:
        return self.layout != MLP_LAYOUT

    def model(self, dtype: Any) -> Any:
        return self.build().astype(dtype)

    def inputs(self, model: Any, seed: int = 0) -> tuple[np.ndarray, Any]:
        """``x`` in the kind's layout and the model's dtype, and ``h0`` as the analyses take it
        (None, an array (B, N), or an LSTM's pair (h0, c0))."""
        rng = np.random.default_rng(seed)
        B, T = self.batch, self.steps
        if not self.recurrent:
            return rng.standard_normal((B, model.input_size)).astype(model.dtype), None
        shape = (B, T, model.input_size) if self.layout == BATCH_FIRST else (T, B, model.input_size)
        x = rng.standard_normal(shape).astype(model.dtype)
        if not self.h0:
            return x, None
        if model.kind in ("ssm", "selective_ssm", "ssm_stack"):  # state rows (B, state_dim)
            return x, (0.5 * rng.standard_normal((B, model.state_dim))).astype(model.dtype)
        N = model.hidden_size
        h0 = 0.5 * rng.standard_normal((B, N))
        if model.kind == "lstm":
            return x, (h0.astype(model.dtype), rng.standard_normal((B, N)).astype(model.dtype))
        return x, h0.astype(model.dtype)

    def time_major(self, a: np.ndarray) -> np.ndarray:
        """A per-step array (x, a sequence cotangent, kept gradients) as (T, B, ...)."""
        return np.swapaxes(a, 0, 1) if self.layout == BATCH_FIRST else a

    @staticmethod
    def state_rows(model: Any, h0: Any) -> np.ndarray | None:
        """``h0`` as the oracles' state rows (B, D): an LSTM's ``[h, c]`` concatenated."""
        if h0 is None:
            return None
        if model.kind == "lstm":
            return np.concatenate([np.asarray(h, np.float64) for h in h0], axis=1)
        return np.asarray(h0, np.float64)


def _to_torch(torch: Any, model: Any) -> Any:
    return model.astype(np.float64).to_torch()


def _mlp(act: Any, sizes: tuple[int, ...] = (5, 5, 5, 5, 5), seed: int = 0, **kw: Any) -> Any:
    return lambda: vgcore.MLP.from_sizes(list(sizes), act, seed=seed, **kw)


def _affine_norm(norm: str, act: str, seed: int, *, eval_stats: bool = False) -> Any:
    """A plain MLP with ``norm`` after every layer and non-trivial affine parameters (and, for
    eval-mode BatchNorm, running statistics away from 0 / 1)."""

    def build() -> Any:
        m = vgcore.MLP.from_sizes([5] * 5, act, seed=seed)
        rng = np.random.default_rng(seed + 100)
        L = m.depth
        return vgcore.MLP(
            m.weights,
            # batch statistics remove the mean: a Linear bias would get an exactly-zero gradient
            m.biases if eval_stats or norm != "batchnorm" else None,
            m.activations,
            norm=norm,
            norm_weights=[rng.uniform(0.5, 1.5, 5) for _ in range(L)],
            norm_biases=[rng.normal(0, 0.3, 5) for _ in range(L)],
            running_means=[rng.uniform(-0.5, 0.5, 5) for _ in range(L)] if eval_stats else None,
            running_vars=[rng.uniform(0.3, 2.0, 5) for _ in range(L)] if eval_stats else None,
        )

    return build


def _recurrent(cls: Any, seed: int = 1, **kw: Any) -> Any:
    return lambda: cls.from_sizes(3, 4 if cls is vgcore.LSTM else 5, seed=seed, **kw)


def _batch_first(cls: Any, seed: int) -> Any:
    def build() -> Any:
        m = cls.from_sizes(3, 4, seed=seed)
        return cls(m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh, batch_first=True)

    return build


KINDS: list[Kind] = [
    # plain MLPs, one per activation family (square layers: a dynamical system in depth)
    Kind("mlp_tanh", _mlp("tanh", init={"name": "gaussian", "sigma_w2": 1.5}), _to_torch),
    Kind("mlp_relu", _mlp("relu", seed=1), _to_torch, lyapunov_k=1),
    Kind("mlp_leaky_relu", _mlp(("leaky_relu", {"negative_slope": 0.1}), seed=2), _to_torch),
    Kind("mlp_gelu", _mlp("gelu", seed=3), _to_torch),
    Kind("mlp_sigmoid", _mlp("sigmoid", seed=4), _to_torch),
    Kind("mlp_selu", _mlp("selu", seed=5), _to_torch),
    Kind("mlp_softplus", _mlp(("softplus", {"beta": 2.0, "threshold": 5.0}), seed=6), _to_torch),
    Kind("mlp_elu", _mlp(("elu", {"alpha": 0.7}), seed=7), _to_torch),
    Kind("mlp_silu", _mlp("silu", seed=8), _to_torch),
    Kind("mlp_tanh_nobias", _mlp("tanh", seed=9, bias=False), _to_torch),
    Kind("mlp_widths", _mlp("tanh", (5, 7, 4, 6), seed=10), _to_torch, analyses=NO_LYAPUNOV),
    # blocks and normalisations
    Kind("mlp_residual", _mlp("tanh", seed=11, residual=0.5)),
    Kind("mlp_highway", _mlp("tanh", seed=12, highway=True)),
    # LayerNorm removes the mean direction: the last exponent is -inf (rounding level)
    Kind("mlp_layernorm", _affine_norm("layernorm", "tanh", 13), _to_torch, lyapunov_k=4),
    Kind("mlp_residual_layernorm", _mlp("gelu", seed=14, residual=True, norm="layernorm")),
    Kind("mlp_batchnorm_eval", _affine_norm("batchnorm", "tanh", 15, eval_stats=True), _to_torch),
    # batch statistics couple the samples: no per-sample Jacobian
    Kind(
        "mlp_batchnorm_train",
        _affine_norm("batchnorm", "tanh", 16),
        _to_torch,
        analyses=frozenset({GRADIENT_FLOW}),
    ),
    # recurrent cells
    Kind("rnn_tanh", _recurrent(vgcore.RNN), _to_torch, TIME_MAJOR, h0=True),
    Kind(
        "rnn_relu",
        _recurrent(vgcore.RNN, seed=3, nonlinearity="relu"),
        _to_torch,
        TIME_MAJOR,
        lyapunov_k=2,
        h0=True,
    ),
    Kind("rnn_tanh_nobias", _recurrent(vgcore.RNN, seed=3, bias=False), _to_torch, TIME_MAJOR),
    Kind("lstm", _recurrent(vgcore.LSTM), _to_torch, TIME_MAJOR, h0=True),
    Kind("lstm_nobias", _recurrent(vgcore.LSTM, seed=4, bias=False), _to_torch, TIME_MAJOR),
    Kind("gru", _recurrent(vgcore.GRU), _to_torch, TIME_MAJOR, h0=True),
    Kind("lstm_batch_first", _batch_first(vgcore.LSTM, 5), _to_torch, BATCH_FIRST, h0=True),
    Kind("gru_batch_first", _batch_first(vgcore.GRU, 6), _to_torch, BATCH_FIRST),
    # state-space layers (oracles: tests/oracles/ssm.py, the reference modules' step); their
    # gradient flow runs the core's generic sweep, its loss on the layer's state
    Kind(
        "ssm_complex",
        lambda: vgcore.models.SSM.from_sizes(3, 3, init="s4d_lin", dt_min=0.05, dt_max=0.5, seed=1),
        layout=TIME_MAJOR,
        param_grads=False,
        h0=True,
    ),
    Kind(
        "ssm_real",
        lambda: vgcore.models.SSM.from_sizes(
            3, 4, init="s4d_real", dt_min=0.05, dt_max=0.5, seed=2
        ),
        layout=TIME_MAJOR,
        param_grads=False,
    ),
    # the selective block's convolution buffer is a nilpotent shift: only the top
    # d_inner * d_state exponents are finite
    Kind(
        "selective_ssm",
        lambda: vgcore.models.SelectiveSSM.from_sizes(3, 2, expand=1, d_conv=2, dt_rank=1, seed=3),
        layout=TIME_MAJOR,
        param_grads=False,
        lyapunov_k=6,
        h0=True,
    ),
    # stacks of state-space blocks (LayerNorm, layer, residual) over time: the blocks couple
    # through their outputs; a selective block's buffer keeps its -inf exponents
    Kind(
        "ssm_stack_lti",
        lambda: vgcore.SSMStack(
            [
                vgcore.models.SSM.from_sizes(3, 2, init="s4d_lin", dt_min=0.05, dt_max=0.5, seed=5),
                vgcore.models.SSM.from_sizes(
                    3, 3, init="s4d_real", dt_min=0.05, dt_max=0.5, seed=6
                ),
            ],
            norm_weights=[np.array([1.2, 0.8, 1.0]), np.array([0.9, 1.1, 1.3])],
            norm_biases=[np.array([0.1, -0.2, 0.0]), np.array([0.0, 0.3, -0.1])],
        ),
        layout=TIME_MAJOR,
        param_grads=False,
        h0=True,
    ),
    Kind(
        "ssm_stack_mixed",
        lambda: vgcore.SSMStack(
            [
                vgcore.models.SelectiveSSM.from_sizes(3, 2, expand=1, d_conv=2, dt_rank=1, seed=7),
                vgcore.models.SSM.from_sizes(3, 2, init="s4d_lin", dt_min=0.05, dt_max=0.5, seed=8),
            ]
        ),
        layout=TIME_MAJOR,
        param_grads=False,
        lyapunov_k=6,
    ),
    Kind(
        "ssm_stack_plain",
        lambda: vgcore.SSMStack.from_sizes(
            3, 2, 2, expand=1, d_conv=3, dt_rank=1, norm=False, residual=False, seed=9
        ),
        layout=TIME_MAJOR,
        param_grads=False,
        lyapunov_k=4,
        h0=True,
    ),
]

DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def cases(analysis: str | None = None) -> list[tuple[Kind, np.dtype]]:
    """Every (kind, dtype) pair, or those to which ``analysis`` applies."""
    return [(k, dt) for k in KINDS for dt in DTYPES if analysis is None or analysis in k.analyses]


def case_id(case: tuple[Kind, np.dtype]) -> str:
    kind, dt = case
    return f"{kind.id}-{'f64' if dt == np.float64 else 'f32'}"
