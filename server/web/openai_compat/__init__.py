"""The OpenAI-compatible API (/v1): routes, request bodies and their part of the spec."""

from __future__ import annotations

import time

from flask import Flask

from server.web import routing


def init_app(app: Flask) -> None:
    """Serve the /v1 routes (after auth and limits, which apply to them as to every route)."""
    from server.web.openai_compat.routes import bp

    app.extensions["openai_created"] = int(time.time())  # the model's "created" stamp
    # Paths under /v1 that match no route (404, 405) still answer in OpenAI's shape.
    routing.register_family(app, bp, routing.OPENAI)
