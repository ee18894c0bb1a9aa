"""The type stub ``vgcore/_core.pyi`` lists exactly what the compiled module binds.

Names on both sides, and for every function the parameter names in order, read from pybind11's
signature line; a stub that drifts from the module fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import vgcore
from vgcore import _core

STUB = Path(vgcore.__file__).resolve().parent / "_core.pyi"


def _stub_scopes() -> dict[str, dict[str, list[str] | None]]:
    """{scope: {name: parameter names (None for non-functions)}}; scope "" is the module."""
    tree = ast.parse(STUB.read_text())
    scopes: dict[str, dict[str, list[str] | None]] = {"": {}}

    def collect(body: list[ast.stmt], into: dict[str, list[str] | None]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef):
                args = [a.arg for a in node.args.posonlyargs + node.args.args]
                args += [a.arg for a in node.args.kwonlyargs]
                into[node.name] = [a for a in args if a != "self"]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                into[node.target.id] = None
            elif isinstance(node, ast.ClassDef):
                into[node.name] = None
                scopes[node.name] = {}
                collect(node.body, scopes[node.name])

    collect(tree.body, scopes[""])
    return scopes


def _bound_names(obj: object) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_") or n == "__version__"}


def _pybind_params(fn: object) -> list[str]:
    doc = (getattr(fn, "__doc__", None) or "").strip()
    head = doc.splitlines()[0] if doc else ""
    m = re.match(r"^\w+\((.*)\)\s*->", head)
    assert m, f"no pybind11 signature line in {fn!r}: {head!r}"
    names = re.findall(r"(?:^|,\s*)(\w+)\s*:", m.group(1))
    return [n for n in names if n != "self"]


def test_stub_has_no_catch_all():
    assert "__getattr__" not in _stub_scopes()[""]


def test_stub_names_match_module():
    stub = _stub_scopes()
    assert set(stub[""]) - {"__version__"} == _bound_names(_core) - {"__version__"}
    assert set(stub["testing"]) == _bound_names(_core.testing)
    engine = {n for n in _bound_names(_core.LyapunovEngine)}
    assert set(stub["LyapunovEngine"]) - {"__init__"} == engine


FUNCTIONS = sorted(
    n for n, params in _stub_scopes()[""].items() if params is not None and not n.startswith("_")
)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_stub_parameters_match_module(name):
    assert _stub_scopes()[""][name] == _pybind_params(getattr(_core, name)), name


@pytest.mark.parametrize("name", sorted(n for n in _stub_scopes()["testing"]))
def test_stub_testing_parameters_match_module(name):
    assert _stub_scopes()["testing"][name] == _pybind_params(getattr(_core.testing, name)), name


def test_testing_stub_is_the_submodule():
    assert type(_core.testing).__name__ == "module"
    assert _core.testing.__name__.endswith("_core.testing")


def test_main_module_binds_only_what_the_package_uses():
    """Hooks for the tests alone live in ``_core.testing``: every other bound name is read
    somewhere in the package (``_core.<name>``)."""
    package = Path(vgcore.__file__).resolve().parent
    used = set()
    for path in package.rglob("*.py"):
        used |= set(re.findall(r"\b_core\.(\w+)", path.read_text()))
    unused = _bound_names(_core) - {"testing", "__version__"} - used
    assert not unused, f"bound but unused by the package (move to _core.testing): {unused}"
