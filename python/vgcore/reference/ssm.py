"""Reference state-space layers in PyTorch: a diagonal LTI layer and Mamba's selective block.

Two ``torch.nn.Module`` classes written for clarity, not speed (sequential scans, no fused
kernels), in the layout the papers' code uses, so that other implementations (vgcore's native
layers, a user's fused kernels) can be checked against them:

* :class:`DiagonalSSM`: a diagonal linear time-invariant recurrence (S4D / LRU style),
  ``h_t = a * h_{t-1} + B_bar x_t``, ``y_t = Re(C h_t) + D * x_t``, discretised by zero-order
  hold from continuous parameters ``(A, Delta)``; inits S4D-Lin, S4D-Inv, S4D-Real and
  HiPPO-LegS (Gu, Gupta, Goel & Re 2022).
* :class:`SelectiveSSM`: the selective state-space block of Mamba (Gu & Dao 2023), parameter
  names and shapes of ``mamba_ssm/modules/mamba_simple.py``.

Each has a step form ``step(state, x_t) -> state`` and ``as_cell()``, a
:class:`vgcore.TorchCell` on which :func:`vgcore.lyapunov` and :func:`vgcore.gradient_flow`
run through ``torch.func``.

Complex numbers are stored as pairs of reals: a complex tensor of shape ``s`` is a real tensor
of shape ``(*s, 2)`` holding ``(real, imag)`` on the last axis (``torch.view_as_real``'s
layout, as S4's code stores ``B`` and ``C``). Only :meth:`DiagonalSSM.transition` returns a torch
complex tensor. Real arithmetic keeps ``torch.func`` transforms, float64 oracles and a later
native port on the same footing, and the state a Lyapunov analysis sees is real: a complex
mode is two real coordinates.

References
----------
A. Gu, A. Gupta, K. Goel, C. Re, "On the Parameterization and Initialization of Diagonal State
Space Models", NeurIPS 2022 (S4D), arXiv:2206.11893.
A. Gu, T. Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
arXiv:2312.00752 (2023); reference code github.com/state-spaces/mamba,
``mamba_ssm/modules/mamba_simple.py`` (class ``Mamba``) and
``mamba_ssm/ops/selective_scan_interface.py`` (``selective_scan_ref``).
A. Orvieto et al., "Resurrecting Recurrent Neural Networks for Long Sequences", ICML 2023 (LRU).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# the initialisations of DiagonalSSM's continuous state matrix A: one definition, numpy only
from vgcore.models.ssm import _COMPLEX_INITS, INITS, hippo_legs, s4d_init

__all__ = ["INITS", "DiagonalSSM", "SSMStack", "SelectiveSSM", "hippo_legs", "s4d_init", "zoh"]


def _check_pos_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_pos_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _seeded(seed: int | None) -> Any:
    """A context in which torch's global RNG is seeded, restored afterwards (None: unseeded)."""
    if seed is None:
        return nullcontext()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    ctx = torch.random.fork_rng(devices=[])
    return _SeedCtx(ctx, int(seed))


class _SeedCtx:
    def __init__(self, fork: Any, seed: int) -> None:
        self.fork, self.seed = fork, seed

    def __enter__(self) -> None:
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        self.fork.__exit__(*exc)


# -- initialisations -----------------------------------------------------------------------


# -- zero-order hold -----------------------------------------------------------------------


