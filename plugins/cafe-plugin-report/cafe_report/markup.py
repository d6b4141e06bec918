"""Plain HTML pages that open from disk: one stylesheet inline, no scripts, images referenced beside them."""

from __future__ import annotations

import html
import pathlib
from typing import Iterable, Sequence

__all__ = ["escape", "figure", "page", "pager", "table", "write_page"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem auto;
       max-width: 1180px; padding: 0 1rem; color: #1a1a1a; background: #ffffff; line-height: 1.45; }
h1 { font-size: 1.45rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; } h3 { font-size: 1rem; margin-bottom: 0.3rem; }
table { border-collapse: collapse; font-size: 0.82rem; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; white-space: nowrap; }
figure { margin: 0.4rem 0 1rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.8rem; color: #444; }
.note { background: #f6f6f0; border-left: 4px solid #b8a800; padding: 0.4rem 0.7rem; font-size: 0.86rem; }
.muted { color: #555; font-size: 0.86rem; }
.target { border-top: 1px solid #ccc; margin-top: 1.4rem; padding-top: 0.4rem; }
.pager a, .pager span { margin-right: 0.5rem; } .pager span { font-weight: bold; }
.side { display: flex; gap: 1.2rem; flex-wrap: wrap; } .side > div { flex: 1 1 420px; }
nav a { margin-right: 0.8rem; }
"""


def escape(value: object) -> str:
    """HTML-escaped text of any value."""
    return html.escape(str(value), quote=True)


def page(title: str, body: str, *, nav: str = "") -> str:
    """A complete HTML document."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"{nav}\n{body}\n</body>\n</html>\n"
    )


def table(header: Sequence[str], rows: Iterable[Sequence[object]], text_columns: int = 1) -> str:
    """A table whose first ``text_columns`` columns are left-aligned text; cells are escaped."""

    def cell(tag: str, value: object, i: int) -> str:
        cls = ' class="text"' if i < text_columns else ""
        return f"<{tag}{cls}>{escape(value)}</{tag}>"

    head = "".join(cell("th", h, i) for i, h in enumerate(header))
    body = "\n".join("<tr>" + "".join(cell("td", v, i) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def figure(src: str, alt: str, caption: str = "") -> str:
    """An image (a path relative to the page) with alternative text and an optional caption."""
    caption_html = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{escape(src)}" alt="{escape(alt)}">{caption_html}</figure>'


def pager(names: Sequence[str], current: int) -> str:
    """Links to every page of a paginated list, the current one in bold."""
    if len(names) <= 1:
        return ""
    links = [
        f"<span>{i + 1}</span>" if i == current else f'<a href="{escape(name)}">{i + 1}</a>'
        for i, name in enumerate(names)
    ]
    return '<p class="pager">Pages: ' + " ".join(links) + "</p>"


def write_page(path: pathlib.Path, text: str) -> pathlib.Path:
    """Write a page (UTF-8) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
