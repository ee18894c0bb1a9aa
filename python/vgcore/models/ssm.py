"""State-space layers: a diagonal linear time-invariant layer (S4D / LRU style) and Mamba's
selective layer (S6), with the parameters of the reference modules in
:mod:`vgcore.reference.ssm` (``DiagonalSSM``; ``SelectiveSSM``, the names and shapes of
``mamba_ssm/modules/mamba_simple.py``).

Both are time-axis models driven by ``x`` of shape ``(T, B, input_size)``. What the analyses
see as the state, and what the layer outputs:

* :class:`SSM`: the state is ``h`` (N real modes, or 2N coordinates for N complex modes:
  ``(Re h_n, Im h_n)`` side by side); the output is ``y_t = Re(C h_t) + D x_t``.
* :class:`SelectiveSSM`: the state is ``(h, conv)`` flattened, ``h`` row-major
  ``(d_inner, d_state)`` then the causal convolution's buffer ``(d_inner, d_conv - 1)``; the
  output is the block's ``out_proj((C_t h_t + D xc_t) * silu(z_t))``, ``(d_model,)``.

References
----------
A. Gu, A. Gupta, K. Goel, C. Re, "On the Parameterization and Initialization of Diagonal State
Space Models", NeurIPS 2022 (S4D), arXiv:2206.11893.
A. Gu, T. Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
arXiv:2312.00752 (2023).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from vgcore._validation import as_float_array, check_positive_int
from vgcore.models.base import Model, _infer_dtype, _rng, _torch_to_numpy
from vgcore.models.registry import register_model_kind

__all__ = ["INITS", "SSM", "SelectiveSSM", "hippo_legs", "s4d_init"]

#: Initialisations of :class:`SSM`'s continuous diagonal ``A`` (as the reference module's).
INITS = ("s4d_lin", "s4d_inv", "s4d_real", "hippo")
_COMPLEX_INITS = ("s4d_lin", "s4d_inv", "hippo")


def _check_pos_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def hippo_legs(state_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The diagonal (S4D-LegS) form of HiPPO-LegS with ``state_size`` complex modes.

    HiPPO-LegS of size ``M = 2 * state_size`` is ``A_nk = -sqrt(2n+1) sqrt(2k+1)`` for
    ``n > k``, ``-(n+1)`` for ``n = k``, 0 above the diagonal, ``B_n = sqrt(2n+1)``. With
    ``P_n = sqrt(n + 1/2)``, ``A + P P^T = -I/2 + S`` where ``S`` is skew-symmetric (its normal
    part, Gu et al. 2022, section 4); ``S = V diag(i w) V^*``. S4D-LegS keeps the ``M / 2``
    eigenvalues with ``w > 0`` (the others are their conjugates).

    Parameters
    ----------
    state_size : int
        N, the number of complex modes kept.

    Returns
    -------
    A : ndarray of complex128, shape (N,)
        ``-1/2 + i w_n``, ``w_n > 0`` ascending.
    B : ndarray of complex128, shape (N,)
        ``(V^* B_LegS)_n`` for the kept modes.
    """
    N = check_positive_int(state_size, "state_size")
    M = 2 * N
    s = np.sqrt(2.0 * np.arange(M) + 1.0)
    n = np.arange(M)
    S = -0.5 * np.outer(s, s) * np.sign(n[:, None] - n[None, :])
    w, V = np.linalg.eigh(-1j * S)  # -iS is Hermitian: S = V diag(i w) V^*
    keep = np.argsort(w)[N:]  # the N largest, all > 0 (conjugate pairs +-w)
    Bt = V.conj().T @ s
    return (-0.5 + 1j * w[keep]).astype(np.complex128), Bt[keep].astype(np.complex128)