def zoh(
    A_re: torch.Tensor,
    A_im: torch.Tensor | None,
    dt: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Zero-order hold of the diagonal system ``h' = A h + B u`` over a step ``dt``.

    ``a = exp(dt A)`` and ``B_bar = q B`` with ``q = (exp(dt A) - 1) / A``, per mode. The
    numerator is formed without cancellation, ``exp(z) - 1 = expm1(x) cos y - 2 sin^2(y/2) +
    i exp(x) sin y`` for ``z = x + i y``, so ``q`` keeps full relative precision for small
    ``dt |A|``.

    Parameters
    ----------
    A_re, A_im : tensors of shape (N,)
        Real and imaginary parts of ``A`` (``A_im`` None for a real system); ``A`` must be
        nonzero.
    dt : tensor of shape (N,)
        The step of each mode.

    Returns
    -------
    a_re, a_im, q_re, q_im : tensors of shape (N,)
        ``a`` and ``q`` (imaginary parts None for a real system).
    """
    x = dt * A_re
    if A_im is None:
        return torch.exp(x), None, torch.expm1(x) / A_re, None
    y = dt * A_im
    ex = torch.exp(x)
    a_re, a_im = ex * torch.cos(y), ex * torch.sin(y)
    e_re = torch.expm1(x) * torch.cos(y) - 2.0 * torch.sin(0.5 * y) ** 2
    e_im = a_im
    den = A_re * A_re + A_im * A_im
    # (e_re + i e_im) / (A_re + i A_im)
    q_re = (e_re * A_re + e_im * A_im) / den
    q_im = (e_im * A_re - e_re * A_im) / den
    return a_re, a_im, q_re, q_im


# -- the diagonal LTI layer ----------------------------------------------------------------


class DiagonalSSM(nn.Module):
    """Diagonal linear time-invariant state-space layer (S4D / LRU style), ``(B, T, d) -> (B, T, d)``.

    The continuous system ``h'(t) = A h(t) + B x(t)``, ``y = Re(C h) + D x`` with a diagonal
    ``A`` (N modes) is discretised per mode by zero-order hold with a learnt step ``Delta_n``::

        a = exp(Delta A),   B_bar = (exp(Delta A) - 1) / A * B            (per mode n)
        h_t = a * h_{t-1} + B_bar x_t,     y_t = Re(C h_t) + D * x_t

    A multi-input multi-output layer: one state of N modes shared by the d channels (as in the
    LRU), ``B`` (N, d), ``C`` (d, N), ``D`` (d,) a per-channel skip.

    Parameters
    ----------
    d_model : int
        d, features of the input and of the output.
    state_size : int
        N, the number of diagonal modes (complex modes: the real state has 2N coordinates).
    init : {"s4d_lin", "s4d_inv", "s4d_real", "hippo"}
        The continuous ``A`` (:func:`s4d_init`): S4D-Lin ``-1/2 + i pi n``, S4D-Inv
        ``-1/2 + i (N/pi)(N/(2n+1) - 1)``, S4D-Real ``-(n+1)``, HiPPO-LegS's diagonal form
        (S4D-LegS, :func:`hippo_legs`).
    complex : bool, optional
        Complex modes (default: True for every init except ``"s4d_real"``). ``complex=True``
        with ``"s4d_real"`` starts the learnt imaginary parts at 0; ``complex=False`` with a
        complex init is an error.
    dt_min, dt_max : float
        ``Delta_n = exp(log_dt_n)``, ``log_dt ~ U(log dt_min, log dt_max)`` (S4D's defaults
        1e-3, 1e-1).
    seed : int, optional
        Seeds the initialisation (torch's global RNG is left as it was); None draws from it.
    dtype, device :
        Of the parameters (default: torch's default dtype, the CPU).

    Attributes (parameters)
    -----------------------
    log_A_real : (N,)
        ``Re A = -exp(log_A_real)`` (strictly stable, S4D's parametrisation).
    A_imag : (N,)
        ``Im A`` (complex layers only).
    log_dt : (N,)
        ``log Delta``.
    B : (N, d, 2) complex, (N, d) real
        ``B ~ CN(0, 1/d)`` (real: ``N(0, 1/d)``), the LRU's scaling.
    C : (d, N, 2) complex, (d, N) real
        ``C ~ CN(0, 1/N)`` (real: ``N(0, 1/N)``).
    D : (d,)
        ``D ~ N(0, 1)`` (S4D).

    Notes
    -----
    The inits fix ``A`` and ``Delta``; ``B`` and ``C`` are random for every init. S4D, a
    single-input layer per channel, uses ``B = 1`` (Lin, Inv, Real) or HiPPO's projected ``B``
    (LegS, returned by :func:`hippo_legs`); with d inputs sharing one state those would make
    ``B`` rank one, so the LRU's random ``B`` is used instead.

    The state of the dynamical system (:meth:`step`, :meth:`as_cell`) is ``h``: shape (B, N, 2)
    for a complex layer (real, imaginary), (B, N) for a real one. Its step Jacobian is the
    constant ``diag(a)`` (a 2x2 rotation-scaling block ``|a_n| R(arg a_n)`` per complex mode),
    so its Lyapunov exponents are ``log |a_n|``, each complex mode contributing two equal ones.
    """

    def __init__(
        self,
        d_model: int,
        state_size: int,
        *,
        init: str = "s4d_lin",
        complex: bool | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        seed: int | None = None,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        d = _check_pos_int(d_model, "d_model")
        N = _check_pos_int(state_size, "state_size")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if complex is None:
            complex = init in _COMPLEX_INITS
        elif not isinstance(complex, bool):
            raise TypeError(f"complex must be True, False or None, got {complex!r}")
        elif not complex and init in _COMPLEX_INITS:
            raise ValueError(f"init {init!r} has complex A; complex=False needs init='s4d_real'")
        lo = _check_pos_float(dt_min, "dt_min")
        hi = _check_pos_float(dt_max, "dt_max")
        if lo > hi:
            raise ValueError(f"dt_min must be <= dt_max, got dt_min={lo!r}, dt_max={hi!r}")
        self.d_model, self.state_size, self.init, self.is_complex = d, N, init, complex
        fk = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        A = s4d_init(init, N)
        f64 = torch.float64
        with _seeded(seed):
            u = torch.rand(N, dtype=f64)
            log_dt = math.log(lo) + u * (math.log(hi) - math.log(lo))
            if complex:
                B = torch.randn(N, d, 2, dtype=f64) * math.sqrt(0.5 / d)
                C = torch.randn(d, N, 2, dtype=f64) * math.sqrt(0.5 / N)
            else:
                B = torch.randn(N, d, dtype=f64) * math.sqrt(1.0 / d)
                C = torch.randn(d, N, dtype=f64) * math.sqrt(1.0 / N)
            D = torch.randn(d, dtype=f64)
        self.log_A_real = nn.Parameter(torch.tensor(np.log(-A.real), **fk))
        self.A_imag: nn.Parameter | None = (
            nn.Parameter(torch.tensor(A.imag.copy(), **fk)) if complex else None
        )
        self.log_dt = nn.Parameter(log_dt.to(**fk))
        self.B = nn.Parameter(B.to(**fk))
        self.C = nn.Parameter(C.to(**fk))
        self.D = nn.Parameter(D.to(**fk))

    # -- the discretised system ------------------------------------------------------------
    @property
    def state_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the state ``h``: (N, 2) complex, (N,) real."""
        return (self.state_size, 2) if self.is_complex else (self.state_size,)

    def continuous(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(Re A, Im A, Delta)``, each of shape (N,) (``Im A`` None for a real layer)."""
        return -torch.exp(self.log_A_real), self.A_imag, torch.exp(self.log_dt)

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Zero-order hold: ``(a_re, a_im, B_bar)``.

        Returns
        -------
        a_re, a_im : tensors of shape (N,)
            ``a = exp(Delta A)`` (``a_im`` None for a real layer).
        B_bar : tensor of shape (N, d, 2) complex, (N, d) real
            ``(exp(Delta A) - 1) / A * B``.
        """
        A_re, A_im, dt = self.continuous()
        a_re, a_im, q_re, q_im = zoh(A_re, A_im, dt)
        if q_im is None:
            return a_re, None, q_re[:, None] * self.B
        Br, Bi = self.B[..., 0], self.B[..., 1]
        qr, qi = q_re[:, None], q_im[:, None]
        return a_re, a_im, torch.stack((qr * Br - qi * Bi, qr * Bi + qi * Br), dim=-1)

    def transition(self) -> torch.Tensor:
        """The discretised diagonal ``a = exp(Delta A)``, shape (N,): a torch complex tensor for
        a complex layer, real otherwise (detached)."""
        with torch.no_grad():
            a_re, a_im, _ = self.discretize()
            return a_re.clone() if a_im is None else torch.complex(a_re, a_im)

    def kernel(self, length: int) -> torch.Tensor:
        """The convolution kernel ``K_k = Re(C diag(a^k) B_bar)``, shape (length, d, d):
        ``y_t = sum_{k<=t} K_k x_{t-k} + D * x_t`` from a zero state."""
        L = _check_pos_int(length, "length")
        a_re, a_im, Bb = self.discretize()
        k = torch.arange(L, dtype=a_re.dtype, device=a_re.device)[:, None]
        if a_im is None:
            p = a_re**k  # a > 0, (L, N)
            return torch.einsum("dn,ln,ne->lde", self.C, p, Bb)
        r, th = torch.sqrt(a_re**2 + a_im**2), torch.atan2(a_im, a_re)
        p_re, p_im = r**k * torch.cos(k * th), r**k * torch.sin(k * th)
        # Re(C p B) = Cr (pr Br - pi Bi) - Ci (pr Bi + pi Br)
        Cr, Ci, Br, Bi = self.C[..., 0], self.C[..., 1], Bb[..., 0], Bb[..., 1]
        return (
            torch.einsum("dn,ln,ne->lde", Cr, p_re, Br)
            - torch.einsum("dn,ln,ne->lde", Cr, p_im, Bi)
            - torch.einsum("dn,ln,ne->lde", Ci, p_re, Bi)
            - torch.einsum("dn,ln,ne->lde", Ci, p_im, Br)
        )

    # -- the recurrence --------------------------------------------------------------------
    def _step(self, disc: Any, h: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        a_re, a_im, Bb = disc
        if a_im is None:
            return a_re * h + x_t @ Bb.T
        hr, hi = h[..., 0], h[..., 1]
        ur, ui = x_t @ Bb[..., 0].T, x_t @ Bb[..., 1].T
        return torch.stack((a_re * hr - a_im * hi + ur, a_re * hi + a_im * hr + ui), dim=-1)

    def step(self, h: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """One step ``h_t = a * h_{t-1} + B_bar x_t``.

        Parameters
        ----------
        h : tensor of shape (B, N, 2) complex, (B, N) real
        x_t : tensor of shape (B, d)

        Returns
        -------
        tensor of the shape of ``h``
        """
        return self._step(self.discretize(), h, x_t)

    def output(self, h: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """``y_t = Re(C h_t) + D * x_t``, shape (B, d), from ``h_t`` and ``x_t`` (B, d)."""
        if not self.is_complex:
            return h @ self.C.T + self.D * x_t
        return h[..., 0] @ self.C[..., 0].T - h[..., 1] @ self.C[..., 1].T + self.D * x_t

    def initial_state(self, batch: int) -> torch.Tensor:
        """Zeros of shape ``(batch, *state_shape)`` in the parameters' dtype and device."""
        p = self.log_dt
        return torch.zeros((batch, *self.state_shape), dtype=p.dtype, device=p.device)

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None, *, return_state: bool = False
    ) -> Any:
        """Scan the sequence: ``x`` (B, T, d) -> ``y`` (B, T, d).

        Parameters
        ----------
        x : tensor of shape (B, T, d)
        h0 : tensor of shape (B, *state_shape), optional
            Initial state (zeros).
        return_state : bool
            Also return the final state.

        Returns
        -------
        y : tensor of shape (B, T, d)
        h_T : tensor of shape (B, *state_shape), with ``return_state``
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, T, {self.d_model}), got {tuple(x.shape)}")
        h = self.initial_state(x.shape[0]) if h0 is None else h0
        disc = self.discretize()
        ys = []
        for t in range(x.shape[1]):
            h = self._step(disc, h, x[:, t])
            ys.append(self.output(h, x[:, t]))
        y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape)
        return (y, h) if return_state else y

    def as_cell(self, **kwargs: Any) -> Any:
        """This layer's recurrence as a :class:`vgcore.TorchCell` (state ``h``, see the class
        notes); keyword arguments go to ``TorchCell``."""
        from vgcore.torchmodel.cell import TorchCell

        kwargs.setdefault("name", "DiagonalSSM")
        return TorchCell(
            _DiagonalStep(self),
            state_sizes=torch.Size(self.state_shape),
            input_size=self.d_model,
            **kwargs,
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, state_size={self.state_size}, init={self.init!r}, "
            f"complex={self.is_complex}"
        )


class _DiagonalStep(nn.Module):
    """``forward(h, x_t) = layer.step(h, x_t)``: the module a TorchCell analyses."""

    def __init__(self, layer: DiagonalSSM) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        return self.layer.step(h, x_t)


# -- the selective block -------------------------------------------------------------------


class SelectiveSSM(nn.Module):
    """Mamba's selective state-space block (S6), ``(B, L, d_model) -> (B, L, d_model)``.

    A re-implementation of ``Mamba`` in ``mamba_ssm/modules/mamba_simple.py`` (Gu & Dao 2023)
    with the same parameter names, shapes and initialisation, and the sequential scan of
    ``selective_scan_ref`` instead of the fused kernels. With ``d_inner = expand * d_model``
    and ``dt_rank = ceil(d_model / 16)``::

        x, z    = in_proj(u).chunk(2)                         # (B, L, d_inner) each
        x       = silu(conv1d(x))                             # depthwise, causal, width d_conv
        dt, B, C = split(x_proj(x), [dt_rank, d_state, d_state])
        Delta   = softplus(dt_proj(dt))                       # (B, L, d_inner); bias inside
        A       = -exp(A_log)                                 # (d_inner, d_state)
        h_t     = exp(Delta_t A) * h_{t-1} + (Delta_t x_t) B_t  # (B, d_inner, d_state)
        y_t     = h_t C_t + D * x_t
        out     = out_proj(y * silu(z))

    Parameters (names and shapes as in ``mamba_simple.Mamba``)
    -----------------------------------------------------------
    in_proj : Linear(d_model, 2 d_inner, bias=bias)
    conv1d : Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        weight (d_inner, 1, d_conv), bias (d_inner,).
    x_proj : Linear(d_inner, dt_rank + 2 d_state, bias=False)
    dt_proj : Linear(dt_rank, d_inner, bias=True)
        weight ``U(-s, s)`` (``dt_init="random"``) or ``s`` (``"constant"``) with
        ``s = dt_rank^-1/2 dt_scale``; bias ``softplus^-1(dt)``,
        ``dt = exp(U(log dt_min, log dt_max))`` clamped below at ``dt_init_floor``.
    A_log : (d_inner, d_state)
        ``log(1 .. d_state)`` in every row (S4D-Real).
    D : (d_inner,)
        Ones.
    out_proj : Linear(d_inner, d_model, bias=bias)

    Other arguments: ``d_state=16``, ``d_conv=4``, ``expand=2``, ``dt_rank="auto"``,
    ``dt_min=1e-3``, ``dt_max=0.1``, ``dt_init="random"``, ``dt_scale=1``,
    ``dt_init_floor=1e-4``, ``conv_bias=True``, ``bias=False`` (Mamba's defaults); ``seed``
    seeds the initialisation (torch's global RNG is left as it was), ``dtype`` / ``device``.

    Notes
    -----
    The state of the dynamical system (:meth:`step`, :meth:`as_cell`) is the pair
    ``(h, conv)``: the SSM state ``h`` (B, d_inner, d_state) and the causal convolution's
    buffer ``conv`` (B, d_inner, d_conv - 1), the last ``d_conv - 1`` inputs of the convolution
    (the ``x`` half of ``in_proj``'s output), oldest first. Mamba's own ``step`` keeps
    ``d_conv`` columns and shifts the oldest out before using it; that column is not state.
    The step Jacobian is block triangular: ``dh_t/dh_{t-1} = diag(exp(Delta_t A))`` (the
    selection reads the input, not ``h``), ``dconv_t/dconv_{t-1}`` is a shift (nilpotent) and
    ``dconv/dh = 0``. The top ``d_inner * d_state`` Lyapunov exponents are therefore the time
    averages of ``Delta_{t,i} A_{i,n}``, and the rest are ``-inf``: ask for
    ``k <= d_inner * d_state``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        *,
        seed: int | None = None,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        self.d_model = _check_pos_int(d_model, "d_model")
        self.d_state = _check_pos_int(d_state, "d_state")
        self.d_conv = _check_pos_int(d_conv, "d_conv")
        if self.d_conv < 2:
            raise ValueError(f"d_conv must be >= 2 (a causal convolution with state), got {d_conv}")
        expand = _check_pos_float(expand, "expand")
        self.expand = expand
        self.d_inner = int(expand * self.d_model)
        if self.d_inner < 1:
            raise ValueError(f"expand * d_model must be >= 1, got {expand} * {d_model}")
        if dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        else:
            self.dt_rank = _check_pos_int(dt_rank, "dt_rank")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        lo = _check_pos_float(dt_min, "dt_min")
        hi = _check_pos_float(dt_max, "dt_max")
        if lo > hi:
            raise ValueError(f"dt_min must be <= dt_max, got dt_min={lo!r}, dt_max={hi!r}")
        floor = _check_pos_float(dt_init_floor, "dt_init_floor")
        scale = _check_pos_float(dt_scale, "dt_scale")
        fk = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        di, n = self.d_inner, self.d_state
        with _seeded(seed):
            self.in_proj = nn.Linear(self.d_model, 2 * di, bias=bias, **fk)
            self.conv1d = nn.Conv1d(
                di, di, kernel_size=self.d_conv, groups=di, padding=self.d_conv - 1,
                bias=conv_bias, **fk,
            )  # fmt: skip
            self.x_proj = nn.Linear(di, self.dt_rank + 2 * n, bias=False, **fk)
            self.dt_proj = nn.Linear(self.dt_rank, di, bias=True, **fk)
            std = self.dt_rank**-0.5 * scale
            with torch.no_grad():
                if dt_init == "constant":
                    nn.init.constant_(self.dt_proj.weight, std)
                else:
                    nn.init.uniform_(self.dt_proj.weight, -std, std)
                dt = torch.exp(
                    torch.rand(di, dtype=torch.float64) * (math.log(hi) - math.log(lo))
                    + math.log(lo)
                ).clamp(min=floor)
                inv_dt = dt + torch.log(-torch.expm1(-dt))  # softplus^-1
                self.dt_proj.bias.copy_(inv_dt)
            A = torch.arange(1, n + 1, dtype=torch.float64).repeat(di, 1)
            self.A_log = nn.Parameter(torch.log(A).to(**fk))
            self.D = nn.Parameter(torch.ones(di, **fk))
            self.out_proj = nn.Linear(di, self.d_model, bias=bias, **fk)

    # -- pieces ----------------------------------------------------------------------------
    @property
    def state_shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Per-sample shapes of ``(h, conv)``: ``(d_inner, d_state)``, ``(d_inner, d_conv-1)``."""
        return (self.d_inner, self.d_state), (self.d_inner, self.d_conv - 1)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeros ``(h, conv)`` for ``batch`` samples."""
        p = self.A_log
        return tuple(  # type: ignore[return-value]
            torch.zeros((batch, *s), dtype=p.dtype, device=p.device) for s in self.state_shapes
        )

    def _select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(Delta, B, C)`` from the convolved input ``x`` (..., d_inner)."""
        dt, Bm, Cm = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt)), Bm, Cm

    def _conv_seq(self, x: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
        """Causal depthwise convolution of ``x`` (B, L, d_inner) after the buffer
        (B, d_inner, d_conv - 1); returns (B, L, d_inner) before the activation."""
        xp = torch.cat((buf, x.transpose(1, 2)), dim=-1)
        w, b = self.conv1d.weight, self.conv1d.bias
        return F.conv1d(xp, w, b, groups=self.d_inner).transpose(1, 2)

    def selection(
        self, u: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The input-dependent quantities over a sequence ``u`` (B, L, d_model).

        Returns
        -------
        dict
            ``x`` (B, L, d_inner) after the convolution and silu, ``z`` (B, L, d_inner),
            ``delta`` (B, L, d_inner), ``B`` and ``C`` (B, L, d_state), ``A`` (d_inner,
            d_state), ``a`` = ``exp(delta A)`` (B, L, d_inner, d_state).
        """
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"u must have shape (B, L, {self.d_model}), got {tuple(u.shape)}")
        buf = self.initial_state(u.shape[0])[1] if state is None else state[1]
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(self._conv_seq(x, buf))
        delta, Bm, Cm = self._select(x)
        A = -torch.exp(self.A_log)
        a = torch.exp(delta[..., None] * A)
        return {"x": x, "z": z, "delta": delta, "B": Bm, "C": Cm, "A": A, "a": a}

    def forward(
        self,
        u: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        return_state: bool = False,
    ) -> Any:
        """The block over a sequence: ``u`` (B, L, d_model) -> (B, L, d_model).

        Parameters
        ----------
        u : tensor of shape (B, L, d_model)
        state : pair of tensors ``(h, conv)``, optional
            Initial state (zeros, as Mamba's zero-padded convolution).
        return_state : bool
            Also return the final ``(h, conv)``.
        """
        s = self.selection(u, state)
        B_, L = u.shape[0], u.shape[1]
        h, buf = self.initial_state(B_) if state is None else state
        x, delta, Bm, Cm, a = s["x"], s["delta"], s["B"], s["C"], s["a"]
        ys = []
        for t in range(L):
            h = a[:, t] * h + (delta[:, t] * x[:, t])[..., None] * Bm[:, t, None, :]
            ys.append((h * Cm[:, t, None, :]).sum(-1) + self.D * x[:, t])
        y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape)
        out = self.out_proj(y * F.silu(s["z"]))
        if not return_state:
            return out
        if state is None:
            state = self.initial_state(B_)
        xin = self.in_proj(u).chunk(2, dim=-1)[0].transpose(1, 2)
        buf = torch.cat((state[1], xin), dim=-1)[..., -(self.d_conv - 1) :]
        return out, (h, buf)

    def step_output(
        self, state: tuple[torch.Tensor, torch.Tensor], u_t: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """One step of the block (``Mamba.step``): ``((h, conv), u_t) -> ((h', conv'), out_t)``.

        Parameters
        ----------
        state : pair ``(h, conv)`` of shapes (B, d_inner, d_state), (B, d_inner, d_conv - 1)
        u_t : tensor of shape (B, d_model)

        Returns
        -------
        (h', conv'), out_t (B, d_model)
        """
        h, buf = state
        x, z = self.in_proj(u_t).chunk(2, dim=-1)
        window = torch.cat((buf, x[..., None]), dim=-1)  # (B, d_inner, d_conv)
        xc = (window * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias
        xc = F.silu(xc)
        delta, Bm, Cm = self._select(xc)
        A = -torch.exp(self.A_log)
        h = torch.exp(delta[..., None] * A) * h + (delta * xc)[..., None] * Bm[:, None, :]
        y = (h * Cm[:, None, :]).sum(-1) + self.D * xc
        out = self.out_proj(y * F.silu(z))
        return (h, window[..., 1:]), out

    def step(
        self, state: tuple[torch.Tensor, torch.Tensor], u_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The state update of :meth:`step_output`: ``((h, conv), u_t) -> (h', conv')``."""
        return self.step_output(state, u_t)[0]

    def as_cell(self, **kwargs: Any) -> Any:
        """This block's recurrence as a :class:`vgcore.TorchCell` with the state ``(h, conv)``
        (see the class notes); keyword arguments go to ``TorchCell``."""
        from vgcore.torchmodel.cell import TorchCell

        kwargs.setdefault("name", "SelectiveSSM")
        return TorchCell(
            _SelectiveStep(self),
            state_sizes=list(self.state_shapes),
            state_names=("h", "conv"),
            input_size=self.d_model,
            **kwargs,
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"expand={self.expand}, d_inner={self.d_inner}, dt_rank={self.dt_rank}"
        )


class _SelectiveStep(nn.Module):
    """``forward((h, conv), u_t) = block.step((h, conv), u_t)``: the module a TorchCell analyses."""

    def __init__(self, block: SelectiveSSM) -> None:
        super().__init__()
        self.block = block

    def forward(
        self, state: tuple[torch.Tensor, torch.Tensor], u_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.block.step(state, u_t)


# -- stacks of blocks --------------------------------------------------------------------------


class SSMStack(nn.Module):
    """State-space layers stacked over depth, each block ``u <- u + layer(LayerNorm(u))``
    (Mamba's ``Block``: pre-norm and residual; either can be switched off), all running over
    time: ``x`` (B, T, d) -> (B, T, d).

    Parameters
    ----------
    layers : sequence of DiagonalSSM or SelectiveSSM
        The blocks' layers, all with ``d_model`` features.
    norm : bool
        A ``LayerNorm(d_model, eps)`` on each block's input.
    residual : bool
        ``u + layer(.)`` (else the layer's output replaces the stream).
    eps : float

    Notes
    -----
    The step form works on flat state rows: a block's state flattened (a DiagonalSSM's ``h``;
    a SelectiveSSM's ``h`` then its convolution buffer), the blocks' side by side, bottom first:
    what :class:`vgcore.SSMStack` calls its state.
    """

    def __init__(
        self,
        layers: Any,
        *,
        norm: bool = True,
        residual: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        layers = list(layers)
        if not layers or not all(isinstance(m, (DiagonalSSM, SelectiveSSM)) for m in layers):
            raise TypeError("layers must be a non-empty sequence of DiagonalSSM / SelectiveSSM")
        d = layers[0].d_model
        if any(m.d_model != d for m in layers):
            raise ValueError(f"every layer must have d_model = {d}")
        self.d_model = d
        self.layers = nn.ModuleList(layers)
        p = next(layers[0].parameters())
        self.norms: nn.ModuleList | None = (
            nn.ModuleList(nn.LayerNorm(d, eps=eps, dtype=p.dtype, device=p.device) for _ in layers)
            if norm
            else None
        )
        self.residual = bool(residual)

    @staticmethod
    def _shapes(layer: Any) -> list[tuple[int, ...]]:
        if isinstance(layer, DiagonalSSM):
            return [tuple(layer.state_shape)]
        return [tuple(s) for s in layer.state_shapes]

    @property
    def state_dim(self) -> int:
        """Coordinates of the flat state: the blocks' states side by side."""
        return sum(math.prod(s) for m in self.layers for s in self._shapes(m))

    def initial_state(self, batch: int) -> torch.Tensor:
        """Zeros of shape ``(batch, state_dim)``."""
        p = next(self.parameters())
        return torch.zeros((batch, self.state_dim), dtype=p.dtype, device=p.device)

    def step_output(self, state: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """One step: ``(state (B, D), x_t (B, d)) -> (state' (B, D), out_t (B, d))``."""
        B = state.shape[0]
        u, i = x_t, 0
        new: list[torch.Tensor] = []
        layers: list[Any] = list(self.layers)
        for l, layer in enumerate(layers):
            parts = []
            for s in self._shapes(layer):
                n = math.prod(s)
                parts.append(state[:, i : i + n].reshape(B, *s))
                i += n
            v = u if self.norms is None else self.norms[l](u)
            if isinstance(layer, DiagonalSSM):
                h = layer.step(parts[0], v)
                y, hs = layer.output(h, v), (h,)
            else:
                hs, y = layer.step_output((parts[0], parts[1]), v)
            new.extend(h.reshape(B, -1) for h in hs)
            u = u + y if self.residual else y
        return torch.cat(new, dim=1), u

    def step(self, state: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The state update of :meth:`step_output`."""
        return self.step_output(state, x_t)[0]

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, *, return_state: bool = False
    ) -> Any:
        """Scan ``x`` (B, T, d) -> ``y`` (B, T, d) (and the final state (B, D))."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, T, {self.d_model}), got {tuple(x.shape)}")
        s = self.initial_state(x.shape[0]) if state is None else state
        ys = []
        for t in range(x.shape[1]):
            s, y = self.step_output(s, x[:, t])
            ys.append(y)
        y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape)
        return (y, s) if return_state else y

    def extra_repr(self) -> str:
        return f"norm={self.norms is not None}, residual={self.residual}"
