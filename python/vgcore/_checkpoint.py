"""Models from PyTorch checkpoints: a ``state_dict`` of a supported architecture.

Supported: ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` with any ``num_layers``, bidirectional or not,
with or without biases (keys ``weight_ih_l0``, ..., ``weight_hh_l1_reverse``, the cell told apart
by the gate count of ``weight_hh_l0``; LSTM ``proj_size > 0`` is refused), and an ``nn.Sequential`` of
``nn.Linear`` layers, optionally each followed by ``nn.LayerNorm`` / ``nn.BatchNorm1d`` (keys
``0.weight``, ``0.bias``, ``1.weight``, ..., with any common prefix). A state_dict records no
activations: the caller names the hidden layers' activation; the last Linear is linear.
Checkpoints that wrap the state_dict under ``"state_dict"``, ``"model_state_dict"`` or
``"model"`` are unwrapped. BatchNorm layers are analysed as a trained model is used: in eval
mode, with their running statistics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CheckpointError",
    "MissingActivationError",
    "load_state_dict",
    "model_from_state_dict",
]


class CheckpointError(ValueError):
    """The file is not a state_dict of a supported architecture."""


class MissingActivationError(CheckpointError):
    """An MLP state_dict was given without the activation it does not record."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"unsupported (?:global: )?GLOBAL ([\w.]+)", re.IGNORECASE)


def _load_failure(path: Path, exc: BaseException) -> str:
    """One clean line saying why ``torch.load(weights_only=True)`` refused ``path``."""
    text = " ".join(_ANSI.sub("", str(exc)).split())
    m = _GLOBAL.search(text)
    if m is None:
        # not a pickling refusal: torch's own words, whole (they are short for damaged files)
        why = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return (
            f"cannot read {str(path)!r} as a PyTorch checkpoint ({why}); expected a file "
            "written by torch.save(module.state_dict(), path)"
        )
    glob = m.group(1)
    cls = glob.rsplit(".", 1)[-1]
    if glob.startswith("torch.nn.modules."):
        vg = cls if cls in ("RNN", "LSTM", "GRU") else "MLP"
        return (
            f"{str(path)!r} holds a whole pickled module ({glob}), saved with "
            "torch.save(module), not a state_dict; vgcore reads checkpoints with "
            "torch.load(weights_only=True), which refuses to run the code such a file needs. "
            f"Save the weights instead: torch.save(module.state_dict(), {str(path)!r}), "
            f"or pass the module from Python: vgcore.{vg}.from_torch(module)"
        )
    return (
        f"{str(path)!r} holds a pickled Python object ({glob}): a whole module saved with "
        "torch.save(module), or objects other than tensors; vgcore reads checkpoints with "
        "torch.load(weights_only=True), which refuses to run the code such objects need. "
        "Save the weights only: torch.save(module.state_dict(), path)"
    )


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a checkpoint's state_dict into numpy arrays.

    A file in PyTorch's zip format that holds only tensors and plain Python values is read
    without importing torch (seconds of start-up), by an unpickler that admits the same
    objects as ``torch.load(weights_only=True)`` for such files: tensors, ordered dicts and
    plain values. Anything else (legacy or big-endian files, other objects) goes to
    ``torch.load(weights_only=True)``, which reads it or says why not.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    try:
        obj = _read_without_torch(p)
    except Exception:  # not a file this reader knows: torch decides
        obj = _read_with_torch(p)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{str(p)!r} does not hold a state_dict (a mapping of tensors)")
    out = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            arr = v
        elif hasattr(v, "detach"):
            t = v.detach().cpu()
            if str(t.dtype) == "torch.bfloat16":
                t = t.float()  # exact; numpy has no bfloat16
            arr = t.numpy()
        else:
            raise CheckpointError(f"state_dict entry {k!r} is not a tensor")
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)  # exact (one rule for every model kind)
        out[str(k)] = arr
    return out


def _read_with_torch(p: Path) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"reading {str(p)!r} needs torch (it is not a plain state_dict in PyTorch's zip "
            "format): pip install 'vgcore[torch]'"
        ) from exc
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(_load_failure(p, exc)) from exc


