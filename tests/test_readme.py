"""Every README example runs as written: each Python block alone, as a script in a fresh
directory (so a block that leans on an earlier one fails here), and every CLI example."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README.read_text(), flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
CLI = [
    line.split("#")[0].strip()
    for lang, code in BLOCKS
    if lang == "bash"
    for line in code.splitlines()
    if line.startswith("vgcore ")
]

pytestmark = pytest.mark.slow


def test_readme_has_examples() -> None:
    assert len(PYTHON) >= 3 and len(CLI) >= 3


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_block_runs_alone(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"block{index}.py"
    script.write_text(PYTHON[index])
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("line", CLI)
def test_cli_example_runs(line: str, tmp_path: Path) -> None:
    args = shlex.split(line)[1:]
    proc = subprocess.run(
        [sys.executable, "-m", "vgcore", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
