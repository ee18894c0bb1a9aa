"""Start-up: importing vgcore and `vgcore --help` load none of the heavy optional modules
(they are imported by the commands that use them)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "matplotlib", "pandas", "scipy.optimize", "scipy.special", "dask", "jax"]

PROBE = """
import json, sys
sys.argv = ["vgcore", "--help"]
from vgcore.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in %r if m in sys.modules)))
"""


def test_help_imports_nothing_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,)], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.splitlines()[-1]) == []


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
