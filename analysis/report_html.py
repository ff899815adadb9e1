"""Render a report Document as one self-contained HTML page (Jinja2; charts inlined as base64).

Pure: the caller passes the PNG bytes in. The page's layout lives in templates/report.html.j2;
text is escaped by Jinja's autoescaping, and the only markup inside text, `code` and
**bold**, becomes <code> and <strong>.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from analysis.document import Document

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def inline(text: object) -> Markup:
    """Escape ``text``, then turn `code` into <code> and **bold** into <strong>."""
    out = str(escape(str(text)))
    out = _CODE.sub(r"<code>\1</code>", out)
    return Markup(_BOLD.sub(r"<strong>\1</strong>", out))


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("analysis", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=False,
    )
    env.filters["inline"] = inline
    return env


def render_html(doc: Document, images: Mapping[str, bytes]) -> str:
    """One HTML page for ``doc``; ``images`` maps each chart path to its PNG bytes."""
    encoded = {path: base64.b64encode(data).decode() for path, data in images.items()}
    return _environment().get_template("report.html.j2").render(doc=doc, images=encoded) + "\n"
