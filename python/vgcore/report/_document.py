"""A tiny document model rendered to both Markdown and self-contained HTML."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Document", "render_html", "render_markdown", "write_pages"]


@dataclass
class Document:
    """An ordered list of blocks: ``(kind, payload)``.

    Kinds: ``h1``/``h2``/``h3`` (text), ``p`` (text), ``ul`` (list of text), ``table``
    (header, rows), ``img`` (path relative to the report folder, caption), ``code`` (text).
    """

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, kind: str, payload: Any) -> None:
        self.blocks.append((kind, payload))


def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Document) -> str:
    """GitHub-flavoured Markdown; images are linked by their relative path."""
    out: list[str] = [f"# {doc.title}", ""]
    for kind, p in doc.blocks:
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + str(p), ""]
        elif kind == "p":
            out += [str(p), ""]
        elif kind == "ul":
            out += [f"- {item}" for item in p] + [""]
        elif kind == "table":
            header, rows = p
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "|".join(" --- " for _ in header) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            out.append("")
        elif kind == "img":
            path, caption = p
            out += [f"![{caption}]({path})", "", f"*{caption}*", ""]
        elif kind == "code":
            out += ["```", str(p), "```", ""]
        else:  # pragma: no cover - a programming error
            raise ValueError(f"unknown block kind {kind!r}")
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:1.8em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-style:italic;color:#555}
code,pre{background:#f6f6f6;padding:.1em .3em;border-radius:3px}
.vanishing{color:#1f5fbf;font-weight:600}.exploding{color:#c0392b;font-weight:600}
.healthy{color:#1e8449;font-weight:600}
"""


def _html_cell(v: Any) -> str:
    s = html.escape(str(v))
    for word in ("vanishing", "exploding", "healthy"):
        if s == word or s == word.upper():
            return f'<span class="{word}">{s}</span>'
    return s


def render_html(doc: Document, root: Path) -> str:
    """One HTML file with every image embedded (base64), readable offline."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    for kind, p in doc.blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_html_cell(p)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(str(p))}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in p) + "</ul>")
        elif kind == "table":
            header, rows = p
            out.append(
                "<table><thead><tr>"
                + "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
                + "</tr></thead><tbody>"
            )
            out += [
                "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in rows
            ]
            out.append("</tbody></table>")
        elif kind == "img":
            path, caption = p
            data = base64.b64encode((root / path).read_bytes()).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        elif kind == "code":
            out.append(f"<pre>{html.escape(str(p))}</pre>")
        else:  # pragma: no cover
            raise ValueError(f"unknown block kind {kind!r}")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_pages(doc: Document, out: Path) -> tuple[Path, Path]:
    """Write ``out / "report.md"`` and ``out / "report.html"`` (images embedded); their paths."""
    md = out / "report.md"
    md.write_text(render_markdown(doc), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(doc, out), encoding="utf-8")
    return md, page
