"""A training comparison that shows vanishing gradients as they appear in practice: a deep
sigmoid MLP trained with SGD on scikit-learn's digits (8x8 images, 10 classes) plateaus, its
early layers barely move and its gradient norms shrink layer by layer. ReLU + He init,
BatchNorm and residual connections recover; Adam keeps the early layers moving (update ratios
many decades above SGD's) but, with gradients below its ``eps`` (1e-8), only starts to leave
the plateau in a short run. Used by ``examples/watch_digits.py`` and ``vgcore demo``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["RECIPES", "digits_data", "make_mlp", "train_comparison"]

#: label -> (activation, init, optimizer, norm, residual)
RECIPES: dict[str, tuple[str, str, str, bool, bool]] = {
    "sigmoid + SGD": ("sigmoid", "default", "sgd", False, False),
    "ReLU + He init": ("relu", "kaiming", "sgd", False, False),
    "sigmoid + Adam": ("sigmoid", "default", "adam", False, False),
    "sigmoid + BatchNorm": ("sigmoid", "default", "sgd", True, False),
    "sigmoid + residual": ("sigmoid", "default", "sgd", False, True),
}


def digits_data(seed: int = 0) -> tuple[Any, Any, Any, Any, str]:
    """scikit-learn's digits as float32 tensors ``(x_train, y_train, x_test, y_test, name)``,
    pixels scaled to [0, 1] and centred; 1437 / 360 samples. Without scikit-learn, a
    synthetic 64-feature, 10-class task of the same size (the name says which)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    try:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32) / 16.0
        y = torch.tensor(d.target, dtype=torch.int64)
        name = "scikit-learn digits"
    except ImportError:
        teacher = torch.randn(64, 10, generator=g)
        x = torch.rand(1797, 64, generator=g)
        y = ((x - 0.5) @ teacher).argmax(1)
        name = "synthetic digits-sized task (scikit-learn not installed)"
    x = x - x.mean(0)
    perm = torch.randperm(len(x), generator=g)
    cut = int(0.8 * len(x))
    tr, te = perm[:cut], perm[cut:]
    return x[tr], y[tr], x[te], y[te], name


def make_mlp(
    depth: int = 10,
    width: int = 64,
    activation: str = "sigmoid",
    init: str = "default",
    norm: bool = False,
    residual: bool = False,
    seed: int = 0,
) -> Any:
    """``depth`` hidden blocks (Linear [-> BatchNorm] -> activation, optionally
    ``h + f(h)``) on 64 inputs and a 10-way head: an ``nn.Sequential`` whose children are
    the blocks."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[activation]

    class Residual(nn.Module):
        def __init__(self, body: nn.Module) -> None:
            super().__init__()
            self.body = body

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h + self.body(h)

    blocks: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(64 if i == 0 else width, width)
        if init == "kaiming":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        parts: list[nn.Module] = [lin]
        if norm:
            parts.append(nn.BatchNorm1d(width))
        parts.append(act())
        body = nn.Sequential(*parts)
        blocks.append(Residual(body) if residual and i > 0 else body)
    blocks.append(nn.Linear(width, 10))
    return nn.Sequential(*blocks)


def train_comparison(
    steps: int = 300,
    *,
    recipes: Sequence[str] | None = None,
    depth: int = 10,
    batch: int = 128,
    every: int = 5,
    lr_sgd: float = 0.5,
    lr_adam: float = 3e-3,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, float], str]:
    """Train each recipe for ``steps`` SGD / Adam steps, watched by :func:`vgcore.watch`.

    Returns
    -------
    (watches, test_accuracy, data_name) : dict label -> closed Watch, dict label -> accuracy
    """
    import torch

    xtr, ytr, xte, yte, name = digits_data(seed)
    labels = list(recipes) if recipes is not None else list(RECIPES)
    unknown = [r for r in labels if r not in RECIPES]
    if unknown:
        raise ValueError(f"recipes: unknown {unknown}; known: {list(RECIPES)}")
    watches: dict[str, Any] = {}
    acc: dict[str, float] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64-unit layers: one thread is fastest (restored below)
    try:
        for label in labels:
            watches[label], acc[label] = _train_one(
                label, steps, depth, batch, every, lr_sgd, lr_adam, seed, xtr, ytr, xte, yte
            )
    finally:
        torch.set_num_threads(threads)
    return watches, acc, name


def _train_one(
    label: str,
    steps: int,
    depth: int,
    batch: int,
    every: int,
    lr_sgd: float,
    lr_adam: float,
    seed: int,
    xtr: Any,
    ytr: Any,
    xte: Any,
    yte: Any,
) -> tuple[Any, float]:
    import torch
    from torch import nn

    from vgcore.watch import watch

    act, init, opt_name, norm, residual = RECIPES[label]
    model = make_mlp(depth, 64, act, init, norm, residual, seed)
    opt = (
        torch.optim.SGD(model.parameters(), lr=lr_sgd)
        if opt_name == "sgd"
        else torch.optim.Adam(model.parameters(), lr=lr_adam)
    )
    g = torch.Generator().manual_seed(seed)
    # plateau window in logged steps: a third of the run
    alerts = {"plateau_window": max(6, steps // every // 3), "patience": 5}
    with watch(model, opt, every=every, alerts=alerts) as w:
        for _ in range(steps):
            idx = torch.randint(0, len(xtr), (batch,), generator=g)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            w.observe(loss=loss)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(xte).argmax(1) == yte).float().mean())
    return w, accuracy
