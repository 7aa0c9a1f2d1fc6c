"""A run directory's ``report.html``, assembled from sections that any command can add.

Each command writes its section as ``report_sections/<order>-<name>.json`` (title, HTML body, image
paths) and calls ``render_report(run_dir)``; the page embeds every image as base64, so it is one file
that opens without a server. Sections are independent: re-running one command replaces its section only.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from midblock.errors import MidblockError
from midblock.io import read_json, write_json, write_text

SECTIONS_DIR = "report_sections"


@dataclass
class Section:
    """One part of the report. ``body`` is trusted HTML built by our code (escape user text with ``esc``)."""

    name: str  # file-safe identifier, e.g. 'analysis', 'swap'
    title: str
    body: str
    images: list[str] = field(default_factory=list)  # paths relative to the run directory
    order: int = 50  # lower comes first


def esc(text: object) -> str:
    return html.escape(str(text))


def table_html(rows: list[dict], columns: list[str] | None = None, floatfmt: str = "{:.4g}") -> str:
    """A plain HTML table from a list of dicts."""
    if not rows:
        return "<p><em>no rows</em></p>"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return esc(floatfmt.format(v))
        return esc("" if v is None else v)

    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def add_section(run_dir: str | Path, section: Section, render: bool = True) -> Path:
    """Save (or replace) a section, then re-render ``report.html``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", section.name):
        raise ValueError(f"section name must be file-safe, got {section.name!r}")
    run_dir = Path(run_dir)
    for old in (run_dir / SECTIONS_DIR).glob(f"*-{section.name}.json"):
        old.unlink()
    write_json(run_dir / SECTIONS_DIR / f"{section.order:03d}-{section.name}.json", asdict(section))
    return render_report(run_dir) if render else run_dir / "report.html"


def _section(f: Path) -> dict[str, Any]:
    """A saved section, checked: a run directory may come from elsewhere, or have been edited."""
    s = read_json(f, dict)
    if not all(isinstance(s.get(k), str) for k in ("name", "title", "body")):
        raise MidblockError(f"{f} is not a report section (needs name, title and body)", hint="delete it and rerun")
    if not isinstance(s.get("images", []), list):
        raise MidblockError(f"{f}: 'images' must be a list of file names", hint="delete it and rerun")
    return s


def _embed(run_dir: Path, rel: str) -> str:
    p = run_dir / str(rel)
    if not p.resolve().is_relative_to(run_dir.resolve()):  # a section names files of its own run only
        return f'<p class="missing">figure {esc(rel)} is outside the run directory: not embedded</p>'
    if not p.exists():
        return f'<p class="missing">missing figure {esc(rel)}</p>'
    mime = mimetypes.guess_type(p.name)[0] or "image/png"
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    img = f'<img alt="{esc(p.stem)}" src="data:{mime};base64,{data}">'
    return f"<figure>{img}<figcaption>{esc(p.stem)}</figcaption></figure>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #333}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5em;max-width:100%}img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.8em;color:#666;text-align:center}.note{background:#fff8e1;padding:.6em 1em;
border-left:4px solid #f0b400}code,pre{background:#f6f6f6;padding:.1em .3em}pre{padding:.6em;overflow:auto}
nav a{margin-right:1em}.tablewrap{overflow-x:auto;max-width:100%}
"""


def render_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Assemble every saved section of ``run_dir`` into a self-contained ``report.html``."""
    run_dir = Path(run_dir)
    sections = []
    for f in sorted((run_dir / SECTIONS_DIR).glob("*.json")):
        sections.append(_section(f))
    title = title or f"midblock report: {run_dir.name}"
    nav = "".join(f'<a href="#{esc(s["name"])}">{esc(s["title"])}</a>' for s in sections)
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1><nav>{nav}</nav>",
    ]
    for s in sections:
        parts.append(f'<section id="{esc(s["name"])}"><h2>{esc(s["title"])}</h2>{s["body"]}')
        parts.extend(_embed(run_dir, img) for img in s.get("images", []))
        parts.append("</section>")
    parts.append("</body></html>")
    out = run_dir / "report.html"
    write_text(out, "\n".join(parts))
    return out