def s4d_init(init: str, state_size: int) -> np.ndarray:
    """Continuous diagonal ``A`` of the S4D initialisations (Gu et al. 2022, section 4).

    With ``n = 0 .. N-1``: ``"s4d_lin"`` ``-1/2 + i pi n``; ``"s4d_inv"``
    ``-1/2 + i (N/pi)(N/(2n+1) - 1)``; ``"s4d_real"`` ``-(n+1)``; ``"hippo"`` the eigenvalues
    with positive imaginary part of HiPPO-LegS's normal part (S4D-LegS, :func:`hippo_legs`).

    Parameters
    ----------
    init : {"s4d_lin", "s4d_inv", "s4d_real", "hippo"}
    state_size : int
        N.

    Returns
    -------
    ndarray of complex128, shape (N,)
    """
    N = check_positive_int(state_size, "state_size")
    n = np.arange(N, dtype=np.float64)
    if init == "s4d_lin":
        return -0.5 + 1j * math.pi * n
    if init == "s4d_inv":
        return -0.5 + 1j * (N / math.pi) * (N / (2.0 * n + 1.0) - 1.0)
    if init == "s4d_real":
        return -(n + 1.0) + 0j
    if init == "hippo":
        return hippo_legs(N)[0]
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


def _zoh(A: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a = exp(dt A)`` and ``q = (exp(dt A) - 1) / A`` per mode (complex128), the numerator
    formed without cancellation: ``expm1(x) cos y - 2 sin^2(y/2) + i exp(x) sin y``."""
    x, y = dt * A.real, dt * A.imag
    ex = np.exp(x)
    a = ex * np.cos(y) + 1j * ex * np.sin(y)
    e = np.expm1(x) * np.cos(y) - 2.0 * np.sin(0.5 * y) ** 2 + 1j * ex * np.sin(y)
    return a, e / A


class SSM(Model):
    """Diagonal linear time-invariant state-space layer (S4D / LRU style).

    The continuous system ``h' = A h + B x``, ``y = Re(C h) + D x`` with diagonal ``A`` (N
    modes), discretised per mode by zero-order hold with a step ``Delta_n``::

        a = exp(Delta A),   B_bar = (exp(Delta A) - 1) / A * B
        h_t = a * h_{t-1} + B_bar x_t,     y_t = Re(C h_t) + D * x_t

    Parameters (those of :class:`vgcore.reference.ssm.DiagonalSSM`)
    ----------------------------------------------------------------
    log_A_real : array_like of shape (N,)
        ``Re A = -exp(log_A_real)``.
    log_dt : array_like of shape (N,)
        ``log Delta``.
    B : array_like of shape (N, d, 2) complex (real, imag), (N, d) real
    C : array_like of shape (d, N, 2) complex, (d, N) real
    D : array_like of shape (d,), optional
        The skip (zeros when None).
    A_imag : array_like of shape (N,), optional
        ``Im A``: given for a complex layer, None for a real one.
    init : str, optional
        The name of the initialisation, kept for :meth:`to_torch` and reprs.
    dtype : float32 or float64, optional

    Notes
    -----
    The state a Jacobian analysis sees is ``h``: N coordinates (real), or 2N for N complex
    modes, ``(Re h_n, Im h_n)`` side by side (the reference module's ``(N, 2)`` flattened).
    The step Jacobian is the constant block diagonal ``diag(a)`` (a 2x2 rotation-scaling per
    complex mode), so the Lyapunov exponents are ``log|a_n|``, twice for a complex mode.
    """

    kind: ClassVar[str] = "ssm"
    axis: ClassVar[str] = "time"
    state_names: ClassVar[tuple[str, ...]] = ("h",)
    batch_first = False

    def __init__(
        self,
        log_A_real: Any,
        log_dt: Any,
        B: Any,
        C: Any,
        D: Any | None = None,
        *,
        A_imag: Any | None = None,
        init: str | None = None,
        dtype: object = None,
    ) -> None:
        self.dtype = _infer_dtype([log_A_real, log_dt, B, C], dtype)
        dt = self.dtype
        self.log_A_real = as_float_array(log_A_real, "log_A_real", dt, ndim=1)
        N = self.log_A_real.shape[0]
        if N < 1:
            raise ValueError("log_A_real must have at least one mode, got shape (0,)")
        self.log_dt = as_float_array(log_dt, "log_dt", dt, shape=(N,))
        self.A_imag = None if A_imag is None else as_float_array(A_imag, "A_imag", dt, shape=(N,))
        cplx = self.A_imag is not None
        self.B = as_float_array(
            B, "B", dt, ndim=3 if cplx else 2, shape=(N, None, 2)[: 3 if cplx else 2]
        )
        d = self.B.shape[1]
        if d < 1:
            raise ValueError(f"B must have at least one input column, got shape {self.B.shape}")
        self.C = as_float_array(C, "C", dt, shape=(d, N, 2)[: 3 if cplx else 2])
        self.D = None if D is None else as_float_array(D, "D", dt, shape=(d,))
        if init is not None and init not in INITS:
            raise ValueError(f"init must be one of {INITS} or None, got {init!r}")
        self.init = init

    # -- sizes -----------------------------------------------------------------------------
    @property
    def is_complex(self) -> bool:
        """Whether the modes are complex (``A_imag`` given)."""
        return self.A_imag is not None

    @property
    def state_size(self) -> int:
        """N, the number of modes."""
        return int(self.log_A_real.shape[0])

    @property
    def input_size(self) -> int:
        return int(self.B.shape[1])

    @property
    def state_dim(self) -> int:
        """Real coordinates of the state: N, or 2N for complex modes."""
        return self.state_size * (2 if self.is_complex else 1)

    hidden_size = state_dim
    num_directions = 1

    @property
    def num_layers(self) -> int:
        return 1

    def step_jacobian_dims(self) -> list[int]:
        return [self.state_dim]

    def describe(self) -> str:
        kind = "complex" if self.is_complex else "real"
        init = f" init={self.init}" if self.init else ""
        return f"SSM N={self.state_size} ({kind}) d={self.input_size}{init}"

    def flat_spec(self) -> dict[str, Any]:
        return {"model": self.kind, "input_size": self.input_size, "state_size": self.state_size}

    # -- the discretised system ------------------------------------------------------------
    def _continuous(self) -> tuple[np.ndarray, np.ndarray]:
        """``(A, Delta)`` in complex128 / float64."""
        Ar = -np.exp(self.log_A_real.astype(np.float64))
        Ai = np.zeros_like(Ar) if self.A_imag is None else self.A_imag.astype(np.float64)
        return Ar + 1j * Ai, np.exp(self.log_dt.astype(np.float64))

    def transition(self) -> np.ndarray:
        """The discretised diagonal ``a = exp(Delta A)``.

        Returns
        -------
        ndarray of shape (N,)
            complex128 for a complex layer, float64 for a real one.
        """
        A, dt = self._continuous()
        a = _zoh(A, dt)[0]
        return a if self.is_complex else a.real.copy()

    def _spec_of(self, params: Any) -> dict[str, Any]:
        log_A_real, log_dt, B, C, D, A_imag = params
        dtype = log_A_real.dtype
        Ar = -np.exp(log_A_real.astype(np.float64))
        A = Ar + 1j * (0.0 if A_imag is None else A_imag.astype(np.float64))
        a, q = _zoh(A, np.exp(log_dt.astype(np.float64)))
        B64, C64 = B.astype(np.float64), C.astype(np.float64)
        if A_imag is None:
            av, Bb, Ce = a.real, q.real[:, None] * B64, C64
        else:
            N, d = B.shape[0], B.shape[1]
            Bc = (q[:, None] * (B64[..., 0] + 1j * B64[..., 1])).reshape(N, d)
            av = np.stack((a.real, a.imag), axis=-1).reshape(-1)
            Bb = np.stack((Bc.real, Bc.imag), axis=1).reshape(2 * N, d)
            # y = Re(C h) = C_re h_re - C_im h_im
            Ce = np.stack((C64[..., 0], -C64[..., 1]), axis=-1).reshape(d, 2 * N)
        return {
            "kind": self.kind,
            "complex": A_imag is not None,
            "a": np.ascontiguousarray(av, dtype=dtype),
            "B": np.ascontiguousarray(Bb, dtype=dtype),
            "C": np.ascontiguousarray(Ce, dtype=dtype),
            "D": None if D is None else np.ascontiguousarray(D, dtype=dtype),
        }

    # -- parameters ------------------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        """Parameters by the reference module's names (state_dict order)."""
        out = {"log_A_real": self.log_A_real}
        if self.A_imag is not None:
            out["A_imag"] = self.A_imag
        out.update({"log_dt": self.log_dt, "B": self.B, "C": self.C})
        if self.D is not None:
            out["D"] = self.D
        return out

    def _named_arrays(self) -> list[tuple[str, np.ndarray]]:
        return list(self.parameters().items())

    def _own_params(self) -> Any:
        return self.log_A_real, self.log_dt, self.B, self.C, self.D, self.A_imag

    def _rebuild(self, dtype: np.dtype, *, copy: bool) -> SSM:
        def cast(a: Any) -> Any:
            return a if (a is None or not copy) else np.asarray(a).astype(dtype)

        out = SSM(
            cast(self.log_A_real),
            cast(self.log_dt),
            cast(self.B),
            cast(self.C),
            cast(self.D),
            A_imag=cast(self.A_imag),
            init=self.init,
            dtype=dtype,
        )
        out.notes = self.notes
        return out

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_sizes(
        cls,
        input_size: int,
        state_size: int,
        *,
        init: str = "s4d_lin",
        complex: bool | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        seed: int | np.random.Generator | None = 0,
        dtype: object = np.float64,
    ) -> SSM:
        """A seeded layer with the S4D initialisations (the reference module's distributions).

        Parameters
        ----------
        input_size : int
            d, features of ``x_t`` (and of ``y_t``).
        state_size : int
            N, the number of modes.
        init : {"s4d_lin", "s4d_inv", "s4d_real", "hippo"}
            The continuous ``A`` (:func:`s4d_init`).
        complex : bool, optional
            Complex modes (default: every init except ``"s4d_real"``); ``False`` with a
            complex init is an error.
        dt_min, dt_max : float
            ``log Delta ~ U(log dt_min, log dt_max)``.
        seed : int, Generator or None
        dtype : float32 or float64

        Notes
        -----
        ``B ~ CN(0, 1/d)``, ``C ~ CN(0, 1/N)`` (real: ``N(0, 1/d)``, ``N(0, 1/N)``), ``D ~
        N(0, 1)``, drawn from numpy's generator (the same distributions as the reference
        module, not the same numbers).
        """
        d = check_positive_int(input_size, "input_size")
        N = check_positive_int(state_size, "state_size")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if complex is None:
            complex = init in _COMPLEX_INITS
        elif not isinstance(complex, bool):
            raise TypeError(f"complex must be True, False or None, got {complex!r}")
        elif not complex and init in _COMPLEX_INITS:
            raise ValueError(f"init {init!r} has complex A; complex=False needs init='s4d_real'")
        lo, hi = _check_pos_float(dt_min, "dt_min"), _check_pos_float(dt_max, "dt_max")
        if lo > hi:
            raise ValueError(f"dt_min must be <= dt_max, got dt_min={lo!r}, dt_max={hi!r}")
        rng = _rng(seed)
        A = s4d_init(init, N)
        log_dt = math.log(lo) + rng.random(N) * (math.log(hi) - math.log(lo))
        if complex:
            B = rng.standard_normal((N, d, 2)) * math.sqrt(0.5 / d)
            C = rng.standard_normal((d, N, 2)) * math.sqrt(0.5 / N)
        else:
            B = rng.standard_normal((N, d)) * math.sqrt(1.0 / d)
            C = rng.standard_normal((d, N)) * math.sqrt(1.0 / N)
        D = rng.standard_normal(d)
        return cls(
            np.log(-A.real),
            log_dt,
            B,
            C,
            D,
            A_imag=A.imag.copy() if complex else None,
            init=init,
            dtype=dtype,
        )

    @classmethod
    def from_torch(cls, module: Any, *, dtype: object = None) -> SSM:
        """Import a :class:`vgcore.reference.ssm.DiagonalSSM` (its parameters are copied; the
        module is left unchanged)."""
        from vgcore.reference.ssm import DiagonalSSM

        if not isinstance(module, DiagonalSSM):
            raise TypeError(
                f"module must be a vgcore.reference.ssm.DiagonalSSM, got {type(module).__name__}"
            )

        def get(name: str) -> np.ndarray:
            return _torch_to_numpy(getattr(module, name), f"module.{name}")

        return cls(
            get("log_A_real"),
            get("log_dt"),
            get("B"),
            get("C"),
            get("D"),
            A_imag=None if module.A_imag is None else get("A_imag"),
            init=module.init,
            dtype=dtype,
        )

    def to_torch(self) -> Any:
        """A :class:`vgcore.reference.ssm.DiagonalSSM` with these parameters (the model's
        dtype)."""
        import torch

        from vgcore.reference.ssm import DiagonalSSM

        tdtype = torch.float32 if self.dtype == np.float32 else torch.float64
        mod = DiagonalSSM(
            self.input_size,
            self.state_size,
            init=self.init or ("s4d_lin" if self.is_complex else "s4d_real"),
            complex=self.is_complex,
            seed=0,
            dtype=tdtype,
        )
        with torch.no_grad():
            for name, arr in self.parameters().items():
                getattr(mod, name).copy_(torch.from_numpy(np.asarray(arr)))
            if self.D is None:
                mod.D.zero_()
        return mod

    def __repr__(self) -> str:
        return (
            f"SSM(input_size={self.input_size}, state_size={self.state_size}, "
            f"complex={self.is_complex}, init={self.init!r}, dtype={self.dtype.name})"
        )


#: SelectiveSSM's parameters: (constructor argument, reference module's name).
_SEL_NAMES = (
    ("in_proj_weight", "in_proj.weight"),
    ("in_proj_bias", "in_proj.bias"),
    ("conv_weight", "conv1d.weight"),
    ("conv_bias", "conv1d.bias"),
    ("x_proj_weight", "x_proj.weight"),
    ("dt_proj_weight", "dt_proj.weight"),
    ("dt_proj_bias", "dt_proj.bias"),
    ("A_log", "A_log"),
    ("D", "D"),
    ("out_proj_weight", "out_proj.weight"),
    ("out_proj_bias", "out_proj.bias"),
)
_SEL_OPTIONAL = frozenset({"in_proj_bias", "conv_bias", "D", "out_proj_bias"})


class SelectiveSSM(Model):
    """Mamba's selective state-space block (S6), ``u_t`` (d_model) -> ``out_t`` (d_model).

    With ``d_inner = expand * d_model`` and the parameters of ``mamba_simple.Mamba`` (names
    and shapes of :class:`vgcore.reference.ssm.SelectiveSSM`)::

        x, z      = in_proj(u_t)                        # (d_inner,) each
        xc        = silu(conv1d([conv buffer, x]))      # causal depthwise, width d_conv
        dt, B, C  = split(x_proj(xc), [dt_rank, d_state, d_state])
        Delta     = softplus(dt_proj(dt))               # bias inside
        h_t       = exp(Delta A) * h_{t-1} + (Delta xc) B,    A = -exp(A_log)
        out_t     = out_proj((h_t C + D xc) * silu(z))

    Parameters
    ----------
    in_proj_weight : array_like of shape (2 d_inner, d_model)
    conv_weight : array_like of shape (d_inner, 1, d_conv)
        ``conv1d.weight``.
    x_proj_weight : array_like of shape (dt_rank + 2 d_state, d_inner)
    dt_proj_weight : array_like of shape (d_inner, dt_rank)
    dt_proj_bias : array_like of shape (d_inner,)
    A_log : array_like of shape (d_inner, d_state)
    out_proj_weight : array_like of shape (d_model, d_inner)
    D : array_like of shape (d_inner,), optional
    in_proj_bias, conv_bias, out_proj_bias : array_like, optional
        Shapes (2 d_inner,), (d_inner,), (d_model,).
    dtype : float32 or float64, optional

    Notes
    -----
    The state a Jacobian analysis sees is ``(h, conv)`` flattened: ``h`` row-major
    ``(d_inner, d_state)`` then the convolution's buffer ``(d_inner, d_conv - 1)`` (oldest
    first), ``state_dim = d_inner (d_state + d_conv - 1)``. The step Jacobian is ``diag(a_t)``
    on ``h``, plus a part of rank at most ``dt_rank + d_state`` through the selection (which
    reads the buffer), plus a nilpotent shift on the buffer: the top ``d_inner * d_state``
    Lyapunov exponents are the time averages of ``Delta_t A``, the others ``-inf``.
    """

    kind: ClassVar[str] = "selective_ssm"
    axis: ClassVar[str] = "time"
    state_names: ClassVar[tuple[str, ...]] = ("h",)
    batch_first = False

    def __init__(
        self,
        in_proj_weight: Any,
        conv_weight: Any,
        x_proj_weight: Any,
        dt_proj_weight: Any,
        dt_proj_bias: Any,
        A_log: Any,
        out_proj_weight: Any,
        *,
        D: Any | None = None,
        in_proj_bias: Any | None = None,
        conv_bias: Any | None = None,
        out_proj_bias: Any | None = None,
        dtype: object = None,
    ) -> None:
        self.dtype = dt = _infer_dtype([in_proj_weight, A_log, x_proj_weight], dtype)
        self.A_log = as_float_array(A_log, "A_log", dt, ndim=2)
        di, n = self.A_log.shape
        if di < 1 or n < 1:
            raise ValueError(f"A_log must have shape (d_inner, d_state), got {self.A_log.shape}")
        self.in_proj_weight = as_float_array(
            in_proj_weight, "in_proj_weight", dt, shape=(2 * di, None)
        )
        dm = self.in_proj_weight.shape[1]
        if dm < 1:
            raise ValueError(f"in_proj_weight must have d_model >= 1 columns, got {dm}")
        self.conv_weight = as_float_array(conv_weight, "conv_weight", dt, shape=(di, 1, None))
        if self.conv_weight.shape[2] < 2:
            raise ValueError(
                f"conv_weight must have shape (d_inner, 1, d_conv) with d_conv >= 2, "
                f"got {self.conv_weight.shape}"
            )
        self.dt_proj_weight = as_float_array(dt_proj_weight, "dt_proj_weight", dt, shape=(di, None))
        R = self.dt_proj_weight.shape[1]
        if R < 1:
            raise ValueError(f"dt_proj_weight must have dt_rank >= 1 columns, got {R}")
        self.dt_proj_bias = as_float_array(dt_proj_bias, "dt_proj_bias", dt, shape=(di,))
        self.x_proj_weight = as_float_array(
            x_proj_weight, "x_proj_weight", dt, shape=(R + 2 * n, di)
        )
        self.out_proj_weight = as_float_array(
            out_proj_weight, "out_proj_weight", dt, shape=(dm, di)
        )

        def opt(v: Any, name: str, size: int) -> np.ndarray | None:
            return None if v is None else as_float_array(v, name, dt, shape=(size,))

        self.D = opt(D, "D", di)
        self.in_proj_bias = opt(in_proj_bias, "in_proj_bias", 2 * di)
        self.conv_bias = opt(conv_bias, "conv_bias", di)
        self.out_proj_bias = opt(out_proj_bias, "out_proj_bias", dm)

    # -- sizes -----------------------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return int(self.in_proj_weight.shape[1])

    @property
    def d_inner(self) -> int:
        return int(self.A_log.shape[0])

    @property
    def d_state(self) -> int:
        return int(self.A_log.shape[1])

    @property
    def d_conv(self) -> int:
        return int(self.conv_weight.shape[2])

    @property
    def dt_rank(self) -> int:
        return int(self.dt_proj_weight.shape[1])

    @property
    def input_size(self) -> int:
        return self.d_model

    @property
    def state_dim(self) -> int:
        """``d_inner * (d_state + d_conv - 1)``: ``h`` and the convolution's buffer."""
        return self.d_inner * (self.d_state + self.d_conv - 1)

    hidden_size = state_dim
    num_directions = 1

    @property
    def num_layers(self) -> int:
        return 1

    def step_jacobian_dims(self) -> list[int]:
        return [self.state_dim]

    def describe(self) -> str:
        return (
            f"SelectiveSSM d_model={self.d_model} d_inner={self.d_inner} "
            f"d_state={self.d_state} d_conv={self.d_conv} dt_rank={self.dt_rank}"
        )

    def flat_spec(self) -> dict[str, Any]:
        return {
            "model": self.kind,
            "input_size": self.d_model,
            "state_size": self.d_state,
            "expand": self.d_inner / self.d_model,
        }

    # -- parameters ------------------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        """Parameters by the reference module's (Mamba's) names, e.g. ``in_proj.weight``."""
        out = {}
        for arg, name in _SEL_NAMES:
            v = getattr(self, arg)
            if v is not None:
                out[name] = v
        return out

    def _named_arrays(self) -> list[tuple[str, np.ndarray]]:
        return [
            (arg, getattr(self, arg)) for arg, _ in _SEL_NAMES if getattr(self, arg) is not None
        ]

    def _own_params(self) -> Any:
        return {arg: getattr(self, arg) for arg, _ in _SEL_NAMES}

    def _rebuild(self, dtype: np.dtype, *, copy: bool) -> SelectiveSSM:
        def cast(a: Any) -> Any:
            return a if (a is None or not copy) else np.asarray(a).astype(dtype)

        kw = {arg: cast(getattr(self, arg)) for arg, _ in _SEL_NAMES}
        out = SelectiveSSM(**kw, dtype=dtype)
        out.notes = self.notes
        return out

    def _spec_of(self, params: Any) -> dict[str, Any]:
        p = dict(params)
        dtype = p["A_log"].dtype
        A = -np.exp(p.pop("A_log").astype(np.float64))
        p["A"] = np.ascontiguousarray(A, dtype=dtype)
        p["conv_weight"] = np.ascontiguousarray(p["conv_weight"][:, 0, :])
        return {"kind": self.kind, **p}

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_sizes(
        cls,
        d_model: int,
        state_size: int = 16,
        *,
        expand: float = 2,
        d_conv: int = 4,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        seed: int | np.random.Generator | None = 0,
        dtype: object = np.float64,
    ) -> SelectiveSSM:
        """A seeded block with Mamba's initialisation (``mamba_simple.Mamba``'s defaults).

        Parameters
        ----------
        d_model : int
        state_size : int
            ``d_state`` (16).
        expand : float
            ``d_inner = int(expand * d_model)``.
        d_conv : int
            Width of the causal convolution (>= 2).
        dt_rank : int or "auto"
            ``ceil(d_model / 16)`` for "auto".
        dt_min, dt_max, dt_init_floor : float
            ``Delta = exp(U(log dt_min, log dt_max))`` clamped below at ``dt_init_floor``;
            ``dt_proj.bias = softplus^-1(Delta)``.
        conv_bias, bias : bool
            Bias of the convolution; of ``in_proj`` and ``out_proj``.
        seed : int, Generator or None
        dtype : float32 or float64

        Notes
        -----
        Linear and convolution weights ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (PyTorch's
        default), ``dt_proj.weight ~ U(-dt_rank^-1/2, dt_rank^-1/2)``, ``A_log = log(1 ..
        d_state)`` in every row (S4D-Real), ``D = 1``; drawn from numpy's generator.
        """
        dm = check_positive_int(d_model, "d_model")
        n = check_positive_int(state_size, "state_size")
        dc = check_positive_int(d_conv, "d_conv", minimum=2)
        di = int(_check_pos_float(expand, "expand") * dm)
        if di < 1:
            raise ValueError(f"expand * d_model must be >= 1, got {expand} * {dm}")
        if isinstance(dt_rank, str):
            if dt_rank != "auto":
                raise ValueError(f"dt_rank must be a positive integer or 'auto', got {dt_rank!r}")
            R = math.ceil(dm / 16)
        else:
            R = check_positive_int(dt_rank, "dt_rank")
        lo, hi = _check_pos_float(dt_min, "dt_min"), _check_pos_float(dt_max, "dt_max")
        if lo > hi:
            raise ValueError(f"dt_min must be <= dt_max, got dt_min={lo!r}, dt_max={hi!r}")
        floor = _check_pos_float(dt_init_floor, "dt_init_floor")
        rng = _rng(seed)

        def uni(shape: tuple[int, ...], bound: float) -> np.ndarray:
            return rng.uniform(-bound, bound, shape)

        in_w = uni((2 * di, dm), dm**-0.5)
        in_b = uni((2 * di,), dm**-0.5) if bias else None
        conv_w = uni((di, 1, dc), dc**-0.5)
        conv_b = uni((di,), dc**-0.5) if conv_bias else None
        x_w = uni((R + 2 * n, di), di**-0.5)
        dt_w = uni((di, R), R**-0.5)
        dt = np.maximum(
            np.exp(rng.random(di) * (math.log(hi) - math.log(lo)) + math.log(lo)), floor
        )
        dt_b = dt + np.log(-np.expm1(-dt))  # softplus^-1
        A_log = np.log(np.tile(np.arange(1, n + 1, dtype=np.float64), (di, 1)))
        out_w = uni((dm, di), di**-0.5)
        out_b = uni((dm,), di**-0.5) if bias else None
        return cls(
            in_w,
            conv_w,
            x_w,
            dt_w,
            dt_b,
            A_log,
            out_w,
            D=np.ones(di),
            in_proj_bias=in_b,
            conv_bias=conv_b,
            out_proj_bias=out_b,
            dtype=dtype,
        )

    @classmethod
    def from_torch(cls, module: Any, *, dtype: object = None) -> SelectiveSSM:
        """Import a :class:`vgcore.reference.ssm.SelectiveSSM` (its parameters are copied; the
        module is left unchanged)."""
        from vgcore.reference.ssm import SelectiveSSM as Ref

        if not isinstance(module, Ref):
            raise TypeError(
                f"module must be a vgcore.reference.ssm.SelectiveSSM, got {type(module).__name__}"
            )
        named = dict(module.named_parameters())
        kw = {
            arg: (_torch_to_numpy(named[name], f"module.{name}") if name in named else None)
            for arg, name in _SEL_NAMES
        }
        return cls(**kw, dtype=dtype)

    def to_torch(self) -> Any:
        """A :class:`vgcore.reference.ssm.SelectiveSSM` with these parameters (the model's
        dtype)."""
        import torch

        from vgcore.reference.ssm import SelectiveSSM as Ref

        tdtype = torch.float32 if self.dtype == np.float32 else torch.float64
        bias = self.in_proj_bias is not None or self.out_proj_bias is not None
        mod = Ref(
            self.d_model,
            d_state=self.d_state,
            d_conv=self.d_conv,
            expand=self.d_inner / self.d_model,
            dt_rank=self.dt_rank,
            conv_bias=self.conv_bias is not None,
            bias=bias,
            seed=0,
            dtype=tdtype,
        )
        if mod.d_inner != self.d_inner:  # int(expand * d_model) rounded differently
            raise ValueError(
                f"d_inner = {self.d_inner} is not int(expand * d_model) for any expand the "
                f"reference module takes (d_model = {self.d_model})"
            )
        named = dict(mod.named_parameters())
        with torch.no_grad():
            for p in mod.parameters():
                p.zero_()  # a missing bias of a pair, a missing D
            for name, arr in self.parameters().items():
                named[name].copy_(torch.from_numpy(np.asarray(arr)))
        return mod

    def __repr__(self) -> str:
        return (
            f"SelectiveSSM(d_model={self.d_model}, d_state={self.d_state}, "
            f"d_inner={self.d_inner}, d_conv={self.d_conv}, dt_rank={self.dt_rank}, "
            f"dtype={self.dtype.name})"
        )


register_model_kind(
    SSM, torch_classes=("DiagonalSSM",), description="diagonal linear state-space layer (S4D)"
)
register_model_kind(
    SelectiveSSM,
    torch_classes=("SelectiveSSM",),
    description="Mamba's selective state-space block (S6)",
)
