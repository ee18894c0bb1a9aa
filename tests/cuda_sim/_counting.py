"""Counting the host-side calls of the CUDA drivers in the simulator.

On a device every array operation and every kernel launch costs 10-40 us of host time, more
than a small step's work, so the drivers' cost per step is the number of such calls. Here the
array module is NumPy: :class:`CountingArrays` hands the drivers an array module that counts
each call of its functions, arrays that count each ufunc, array function, ``astype``, ``copy``
and element assignment made on them (each would launch a kernel on a device), and a launcher
that counts each launch. Calls made inside a counted call (NumPy's own implementation, a
simulated kernel's element accesses) are not counted again.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from vgcore.cuda._arrays import Arrays


class _State:
    calls = 0
    depth = 0


_S = _State()


@contextmanager
def _counted() -> Iterator[None]:
    if _S.depth == 0:
        _S.calls += 1
    _S.depth += 1
    try:
        yield
    finally:
        _S.depth -= 1


def _plain(a: Any) -> Any:
    if isinstance(a, Tracked):
        return a.view(np.ndarray)
    if isinstance(a, tuple):
        return tuple(_plain(b) for b in a)
    if isinstance(a, list):
        return [_plain(b) for b in a]
    return a


def _track(a: Any) -> Any:
    if isinstance(a, np.ndarray) and not isinstance(a, Tracked):
        return a.view(Tracked)
    if isinstance(a, tuple):
        return tuple(_track(b) for b in a)
    return a


class Tracked(np.ndarray):
    """An ndarray whose operations are counted."""

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kw: Any) -> Any:
        with _counted():
            if "out" in kw:
                kw["out"] = _plain(kw["out"])
            res = getattr(ufunc, method)(*_plain(inputs), **kw)
        return _track(res)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        with _counted():
            res = func(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()})
        return _track(res)

    def astype(self, *args: Any, **kw: Any) -> Any:
        with _counted():
            return _track(self.view(np.ndarray).astype(*args, **kw))

    def copy(self, *args: Any, **kw: Any) -> Any:
        with _counted():
            return _track(self.view(np.ndarray).copy(*args, **kw))

    def __setitem__(self, key: Any, value: Any) -> None:
        with _counted():
            self.view(np.ndarray)[key] = _plain(value)


class _Module(types.ModuleType):
    """NumPy with every function call counted and arrays returned as :class:`Tracked`."""

    def __init__(self) -> None:
        super().__init__("counting_numpy")

    def __getattr__(self, name: str) -> Any:
        obj = getattr(np, name)
        if not callable(obj) or isinstance(obj, type):
            return obj

        def call(*args: Any, **kw: Any) -> Any:
            with _counted():
                if "out" in kw:
                    kw["out"] = _plain(kw["out"])
                res = obj(*_plain(args), **{k: _plain(v) for k, v in kw.items()})
            return _track(res)

        return call


class CountingArrays(Arrays):
    """The simulator's seam with every host-side call counted (``calls``)."""

    def __init__(self) -> None:
        super().__init__(_Module(), True)
        self.launches = 0

    @property
    def calls(self) -> int:
        return _S.calls

    def to_host(self, a: Any) -> np.ndarray:
        # one copy from the device; what the host does with it afterwards is not counted
        with _counted():
            return np.array(_plain(a))

    def launch(self, kernel: Any, n: int, *args: Any) -> None:
        self.launches += 1
        with _counted():
            super().launch(kernel, n, *_plain(args))

    def launch_block(self, kernel: Any, *args: Any) -> None:
        self.launches += 1
        with _counted():
            super().launch_block(kernel, *_plain(args))


def install(monkeypatch: pytest.MonkeyPatch) -> CountingArrays:
    """Make the drivers use a fresh :class:`CountingArrays`."""
    from vgcore.cuda import _arrays

    ar = CountingArrays()
    monkeypatch.setattr(_arrays, "arrays", lambda: ar)
    for mod in ("vgcore.cuda.flow", "vgcore.cuda.lyapunov"):
        monkeypatch.setattr(f"{mod}.arrays", lambda: ar)
    return ar
