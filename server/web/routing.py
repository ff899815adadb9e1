"""What each route is, declared once where it is registered.

A route's properties (does it queue a generation? is it public? is it an operator surface?
is it logged? which error shape does it answer in?) used to be path lists in four modules.
Now a view carries a ``RouteProps`` (``@declare(...)``), a blueprint family carries the
default for its paths that match no view (a 404 or 405 under ``/v1``), and auth, the
operator credential, admission, accounting and the error handlers all ask ``current()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from flask import Blueprint, Flask, current_app, has_request_context, request

View = TypeVar("View", bound=Callable)


@dataclass(frozen=True)
class RouteProps:
    """The properties of one route."""

    generation: bool = False  # queues a generation: counted against MAX_IN_FLIGHT
    public: bool = False  # answered without a tenant API key, exempt from rate limits
    # An operator surface: answered only to the operator credential (OPERATOR_KEYS; a
    # tenant key does not open it), 404 when none is configured (server/web/operator_auth.py).
    operator: bool = False
    logged: bool = True  # one record in the request log (probes are not)
    openai: bool = False  # OpenAI's error shape and statuses (400 for invalid bodies)


# The kinds of route this server has.
TASK = RouteProps(generation=True)
OPENAI = RouteProps(openai=True)
OPENAI_GENERATION = RouteProps(generation=True, openai=True)
PROBE = RouteProps(public=True, logged=False)  # polled all day by balancers and probes
# Scraped all day by Prometheus with the operator credential instead of a tenant key.
OPERATOR = RouteProps(public=True, logged=False, operator=True)
PUBLIC_DOC = RouteProps(public=True)
# Unmatched paths: a key is required (a scanner learns nothing), our error shape.
DEFAULT = RouteProps()


def declare(props: RouteProps) -> Callable[[View], View]:
    """Mark a view function with its route's properties (put it under ``@bp.post``)."""
    def mark(view: View) -> View:
        view.route_props = props  # type: ignore[attr-defined]
        return view
    return mark


def register_family(app: Flask, blueprint: Blueprint, props: RouteProps) -> None:
    """Register ``blueprint``; paths under its prefix that match no view get ``props``."""
    app.register_blueprint(blueprint)
    app.extensions.setdefault("route_families", []).append((blueprint.url_prefix, props))


def current() -> RouteProps:
    """The properties of the route this request reached (DEFAULT outside a request)."""
    if not has_request_context():
        return DEFAULT
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    props = getattr(view, "route_props", None)
    if props is not None:
        return props
    for prefix, family in current_app.extensions.get("route_families", []):
        if request.path == prefix or request.path.startswith(prefix + "/"):
            return family
    return DEFAULT
