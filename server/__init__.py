"""GPT Load Lab server: a causal LM behind Flask, built by the ``create_app`` factory.

Imports stay inside the factory so ``python -m server.engine.synthetic`` and tools that only need
a submodule do not pay for Flask, torch and transformers at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def create_app(config: Mapping[str, Any] | None = None):  # -> flask.Flask
    """Build the app: config (defaults < env < ``config``), model loaded, routes attached."""
    import logging

    from flask import Flask

    from server.config import load_config
    from server.web import (
        accounting,
        admission,
        auth,
        drain,
        limits,
        openai_compat,
        openapi,
        operator_auth,
    )
    from server.web.errors import register_error_handlers
    from server.web.metrics import Metrics
    from server.web.routes import bp
    from server.web.service import ModelService

    app = Flask(__name__)
    app.config.update(load_config(config))
    app.json.sort_keys = False
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s [%(process)d] %(name)s: %(message)s")
    register_error_handlers(app)
    drain.init_app(app)  # runs last of the after_request hooks: after the answer is built
    Metrics().init_app(app)
    # Hooks run in this order: request id and timers, then the key, then the operator
    # credential (and who gets telemetry), then the rate limits; keys and limits are checked
    # before the (slow) model load so bad config fails fast.
    accounting.init_app(app)
    auth.init_app(app)
    operator_auth.init_app(app)
    limits.init_app(app)
    admission.init_app(app)  # after the key and limits: refused requests take no slot
    ModelService().init_app(app)
    app.register_blueprint(bp)
    openai_compat.init_app(app)
    openapi.init_app(app)
    return app
