"""Command-line interface: ``vgcore demo | analyze | report | lyapunov | spectrum | singular |
phase | sweep | bench``.

Exit codes: 0 success, 2 bad arguments (one line on stderr saying why), 1 failure.
``--json`` prints one JSON document on stdout and nothing else there.
"""

from __future__ import annotations

from vgcore.cli.main import main
from vgcore.cli.parser import build_parser

__all__ = ["build_parser", "main"]