class _Unsupported(Exception):
    """Something the torch-free reader does not handle (torch.load then decides)."""


class _StorageType:
    """Stands for ``torch.FloatStorage`` etc. in the unpickled data: the element type."""

    def __init__(self, dtype: str, bfloat16: bool = False) -> None:
        self.dtype = np.dtype(dtype)
        self.bfloat16 = bfloat16


_STORAGES = {
    "DoubleStorage": _StorageType("<f8"),
    "FloatStorage": _StorageType("<f4"),
    "HalfStorage": _StorageType("<f2"),
    "BFloat16Storage": _StorageType("<u2", bfloat16=True),
    "LongStorage": _StorageType("<i8"),
    "IntStorage": _StorageType("<i4"),
    "ShortStorage": _StorageType("<i2"),
    "CharStorage": _StorageType("i1"),
    "ByteStorage": _StorageType("u1"),
    "BoolStorage": _StorageType("?"),
}


def _rebuild_tensor(
    storage: tuple[_StorageType, np.ndarray], offset: int, size: Any, stride: Any, *_: Any
) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` for numpy: a strided copy out of the storage."""
    st, flat = storage
    size, stride = tuple(size), tuple(stride)
    ints = (offset, *size, *stride)
    if len(size) != len(stride) or not all(type(i) is int and i >= 0 for i in ints):
        raise _Unsupported("unexpected tensor layout")
    if 0 in size:
        out = np.empty(size, dtype=flat.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise _Unsupported("tensor beyond its storage")
        out = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride]
        ).copy()
    if st.bfloat16:  # the top half of a float32
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _read_without_torch(p: Path) -> Any:
    """The object in a PyTorch zip checkpoint of tensors and plain values (else _Unsupported)."""
    import collections
    import io
    import pickle
    import zipfile

    def rebuild_parameter(data: Any, *_: Any) -> Any:
        return data

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        **{("torch", name): st for name, st in _STORAGES.items()},
    }
    with zipfile.ZipFile(p) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise _Unsupported("no single data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() != b"little":
            raise _Unsupported("big-endian")
        storages: dict[str, tuple[_StorageType, np.ndarray]] = {}

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                try:
                    return allowed[module, name]
                except KeyError:
                    raise _Unsupported(f"{module}.{name}") from None

            def persistent_load(self, pid: Any) -> Any:
                ok = isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                if not ok or not isinstance(pid[1], _StorageType):
                    raise _Unsupported("unknown persistent id")
                _, st, key, _location, numel = pid
                if key not in storages:
                    flat = np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=st.dtype)
                    if flat.size < numel:
                        raise _Unsupported("short storage")
                    storages[key] = (st, flat)
                return storages[key]

        return Unpickler(io.BytesIO(zf.read(pkl[0]))).load()


def _strip_prefix(keys: list[str], marker: str) -> str:
    k = next(k for k in keys if k.endswith(marker))
    return k[: -len(marker)]


_RECURRENT_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_RECURRENT_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def _recurrent_from_state_dict(sd: Mapping[str, np.ndarray], pre: str, nonlinearity: str) -> Any:
    """An RNN / LSTM / GRU from the keys ``{pre}weight_ih_l{k}[_reverse]`` etc."""
    from vgcore.models import GRU, LSTM, RNN

    found: dict[tuple[str, int, int], np.ndarray] = {}
    for k, v in sd.items():
        m = _RECURRENT_KEY.match(k[len(pre) :]) if k.startswith(pre) else None
        if m is not None:
            found[m.group(1), int(m.group(2)), int(m.group(3) is not None)] = v
    if any(kind == "weight_hr" for kind, _, _ in found):
        raise CheckpointError(
            "LSTM with proj_size > 0 (weight_hr_l0) is not supported; vgcore reads nn.RNN / "
            "nn.LSTM / nn.GRU state_dicts with any num_layers, bidirectional and bias"
        )
    L = 1 + max(layer for _, layer, _ in found)
    D = 2 if any(d for _, _, d in found) else 1

    def name(kind: str, layer: int, d: int) -> str:
        return f"{pre}{kind}_l{layer}" + ("_reverse" if d else "")

    ks = [(layer, d) for layer in range(L) for d in range(D)]
    has_bias = any(kind.startswith("bias") for kind, _, _ in found)
    kinds = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if has_bias else ())
    missing = [name(kind, *k) for k in ks for kind in kinds if (kind, *k) not in found]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise CheckpointError(
            f"recurrent state_dict of {L} layer(s){' x 2 directions' if D == 2 else ''} "
            f"lacks {shown}"
        )
    whh = found["weight_hh", 0, 0]
    if whh.ndim != 2 or whh.size == 0 or whh.shape[0] % whh.shape[1]:
        raise CheckpointError(f"weight_hh_l0 has shape {whh.shape}, not (G*N, N)")
    gates = whh.shape[0] // whh.shape[1]
    cls = {1: RNN, 3: GRU, 4: LSTM}.get(gates)
    if cls is None:
        raise CheckpointError(
            f"weight_hh_l0 has {gates} gate blocks; expected 1 (RNN), 3 (GRU) or 4 (LSTM)"
        )
    kw: dict[str, Any] = {"nonlinearity": nonlinearity} if cls is RNN else {}
    lists = {kind: [found[(kind, *k)] for k in ks] for kind in kinds}
    if L == 1 and D == 1:
        return cls(*(lists[kind][0] if kind in lists else None for kind in _RECURRENT_KINDS), **kw)
    return cls(
        *(lists.get(kind) for kind in _RECURRENT_KINDS), num_layers=L, bidirectional=D == 2, **kw
    )


def model_from_state_dict(
    sd: Mapping[str, np.ndarray],
    *,
    activation: str | None = None,
    nonlinearity: str = "tanh",
) -> Any:
    """The vgcore model a state_dict describes (see the module docstring)."""
    from vgcore.models import MLP
    from vgcore.models.mlp import _LayerLists

    keys = list(sd)
    if any(k.endswith("weight_hh_l0") for k in keys):
        return _recurrent_from_state_dict(sd, _strip_prefix(keys, "weight_hh_l0"), nonlinearity)
    layers_by_index: dict[int, dict[str, np.ndarray]] = {}
    pat = re.compile(r"^(.*?)(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
    prefixes = set()
    for k, v in sd.items():
        m = pat.match(k)
        if m is None:
            raise CheckpointError(
                f"unsupported state_dict key {k!r}; expected an nn.Sequential of Linear / "
                "LayerNorm / BatchNorm1d layers or a single nn.RNN / nn.LSTM / nn.GRU"
            )
        prefixes.add(m.group(1))
        layers_by_index.setdefault(int(m.group(2)), {})[m.group(3)] = v
    if len(prefixes) > 1:
        raise CheckpointError(
            f"state_dict mixes several modules ({sorted(prefixes)}); save one model"
        )
    if activation is None:
        raise MissingActivationError(
            "a state_dict does not record activations: pass activation= (the hidden layers' "
            "activation, e.g. 'relu'; the last Linear layer is taken as linear)"
        )
    layers = _LayerLists()
    for idx in sorted(layers_by_index):
        p = layers_by_index[idx]
        w = p.get("weight")
        if w is not None and w.ndim == 2:
            layers.add_linear(w, p.get("bias"))
        elif (w is not None and w.ndim == 1) or "running_mean" in p:
            if not layers.can_normalise():
                raise CheckpointError(
                    f"layer {idx} is a normalisation that does not follow a Linear layer"
                )
            # a saved model is analysed as it is used after training: BatchNorm in eval mode
            layers.set_norm(
                "batchnorm" if "running_mean" in p else "layernorm",
                p.get("weight"),
                p.get("bias"),
                p.get("running_mean"),
                p.get("running_var"),
            )
        else:
            raise CheckpointError(f"layer {idx} is neither a Linear nor a normalisation layer")
    ws = layers.weights
    if not ws:
        raise CheckpointError("the state_dict holds no Linear layer")
    acts = [activation] * (len(ws) - 1) + ["identity"]
    dtype = np.float64 if ws[0].dtype == np.float64 else np.float32
    return MLP(ws, layers.biases, acts, dtype=dtype, **layers.norm_kwargs())
