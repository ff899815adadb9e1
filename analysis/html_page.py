"""Turn the report's Markdown into one self-contained HTML page (charts inlined as base64).

Handles only the Markdown the report writes: headings, paragraphs, "- " lists, pipe
tables, images, **bold** and `code`. Pure: the caller passes the PNG bytes in.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def inline(text: str) -> str:
    """Escape ``text`` and render **bold** and `code`."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def _table(lines: list[str]) -> str:
    rows = [
        [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", ln.strip()[1:-1])]
        for ln in lines
    ]
    head = "".join(f"<th>{inline(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(match: re.Match[str], images: Mapping[str, bytes]) -> str:
    alt, src = match.group(1), match.group(2)
    data = images.get(src)
    if data is None:
        return f'<p><img alt="{html.escape(alt)}" src="{html.escape(src)}"></p>'
    encoded = base64.b64encode(data).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">' \
           f"<figcaption>{html.escape(alt)}</figcaption></figure>"  # fmt: skip


def markdown_to_html(markdown: str, images: Mapping[str, bytes], title: str) -> str:
    """One HTML page for ``markdown``; ``images`` maps each image path to its PNG bytes."""
    parts: list[str] = []
    for block in markdown.strip().split("\n\n"):
        lines = block.splitlines()
        first = lines[0]
        if first.startswith("#"):
            level = len(first) - len(first.lstrip("#"))
            parts.append(f"<h{level}>{inline(first[level:].strip())}</h{level}>")
        elif first.startswith("|"):
            parts.append(_table(lines))
        elif first.startswith("- "):
            items = "".join(f"<li>{inline(ln[2:])}</li>" for ln in lines)
            parts.append(f"<ul>{items}</ul>")
        elif _IMAGE.fullmatch(first.strip()):
            parts.append(_IMAGE.sub(lambda m: _image(m, images), first.strip()))
        else:
            parts.append(f"<p>{inline(' '.join(lines))}</p>")
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
