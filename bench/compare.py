"""Ratio table of vgcore against its peers: a thin wrapper around ``vgcore bench``.

Usage: python bench/compare.py [vgcore bench options], e.g. ``--quick`` or
``--only bptt,mlp-flow --markdown out.md``. See ``vgcore bench --help``.
"""

from __future__ import annotations

import sys

from vgcore.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
