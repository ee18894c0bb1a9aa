"""Models from PyTorch checkpoints: a ``state_dict`` of a supported architecture.

Supported: a single-layer ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (keys ``weight_ih_l0``, ...,
the cell told apart by the gate count of ``weight_hh_l0``), and an ``nn.Sequential`` of
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
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


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
    """Read a checkpoint with ``torch.load(weights_only=True)`` into numpy arrays."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "reading a PyTorch checkpoint needs torch: pip install 'vgcore[torch]'"
        ) from exc
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(_load_failure(p, exc)) from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{str(p)!r} does not hold a state_dict (a mapping of tensors)")
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "detach"):
            raise CheckpointError(f"state_dict entry {k!r} is not a tensor")
        t = v.detach().cpu()
        if str(t.dtype) in ("torch.float16", "torch.bfloat16"):
            t = t.float()  # exact; numpy has no bfloat16 (one rule for every model kind)
        out[str(k)] = t.numpy()
    return out


def _strip_prefix(keys: list[str], marker: str) -> str:
    k = next(k for k in keys if k.endswith(marker))
    return k[: -len(marker)]


def model_from_state_dict(
    sd: Mapping[str, np.ndarray],
    *,
    activation: str | None = None,
    nonlinearity: str = "tanh",
) -> Any:
    """The vgcore model a state_dict describes (see the module docstring)."""
    from vgcore.models import GRU, LSTM, MLP, RNN

    keys = list(sd)
    if any(k.endswith("weight_hh_l0") for k in keys):
        pre = _strip_prefix(keys, "weight_hh_l0")
        if any(k.endswith("_reverse") for k in keys):
            raise CheckpointError("bidirectional recurrent layers are not supported")
        if f"{pre}weight_hh_l1" in sd:
            raise CheckpointError("stacked recurrent layers (num_layers > 1) are not supported")
        whh = sd[f"{pre}weight_hh_l0"]
        if whh.ndim != 2 or whh.size == 0 or whh.shape[0] % whh.shape[1]:
            raise CheckpointError(f"weight_hh_l0 has shape {whh.shape}, not (G*N, N)")
        gates = whh.shape[0] // whh.shape[1]
        cls = {1: RNN, 3: GRU, 4: LSTM}.get(gates)
        if cls is None:
            raise CheckpointError(
                f"weight_hh_l0 has {gates} gate blocks; expected 1 (RNN), 3 (GRU) or 4 (LSTM)"
            )
        if f"{pre}weight_hr_l0" in sd:
            raise CheckpointError("LSTM with proj_size > 0 is not supported")
        kw: dict[str, Any] = {"nonlinearity": nonlinearity} if cls is RNN else {}
        return cls(
            sd[f"{pre}weight_ih_l0"],
            whh,
            sd.get(f"{pre}bias_ih_l0"),
            sd.get(f"{pre}bias_hh_l0"),
            **kw,
        )
    layers: dict[int, dict[str, np.ndarray]] = {}
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
        layers.setdefault(int(m.group(2)), {})[m.group(3)] = v
    if len(prefixes) > 1:
        raise CheckpointError(
            f"state_dict mixes several modules ({sorted(prefixes)}); save one model"
        )
    if activation is None:
        raise MissingActivationError(
            "a state_dict does not record activations: pass activation= (the hidden layers' "
            "activation, e.g. 'relu'; the last Linear layer is taken as linear)"
        )
    ws: list[np.ndarray] = []
    bs: list[np.ndarray | None] = []
    norms: list[str | None] = []
    nws: list[np.ndarray | None] = []
    nbs: list[np.ndarray | None] = []
    rms: list[np.ndarray | None] = []
    rvs: list[np.ndarray | None] = []
    for idx in sorted(layers):
        p = layers[idx]
        w = p.get("weight")
        if w is not None and w.ndim == 2:
            ws.append(w)
            bs.append(p.get("bias"))
            norms.append(None)
            nws.append(None)
            nbs.append(None)
            rms.append(None)
            rvs.append(None)
        elif (w is not None and w.ndim == 1) or "running_mean" in p:
            if not ws or norms[-1] is not None:
                raise CheckpointError(
                    f"layer {idx} is a normalisation that does not follow a Linear layer"
                )
            norms[-1] = "batchnorm" if "running_mean" in p else "layernorm"
            nws[-1], nbs[-1] = p.get("weight"), p.get("bias")
            # a saved model is analysed as it is used after training: BatchNorm in eval mode
            rms[-1], rvs[-1] = p.get("running_mean"), p.get("running_var")
        else:
            raise CheckpointError(f"layer {idx} is neither a Linear nor a normalisation layer")
    if not ws:
        raise CheckpointError("the state_dict holds no Linear layer")
    acts = [activation] * (len(ws) - 1) + ["identity"]
    dtype = np.float64 if ws[0].dtype == np.float64 else np.float32
    return MLP(
        ws,
        bs,
        acts,
        dtype=dtype,
        norm=norms,
        norm_weights=nws,
        norm_biases=nbs,
        running_means=rms,
        running_vars=rvs,
    )
