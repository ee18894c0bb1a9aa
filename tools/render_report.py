"""Render a vgcore report the way a reader sees it, to look at its figures.

    python tools/render_report.py                  # build the demo report, then render it
    python tools/render_report.py my-report/       # render an existing report folder
    python tools/render_report.py --out /tmp/look  # where the renderings go

With a headless browser (the ``playwright`` package with its Chromium, or a ``chromium`` /
``google-chrome`` binary on PATH) the page ``report.html`` is screenshotted whole
(``page.png``). Without one, or in addition, the figures embedded in the HTML are decoded and
laid out with their captions on contact sheets (``contact-1.png``, ...; 9 figures each, at
the width the page shows them), so they can be checked by eye. Each figure is also checked
for what a browser would trip on: an image that does not decode, an empty caption, a file
name that is cut or repeated.

Exit status: 0 when every check passed, 1 otherwise (the problems are printed).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

#: Figures per contact sheet, and its columns.
PER_SHEET = 9
COLUMNS = 3


def build_demo(folder: Path) -> None:
    """``vgcore demo --out folder`` in this interpreter's environment."""
    cmd = [sys.executable, "-m", "vgcore", "demo", "--out", str(folder), "--force"]
    print("building the demo report:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def figures_of(page: str) -> list[tuple[str, bytes]]:
    """``(caption, png bytes)`` of every ``<figure>`` in a report page, in order."""
    out = []
    pattern = r'<figure><img alt="(.*?)" src="data:image/png;base64,(.*?)"><figcaption>'
    for alt, data in re.findall(pattern, page, flags=re.S):
        out.append((html.unescape(alt), base64.b64decode(data)))
    return out


def check(folder: Path, figs: list[tuple[str, bytes]]) -> list[str]:
    """Problems a reader would meet: undecodable images, missing captions, bad file names."""
    from PIL import Image

    problems = []
    for caption, png in figs:
        try:
            with Image.open(io.BytesIO(png)) as im:
                im.verify()
        except Exception as exc:  # any decoding failure is the finding
            problems.append(f"figure {caption[:60]!r} does not decode: {exc}")
        if not caption.strip():
            problems.append("a figure has no caption")
    names = sorted(p.name for p in (folder / "figures").glob("*.png"))
    md = (folder / "report.md").read_text(encoding="utf-8")
    linked = re.findall(r"\]\(figures/([^)]+)\)", md)
    for name in linked:
        if name not in names:
            problems.append(f"report.md links figures/{name}, which does not exist")
    if len(set(linked)) != len(linked):
        problems.append("report.md links the same figure file twice")
    if len(figs) != len(linked):
        problems.append(f"report.html shows {len(figs)} figures, report.md {len(linked)}")
    return problems


def screenshot(page: Path, out: Path) -> Path | None:
    """A full-page screenshot with a headless browser, or None when there is none."""
    target = out / "page.png"
    try:
        from playwright.sync_api import sync_playwright  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch()
                tab = browser.new_page(viewport={"width": 1200, "height": 900})
                tab.goto(page.resolve().as_uri())
                tab.screenshot(path=str(target), full_page=True)
                browser.close()
            return target
        except Exception as exc:  # no browser installed for playwright
            print(f"playwright could not render the page ({exc}); trying a browser binary")
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe is None:
            continue
        size = 1200 * 40  # tall enough for a whole report
        cmd = [
            exe,
            "--headless=new",
            "--disable-gpu",
            "--no-sandbox",
            f"--screenshot={target}",
            f"--window-size=1200,{size}",
            page.resolve().as_uri(),
        ]
        if subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0:
            return target
    return None


def contact_sheets(figs: list[tuple[str, bytes]], out: Path) -> list[Path]:
    """Figures with their captions, ``PER_SHEET`` to a sheet, at the page's scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    sheets = []
    for start in range(0, len(figs), PER_SHEET):
        chunk = figs[start : start + PER_SHEET]
        rows = -(-len(chunk) // COLUMNS)
        fig, axes = plt.subplots(rows, COLUMNS, figsize=(7.5 * COLUMNS, 5.6 * rows), dpi=80)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, (i, (caption, png)) in zip(axes.ravel(), enumerate(chunk, start + 1)):
            ax.imshow(mpimg.imread(io.BytesIO(png), format="png"))
            ax.set_title(textwrap.fill(f"{i}. {caption}", 90), fontsize=9, loc="left")
        fig.tight_layout()
        path = out / f"contact-{start // PER_SHEET + 1}.png"
        fig.savefig(path)
        plt.close(fig)
        sheets.append(path)
    return sheets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("report", nargs="?", help="report folder (default: build the demo's)")
    ap.add_argument("--out", default=None, help="folder for the renderings (default REPORT/render)")
    args = ap.parse_args(argv)
    if args.report is None:
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / "vgcore-demo-report"
        build_demo(folder)
    else:
        folder = Path(args.report)
    page = folder / "report.html"
    if not page.is_file():
        print(f"{page} does not exist: give a vgcore report folder", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else folder / "render"
    out.mkdir(parents=True, exist_ok=True)
    figs = figures_of(page.read_text(encoding="utf-8"))
    problems = check(folder, figs)
    shot = screenshot(page, out)
    print(f"page screenshot: {shot}" if shot else "no headless browser found: contact sheets only")
    for sheet in contact_sheets(figs, out):
        print(f"contact sheet: {sheet}")
    print(f"{len(figs)} figures checked")
    for p in problems:
        print("problem:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
