"""Online alerts of the training monitor: vanishing and exploding gradients, dead and
saturated units, a loss plateau.

Each alert names the block, the step and the fixes :func:`vgcore.diagnose` tries for that
cause (the names of :class:`vgcore.Fix`), is logged through the ``vgcore.watch`` logger and
kept in ``Watch.alerts``. An alert fires once; it fires again for the same block only after
the condition has cleared.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FIXES", "Alert", "AlertConfig", "AlertEngine"]

logger = logging.getLogger("vgcore.watch")

#: The fixes ``vgcore.diagnose`` measures for each cause (its Fix.fix names).
FIXES: dict[str, tuple[str, ...]] = {
    "vanishing": ("ReLU + He init", "residual blocks", "BatchNorm", "LayerNorm", "critical init"),
    "vanishing_recurrent": ("LSTM (forget bias 1)", "GRU", "orthogonal recurrent init"),
    "exploding": ("gradient clipping", "critical init", "LayerNorm"),
    "saturated": ("ReLU + He init", "Xavier init", "BatchNorm"),
    "dead": ("leaky ReLU", "He init"),
    "plateau": ("ReLU + He init", "residual blocks", "BatchNorm"),
}


@dataclass(frozen=True)
class Alert:
    """One alert.

    Attributes
    ----------
    kind : {"vanishing", "exploding", "saturated", "dead", "plateau"}
    step : int
        The optimizer step (0-based) at which the condition was confirmed.
    block : str or None
        The block concerned (None for a loss plateau).
    metric : str
        The metric that triggered it ("grad_ratio", "update_ratio", "grad_growth",
        "nonfinite", "act_saturated", "act_dead", "loss").
    value : float
        Its value at ``step``.
    message : str
        The logged sentence: what, where, when, and the fixes to try.
    fixes : tuple of str
        Names of the fixes :func:`vgcore.diagnose` would try.
    parameter : str or None
        The parameter or activation module concerned, where one is.
    """

    kind: str
    step: int
    block: str | None
    metric: str
    value: float
    message: str
    fixes: tuple[str, ...] = field(default=())
    parameter: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "step": self.step,
            "block": self.block,
            "parameter": self.parameter,
            "metric": self.metric,
            "value": self.value,
            "fixes": "; ".join(self.fixes),
            "message": self.message,
        }


@dataclass
class AlertConfig:
    """Thresholds of the alerts (all in logged steps where they count steps).

    Attributes
    ----------
    vanishing_ratio : float
        A block's gradient norm below this fraction of the last block's.
    min_update_ratio : float
        A block's update ratio ``||delta theta|| / ||theta||`` below this.
    patience : int
        Logged steps a vanishing / saturated / dead condition must last.
    explode_growth : float
        A block's gradient norm above this multiple of its first logged value, or of the last
        block's.
    saturated_fraction, dead_fraction : float
        Fraction of an activation's units saturated (or inactive), or dead (inactive for every
        sample of the step).
    plateau_window : int
        Logged losses compared: the mean of the second half against the first half.
    plateau_tol : float
        Relative improvement below which the loss counts as flat.
    plateau_high : float
        Only a plateau above this fraction of the first logged loss (a stuck loss, not a
        converged one).
    """

    vanishing_ratio: float = 1e-6
    min_update_ratio: float = 1e-7
    patience: int = 5
    explode_growth: float = 1e3
    saturated_fraction: float = 0.5
    dead_fraction: float = 0.5
    plateau_window: int = 50
    plateau_tol: float = 1e-2
    plateau_high: float = 0.5

    def validate(self) -> None:
        for name in ("vanishing_ratio", "min_update_ratio", "plateau_tol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise ValueError(f"alerts: {name} must be a finite number >= 0, got {v!r}")
        for name in ("saturated_fraction", "dead_fraction", "plateau_high"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"alerts: {name} must be in [0, 1], got {v!r}")
        if not (isinstance(self.explode_growth, (int, float)) and self.explode_growth > 1):
            raise ValueError(f"alerts: explode_growth must be > 1, got {self.explode_growth!r}")
        for name in ("patience", "plateau_window"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"alerts: {name} must be an integer >= 1, got {v!r}")


def _fix_text(fixes: Sequence[str]) -> str:
    return "try: " + ", ".join(fixes) + " (vgcore.diagnose measures these fixes)"


class AlertEngine:
    """Checks each logged step's numbers and emits :class:`Alert` objects."""

    def __init__(
        self,
        config: AlertConfig,
        recurrent_blocks: Sequence[bool],
        optimizer_name: str | None,
        emit: bool = True,
    ) -> None:
        self.config = config
        self.recurrent = list(recurrent_blocks)
        self.optimizer_name = optimizer_name
        self.emit = emit  # log (rank 0 only)
        self.alerts: list[Alert] = []
        self._count: dict[tuple[str, str], int] = {}
        self._fired: set[tuple[str, str]] = set()
        self._baseline: dict[str, float] = {}
        self._nonfinite_seen = False
        self._losses: list[float] = []
        self._first_loss: float | None = None

    # -- helpers --------------------------------------------------------------------------
    def _add(self, alert: Alert) -> None:
        self.alerts.append(alert)
        if self.emit:
            logger.warning(alert.message)

    def _sustained(self, key: tuple[str, str], cond: bool) -> bool:
        """Count consecutive logged steps with ``cond``; True once when the count reaches
        the patience (re-armed when the condition clears)."""
        if not cond:
            self._count[key] = 0
            self._fired.discard(key)
            return False
        self._count[key] = self._count.get(key, 0) + 1
        if self._count[key] >= self.config.patience and key not in self._fired:
            self._fired.add(key)
            return True
        return False

    def _once(self, key: tuple[str, str], cond: bool) -> bool:
        if cond and key not in self._fired:
            self._fired.add(key)
            return True
        if not cond:
            self._fired.discard(key)
        return False

    # -- the checks -----------------------------------------------------------------------
    def check(
        self,
        step: int,
        blocks: Sequence[str],
        grad: Sequence[float],
        update: Sequence[float],
        param_grads: Sequence[tuple[str, int, float]],
        acts: Sequence[tuple[str, str, dict[str, float]]],
        loss: float | None,
    ) -> None:
        """One logged step.

        Parameters
        ----------
        step : int
        blocks : names of the blocks
        grad, update : per block, gradient norm and update ratio (NaN where not measured)
        param_grads : (parameter name, block index, gradient norm) for every recorded tensor
        acts : (block, module name, metrics) for every activation module seen
        loss : the step's loss, if observed
        """
        cfg = self.config
        # first NaN / Inf: the parameter and block where it shows
        if not self._nonfinite_seen:
            bad = [(n, b, v) for n, b, v in param_grads if not math.isfinite(v)]
            if bad or (loss is not None and not math.isfinite(loss)):
                self._nonfinite_seen = True
                if bad:
                    name, b, v = bad[0]
                    where = f"block {blocks[b]!r} (parameter {name!r})"
                    block: str | None = blocks[b]
                else:
                    name, where, block, v = None, "the loss", None, float(loss)  # type: ignore[arg-type]
                fixes = FIXES["exploding"]
                self._add(
                    Alert(
                        "exploding",
                        step,
                        block,
                        "nonfinite",
                        v,
                        f"step {step}: first non-finite gradient ({v}) in {where}; "
                        f"{len(bad)} tensor(s) affected; {_fix_text(fixes)}",
                        fixes,
                        name,
                    )
                )
        finite = [i for i, g in enumerate(grad) if math.isfinite(g) and g > 0]
        last = finite[-1] if finite else None
        for i, name in enumerate(blocks):
            g = grad[i]
            rec = self.recurrent[i] if i < len(self.recurrent) else False
            if math.isfinite(g) and g > 0:
                base = self._baseline.setdefault(name, g)
                if self._once(("grow", name), g > cfg.explode_growth * base):
                    fixes = FIXES["exploding"]
                    self._add(
                        Alert(
                            "exploding",
                            step,
                            name,
                            "grad_growth",
                            g / base,
                            f"step {step}: the gradient norm of block {name!r} grew "
                            f"{g / base:.3g} times since the first logged step ({base:.3g} -> "
                            f"{g:.3g}); {_fix_text(fixes)}",
                            fixes,
                        )
                    )
            if last is not None and i != last and math.isfinite(g):
                ratio = g / grad[last]
                if self._sustained(("vanish", name), ratio < cfg.vanishing_ratio):
                    fixes = FIXES["vanishing_recurrent" if rec else "vanishing"]
                    self._add(
                        Alert(
                            "vanishing",
                            step,
                            name,
                            "grad_ratio",
                            ratio,
                            f"step {step}: vanishing gradient in block {name!r}: its gradient norm "
                            f"is {ratio:.3g} times the last block's ({blocks[last]!r}) for "
                            f"{cfg.patience} logged steps; {_fix_text(fixes)}",
                            fixes,
                        )
                    )
                if self._once(("deep_grow", name), ratio > cfg.explode_growth):
                    fixes = FIXES["exploding"]
                    self._add(
                        Alert(
                            "exploding",
                            step,
                            name,
                            "grad_ratio",
                            ratio,
                            f"step {step}: exploding gradient in block {name!r}: its gradient norm "
                            f"is {ratio:.3g} times the last block's ({blocks[last]!r}); "
                            f"{_fix_text(fixes)}",
                            fixes,
                        )
                    )
            u = update[i] if i < len(update) else math.nan
            if math.isfinite(u) and self._sustained(("update", name), u < cfg.min_update_ratio):
                fixes = FIXES["vanishing_recurrent" if rec else "vanishing"]
                hint = ""
                if self.optimizer_name in ("SGD",):
                    hint = " (an adaptive optimizer such as Adam rescales each step by the gradient's size)"
                self._add(
                    Alert(
                        "vanishing",
                        step,
                        name,
                        "update_ratio",
                        u,
                        f"step {step}: block {name!r} barely moves: update ratio "
                        f"||dtheta||/||theta|| = {u:.3g} for {cfg.patience} logged steps{hint}; "
                        f"{_fix_text(fixes)}",
                        fixes,
                    )
                )
        for block_name, mod, m in acts:
            sat = m.get("act_saturated")
            if sat is not None and self._sustained(
                ("sat", mod), math.isfinite(sat) and sat > cfg.saturated_fraction
            ):
                fixes = FIXES["saturated"]
                self._add(
                    Alert(
                        "saturated",
                        step,
                        block_name,
                        "act_saturated",
                        sat,
                        f"step {step}: {sat:.0%} of the units of {mod!r} (block {block_name!r}) "
                        f"are saturated for {cfg.patience} logged steps; {_fix_text(fixes)}",
                        fixes,
                        mod,
                    )
                )
            dead = m.get("act_dead")
            if dead is not None and self._sustained(("dead", mod), dead > cfg.dead_fraction):
                fixes = FIXES["dead"]
                self._add(
                    Alert(
                        "dead",
                        step,
                        block_name,
                        "act_dead",
                        dead,
                        f"step {step}: {dead:.0%} of the units of {mod!r} (block {block_name!r}) "
                        f"are dead (inactive for every sample) for {cfg.patience} logged steps; "
                        f"{_fix_text(fixes)}",
                        fixes,
                        mod,
                    )
                )
        if loss is not None and math.isfinite(loss):
            self._check_plateau(step, loss)

    def _check_plateau(self, step: int, loss: float) -> None:
        cfg = self.config
        if self._first_loss is None:
            self._first_loss = loss
        self._losses.append(loss)
        w = cfg.plateau_window
        if len(self._losses) < w:
            return
        recent = self._losses[-w:]
        h = w // 2
        m1 = sum(recent[:h]) / max(h, 1)
        m2 = sum(recent[h:]) / max(w - h, 1)
        flat = (m1 - m2) <= cfg.plateau_tol * abs(m1)
        high = abs(m2) >= cfg.plateau_high * abs(self._first_loss)
        if self._once(("plateau", ""), flat and high):
            vanishing = sorted({a.block for a in self.alerts if a.kind == "vanishing" and a.block})
            why = f"; vanishing alerts in {vanishing}" if vanishing else ""
            fixes = FIXES["plateau"]
            self._add(
                Alert(
                    "plateau",
                    step,
                    None,
                    "loss",
                    m2,
                    f"step {step}: the loss plateaus at {m2:.4g} ({m2 / self._first_loss:.0%} of "
                    f"the first logged loss, {(m1 - m2) / abs(m1) if m1 else 0.0:.2%} lower over "
                    f"the last {w} logged steps){why}; {_fix_text(fixes)}",
                    fixes,
                )
            )
