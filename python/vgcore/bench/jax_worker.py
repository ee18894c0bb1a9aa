"""JAX peers, run in worker processes: XLA reads its thread flags once, before ``import jax``.

``python -m vgcore.bench.jax_worker --serve THREADS`` reads lines ``IN.npz OUT.npz`` on stdin
and answers ``ok`` (or ``error ...``) on stdout for each. IN holds ``task``, ``repeat``,
``budget_s``, the weights and the inputs; OUT holds ``times`` (seconds per run, after one
untimed compile-and-run) and ``result``. With ``THREADS == 1`` XLA's intra-op pool is disabled
(``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``) and the process pinned to
one CPU with ``sched_setaffinity``; otherwise XLA uses its default pool over ``THREADS`` CPUs.

Tasks (float32 or float64, as the arrays come), each ``jit``-compiled once:
- ``mlp``: per-layer gradient norms ||dL/dh_l|| of a tanh MLP, L = 0.5 ||h_L||^2 (lax.scan over
  the layers, grad with respect to zero perturbations of every h_l).
- ``bptt``: per-step gradient norms ||dL/dh_t||, L = 0.5 ||h_T||^2 (lax.scan, grad with
  respect to zero perturbations of every h_t; an LSTM's c_t is a separate state coordinate).
- ``lyapunov``: top-k exponents (lax.scan, vmap(jvp) on the tangent block, QR inside the scan).
- ``spectrum``: per-step spectral radius and sigma_max (states by lax.scan, every step's Jacobian
  by vmap(jacfwd), batched eigvals and singular values).
- ``singular``: log singular values of d h_L / d h_0 of a tanh MLP (jit(jacrev), then SVD).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def _setup(threads: int) -> None:
    """Before ``import jax``: one thread = XLA's intra-op pool off and pinned to one CPU;
    more = XLA's default pool, sized by the CPUs the process may use (restricted to
    ``threads`` of them when there are more)."""
    if threads == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, set(cpus[:threads]))


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

        def f(s: Any, x: Any) -> Any:
            gi, gh = x @ wih.T + bih, s @ whh.T + bhh
            r = sig(gi[..., :N] + gh[..., :N])
            z = sig(gi[..., N : 2 * N] + gh[..., N : 2 * N])
            n = jnp.tanh(gi[..., 2 * N :] + r * gh[..., 2 * N :])
            return (1 - z) * n + z * s

    else:

        def f(s: Any, x: Any) -> Any:
            return jnp.tanh(x @ wih.T + bih + s @ whh.T + bhh)

    return f


def build(data: dict[str, Any]) -> Any:
    """A no-argument function running the task once (compiled on first call), returning a
    numpy array."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    task = str(data["task"])
    if any(getattr(v, "dtype", None) == np.float64 for v in data.values()):
        jax.config.update("jax_enable_x64", True)

    if task in ("singular", "mlp"):
        Ws, bs = jnp.asarray(data["weights"]), jnp.asarray(data["biases"])
        x0 = jnp.asarray(data["x"])

        if task == "singular":

            def net(h: Any) -> Any:
                def layer(h: Any, wb: Any) -> Any:
                    return jnp.tanh(wb[0] @ h + wb[1]), None

                return jax.lax.scan(layer, h, (Ws, bs))[0]

            jac = jax.jit(jax.jacrev(net))

            def run_sv() -> Any:
                J = np.asarray(jac(x0).block_until_ready(), np.float64)
                with np.errstate(divide="ignore"):
                    return np.log(np.linalg.svd(J, compute_uv=False))

            return run_sv

        def mlp_loss(eps: Any) -> Any:
            def layer(h: Any, inp: Any) -> Any:
                (W, b), e = inp
                return jnp.tanh(h @ W.T + b) + e, None

            hL = jax.lax.scan(layer, x0 + eps[0], ((Ws, bs), eps[1:]))[0]
            return 0.5 * jnp.sum(hL**2)

        @jax.jit
        def mlp_norms() -> Any:
            eps = jnp.zeros((Ws.shape[0] + 1, *x0.shape), x0.dtype)
            g = jax.grad(mlp_loss)(eps)
            return jnp.sqrt(jnp.sum(g**2, axis=(1, 2)))

        return lambda: np.asarray(mlp_norms().block_until_ready())

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

        return lambda: np.asarray(norms().block_until_ready())

    if task == "spectrum":

        @jax.jit
        def spectrum() -> Any:
            def step(s: Any, x: Any) -> Any:
                return f(s, x), s

            states = jax.lax.scan(step, jnp.zeros(D, xs.dtype), xs[:, 0])[1]
            J = jax.vmap(jax.jacfwd(f))(states, xs[:, 0])
            rho = jnp.max(jnp.abs(jnp.linalg.eigvals(J)), axis=-1)
            smax = jnp.linalg.svd(J, compute_uv=False)[:, 0]
            return jnp.stack([rho, smax], axis=1)

        return lambda: np.asarray(spectrum().block_until_ready())

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

        return jax.lax.scan(step, (jnp.zeros(D, xs.dtype), q0), xs[:, 0])[1]

    def run_lyap() -> Any:  # the per-step logs summed in float64, as vgcore and torch do
        logs = np.asarray(lyap().block_until_ready(), np.float64)
        return np.sort(logs.sum(0) / logs.shape[0])[::-1]

    return run_lyap


def _job(src: str, dst: str) -> None:
    import numpy as np

    with np.load(src, allow_pickle=False) as fh:
        data = dict(fh)
    run = build(data)
    out = run()  # compile + first run, untimed
    times: list[float] = []
    for _ in range(max(1, int(data["repeat"]))):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        if sum(times) >= float(data["budget_s"]):
            break
    np.savez(dst, times=np.array(times), result=np.asarray(out, np.float64))


def serve(threads: int) -> None:
    _setup(threads)
    import jax  # noqa: F401  (after the flags)

    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            _job(*parts)
            reply = "ok"
        except Exception as exc:  # reported to the runner, which marks the peer failed
            reply = "error " + f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
        sys.stdout.write(reply + "\n")
        sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m vgcore.bench.jax_worker --serve THREADS")
