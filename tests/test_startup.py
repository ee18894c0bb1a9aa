"""Start-up: importing vgcore, `vgcore --help` and every `vgcore COMMAND --help` load none of
the heavy optional modules (they are imported by the commands that use them)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "matplotlib", "pandas", "scipy.optimize", "scipy.special", "dask", "jax"]

PROBE = """
import contextlib, io, json, sys
from vgcore.cli import main
for argv in %r:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, argv
print(json.dumps(sorted(m for m in %r if m in sys.modules)))
"""


def _loaded(argvs: list[list[str]], heavy: list[str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (argvs, heavy)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.splitlines()[-1])


def test_help_imports_nothing_heavy() -> None:
    from vgcore.cli.parser import _DESCRIPTIONS

    assert _loaded([["--help"]], HEAVY) == []
    assert _loaded([[c, "--help"] for c in _DESCRIPTIONS], HEAVY) == []


def test_small_analysis_imports_only_what_it_uses() -> None:
    # a recurrent model needs no theory; nothing loads plotting, tables, torch or dask unasked
    lstm = ["analyze", "--model", "lstm", "--width", "4", "--steps", "3", "--no-check"]
    assert _loaded([lstm], HEAVY) == []
    mlp = ["analyze", "--depth", "3", "--width", "4", "--no-check", "--json"]
    assert set(_loaded([mlp], HEAVY)) <= {"scipy.optimize", "scipy.special"}  # mean-field theory


def test_theory_is_loaded_on_first_use() -> None:
    code = (
        "import sys, vgcore; assert 'scipy.optimize' not in sys.modules; "
        "print(round(vgcore.critical_sigma_w2('tanh', 0.05), 3)); "
        "assert 'mean_field' in dir(vgcore)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "1.761"
