"""The tangent map of a recurrent step as one graph of aten operations.

``torch.func.jvp`` under ``vmap`` pays the functorch wrappers on every operation of every
step, and its rules do work that a tangent map does not need (the product of the state with
the weights' zero tangent, copies of the weights expanded over the k tangent vectors). Traced
once with ``make_fx`` (fake tensors: a step whose control flow depends on the values cannot
be traced and keeps the eager path) and functionalised, the step becomes a graph of plain
aten operations; :func:`simplify` then removes what is provably a no-op there (aliases,
copies to the same dtype and shape, expansions to the same shape, zero tangents added or
multiplied), and the graph runs without the per-operation wrappers. The arithmetic is that of
the eager path up to the order of floating-point operations inside a matrix product.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["simplify", "trace_tangent_step"]

aten = torch.ops.aten

_IDENTITY = {
    aten.alias.default,
    aten.alias_copy.default,
    aten.clone.default,
    aten.lift_fresh_copy.default,
}
_VIEWS = {
    aten.expand.default,
    aten.view.default,
    aten.permute.default,
    aten.t.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.squeeze.dim,
    aten.unsqueeze.default,
}
_ZEROS = {aten.zeros.default, aten._efficientzerotensor.default, aten.zeros_like.default}
_COPY_VIEWS = {
    getattr(aten, c).default if o == "default" else getattr(getattr(aten, c), o): getattr(
        getattr(aten, v), o
    )
    for c, v, o in (
        ("permute_copy", "permute", "default"),
        ("view_copy", "view", "default"),
        ("expand_copy", "expand", "default"),
        ("t_copy", "t", "default"),
        ("unsqueeze_copy", "unsqueeze", "default"),
        ("squeeze_copy", "squeeze", "dim"),
        ("transpose_copy", "transpose", "int"),
        ("slice_copy", "slice", "Tensor"),
        ("select_copy", "select", "int"),
        ("split_copy", "split", "Tensor"),
        ("split_with_sizes_copy", "split_with_sizes", "default"),
        ("diagonal_copy", "diagonal", "default"),
    )
    if hasattr(aten, c) and hasattr(aten, v)
}


#: aten overloads with a public function of the same arguments: called directly, they skip
#: the Python layer of ``OpOverload.__call__`` (about 1 us per operation and step).
_PUBLIC = {
    aten.add.Tensor: torch.add,
    aten.sub.Tensor: torch.sub,
    aten.mul.Tensor: torch.mul,
    aten.div.Tensor: torch.div,
    aten.mm.default: torch.mm,
    aten.bmm.default: torch.bmm,
    aten.addmm.default: torch.addmm,
    aten.sigmoid.default: torch.sigmoid,
    aten.tanh.default: torch.tanh,
    aten.exp.default: torch.exp,
    aten.relu.default: torch.relu,
    aten.neg.default: torch.neg,
    aten.where.self: torch.where,
    aten.t.default: torch.t,
    aten.permute.default: torch.permute,
    aten.reshape.default: torch.reshape,
    aten.cat.default: torch.cat,
}


def _val(n: Any) -> Any:
    return n.meta.get("val") if isinstance(n, torch.fx.Node) else None


def _same(a: Any, b: Any) -> bool:
    """Both nodes hold tensors of one shape, dtype and device."""
    va, vb = _val(a), _val(b)
    return (
        isinstance(va, torch.Tensor)
        and isinstance(vb, torch.Tensor)
        and va.shape == vb.shape
        and va.dtype == vb.dtype
        and va.device == vb.device
    )


def simplify(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove no-ops from a functionalised graph (no operation in it mutates a tensor, so a
    copy can be replaced by the value it copies, and a copying view by the view)."""
    g = gm.graph
    zero: set[Any] = set()
    for n in list(g.nodes):
        if n.op != "call_function":
            continue
        f, a = n.target, n.args
        rep = None
        if f in _IDENTITY and len(a) == 1 and not n.kwargs:
            rep = a[0]
        elif f is aten._to_copy.default and _same(a[0], n):
            if set(n.kwargs) <= {"dtype", "layout", "device"}:
                rep = a[0]
        elif f is aten.copy.default and _same(a[1], n) and not n.kwargs:
            rep = a[1]  # copy(dst, src) of a src of dst's shape: src's values
        elif f is aten.expand.default and _same(a[0], n):
            rep = a[0]
        elif f in _COPY_VIEWS:
            n.target = _COPY_VIEWS[f]
        if n.target in (aten.view.default, aten._unsafe_view.default):
            # traced for the example's strides: a reshape holds for any the inputs come with
            n.target = aten.reshape.default
        elif f in _ZEROS:
            zero.add(n)
        elif f in _VIEWS and a and a[0] in zero:
            zero.add(n)
        elif f in (aten.mm.default, aten.bmm.default, aten.mul.Tensor) and len(a) == 2:
            if (a[0] in zero or a[1] in zero) and not n.kwargs:
                zero.add(n)
        elif f in (aten.add.Tensor, aten.sub.Tensor) and len(a) == 2 and not n.kwargs:
            if a[1] in zero and _same(a[0], n):
                rep = a[0]
            elif f is aten.add.Tensor and a[0] in zero and _same(a[1], n):
                rep = a[1]
        if rep is not None:
            n.replace_all_uses_with(rep)
            g.erase_node(n)
    for n in list(g.nodes):  # a zero still in use: a plain zeros tensor of its shape
        v = _val(n)
        if n in zero and n.users and n.target is not aten.zeros.default and v is not None:
            with g.inserting_before(n):
                z = g.call_function(
                    aten.zeros.default, (list(v.shape),), {"dtype": v.dtype, "device": v.device}
                )
            z.meta["val"] = v
            n.replace_all_uses_with(z)
    g.eliminate_dead_code()
    for n in g.nodes:
        if n.op == "call_function" and n.target in _PUBLIC:
            n.target = _PUBLIC[n.target]
    g.lint()
    gm.recompile()
    return gm


def trace_tangent_step(fn: Any, *args: Any) -> torch.fx.GraphModule:
    """``fn(*args)`` (a pure function of tensors, pytrees of them allowed) as a simplified
    graph of aten operations. Raises whatever tracing raises (data-dependent control flow,
    unsupported operations): callers keep the eager function then."""
    from torch.fx.experimental.proxy_tensor import make_fx

    pure = torch.func.functionalize(fn, remove="mutations_and_views")
    with torch.no_grad():
        gm = make_fx(pure, tracing_mode="fake", _allow_non_fake_inputs=True)(*args)
    return simplify(gm)
