"""JAX peers, run in a subprocess: XLA reads its thread flags once, before ``import jax``.

Usage: ``python -m vgcore.bench.jax_worker IN.npz OUT.npz`` where IN holds ``task``,
``threads``, ``repeat``, the weights and the inputs. OUT holds ``times`` (seconds per run,
after one untimed compile-and-run) and ``result``. With ``threads == 1`` XLA's intra-op pool is
disabled and the process pinned to one CPU (JAX otherwise ignores thread settings).

Tasks (float32 or float64, as the arrays come):
- ``bptt``: per-step gradient norms ||dL/dh_t||, L = 0.5 ||h_T||^2 (jit, lax.scan, grad with
  respect to zero perturbations of every h_t; an LSTM's c_t is a separate state coordinate).
- ``lyapunov``: top-k exponents (jit, lax.scan, vmap(jvp) on the tangent block, QR per step).
- ``singular``: log singular values of d h_L / d h_0 of a tanh MLP (jit(jacrev), then SVD).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def _setup(threads: int) -> None:
    if threads == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _cell(jax: Any, jnp: Any, kind: str, wih: Any, whh: Any, bih: Any, bhh: Any, N: int) -> Any:
    sig = jax.nn.sigmoid
    if kind == "lstm":

        def f(s: Any, x: Any) -> Any:
            h, c = s[..., :N], s[..., N:]
            g = x @ wih.T + bih + h @ whh.T + bhh
            i, fg, gg, o = jnp.split(g, 4, axis=-1)
            c2 = sig(fg) * c + sig(i) * jnp.tanh(gg)
            return jnp.concatenate([sig(o) * jnp.tanh(c2), c2], axis=-1)

    elif kind == "gru":

        def f(h: Any, x: Any) -> Any:
            gi, gh = x @ wih.T + bih, h @ whh.T + bhh
            r = sig(gi[..., :N] + gh[..., :N])
            z = sig(gi[..., N : 2 * N] + gh[..., N : 2 * N])
            n = jnp.tanh(gi[..., 2 * N :] + r * gh[..., 2 * N :])
            return (1 - z) * n + z * h

    else:

        def f(h: Any, x: Any) -> Any:
            return jnp.tanh(x @ wih.T + bih + h @ whh.T + bhh)

    return f


def _build(data: dict[str, Any]) -> Any:
    import jax
    import jax.numpy as jnp

    task = str(data["task"])
    if task == "singular":
        Ws, bs = jnp.asarray(data["weights"]), jnp.asarray(data["biases"])

        def net(h: Any) -> Any:
            def layer(h: Any, wb: Any) -> Any:
                return jnp.tanh(wb[0] @ h + wb[1]), None

            return jax.lax.scan(layer, h, (Ws, bs))[0]

        jac = jax.jit(jax.jacrev(net))
        x0 = jnp.asarray(data["x"])

        def run() -> Any:
            J = jac(x0).block_until_ready()
            import numpy as np

            return np.log(np.linalg.svd(np.asarray(J, np.float64), compute_uv=False))

        return run

    kind = str(data["kind"])
    wih, whh = jnp.asarray(data["weight_ih"]), jnp.asarray(data["weight_hh"])
    bih, bhh = jnp.asarray(data["bias_ih"]), jnp.asarray(data["bias_hh"])
    N = whh.shape[1]
    f = _cell(jax, jnp, kind, wih, whh, bih, bhh, N)
    xs = jnp.asarray(data["x"])  # (T, B, I)
    D = 2 * N if kind == "lstm" else N

    if task == "bptt":
        B = xs.shape[1]

        def loss(eps: Any) -> Any:
            def step(s: Any, inp: Any) -> Any:
                x, e = inp
                s = s.at[:, :N].add(e) if kind == "lstm" else s + e
                return f(s, x), None

            sT = jax.lax.scan(step, jnp.zeros((B, D), xs.dtype), (xs, eps))[0]
            return 0.5 * jnp.sum(sT[:, :N] ** 2), sT[:, :N]

        @jax.jit
        def norms() -> Any:
            eps = jnp.zeros((xs.shape[0], B, N), xs.dtype)
            g, hT = jax.grad(loss, has_aux=True)(eps)
            per = jnp.sqrt(jnp.sum(g**2, axis=(1, 2)))
            return jnp.concatenate([per, jnp.sqrt(jnp.sum(hT**2))[None]])

        return lambda: norms().block_until_ready()

    q0 = jnp.asarray(data["q0"])  # (D, k) orthonormal

    @jax.jit
    def lyap() -> Any:
        def step(carry: Any, x: Any) -> Any:
            s, Q = carry
            s2, JQ = jax.vmap(
                lambda v: jax.jvp(lambda z: f(z, x), (s,), (v,)), in_axes=1, out_axes=(None, 1)
            )(Q)
            Qn, R = jnp.linalg.qr(JQ)
            return (s2, Qn), jnp.log(jnp.abs(jnp.diag(R)))

        logs = jax.lax.scan(step, (jnp.zeros(D, xs.dtype), q0), xs[:, 0])[1]
        return logs.sum(0) / xs.shape[0]

    return lambda: lyap().block_until_ready()


def main(argv: list[str]) -> None:
    import numpy as np

    data = dict(np.load(argv[0], allow_pickle=False))
    _setup(int(data["threads"]))
    if data["x"].dtype == np.float64:
        os.environ["JAX_ENABLE_X64"] = "1"
    run = _build(data)
    out = run()  # compile + first run, untimed
    times = []
    for _ in range(int(data["repeat"])):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    np.savez(argv[1], times=np.array(times), result=np.asarray(out, np.float64))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
