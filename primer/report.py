"""One self-contained HTML page (images embedded as data URIs) that shows a whole pipeline run."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from primer.atomic import write_text

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; } \
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; } img { max-width: 100%; border: 1px solid #eee; } .note { color: #666; }
.banner { background: #fff4d6; border: 1px solid #e0b84c; padding: .6em 1em; margin: 1em 0; }
"""


def image(path: Path | str, alt: str) -> str:
    """An <img> with the PNG inlined, or a note when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return f'<p class="note">({html.escape(alt)}: {html.escape(str(path))} not found)</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return '<p class="note">(none)</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(path: Path | str, title: str, sections: list[tuple[str, str]], banner: str = "") -> None:
    """sections: (heading, inner HTML) in page order; `banner` (text) is shown boxed under the title;
    written atomically."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if banner:
        parts.append(f'<p class="banner" id="profile-banner">{html.escape(banner)}</p>')
    parts += [f"<h2>{html.escape(heading)}</h2>\n{inner}" for heading, inner in sections]
    parts.append("</body></html>\n")
    write_text(path, "\n".join(parts))
