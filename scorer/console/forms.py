"""Reading the console's requests (forms, JSON bodies, query strings) strictly, and the small responses
its handlers share (a redirect with a one-time message, 401, JSON)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from scorer.cases.model import OPEN_STATUSES, Actor, QueueFilter
from scorer.console.service import Closing
from scorer.db.accounts import Principal

FORM_MAX_BYTES = 64 * 1024
FLASH_COOKIE = "scorer_flash"  # the message of the change just made, shown once on the page it leads to


class BadRequest(ValueError):
    """A request the console cannot read (a missing field, a number that is not one): HTTP 400."""


class Form:
    """A urlencoded form: the last value of a field, or all of them."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items_multi = items
        self.values = dict(items)

    def get(self, name: str, default: str | None = None) -> str:
        return self.values.get(name, default if default is not None else "")


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > FORM_MAX_BYTES):
        raise BadRequest(f"a request body has at most {FORM_MAX_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX_BYTES:
            raise BadRequest(f"a request body has at most {FORM_MAX_BYTES} bytes")
    return body


async def read_form(request: Request) -> Form:
    try:
        text = (await read_body(request)).decode()
        pairs = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=500)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the form is not UTF-8 urlencoded") from exc
    return Form([(k, v) for k, values in pairs.items() for v in values])


def same(given: str | None, expected: str | None) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(str(given), str(expected))


def required(form: Form, name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise BadRequest(f"the field {name!r} is missing")
    return value


def whole_days(form: Form, name: str) -> int:
    raw = form.get(name, "").strip() or "0"
    if not raw.isdigit() or len(raw) > 4:
        raise BadRequest(f"{name} is a whole number of days")
    return int(raw)


def closing_from(form: Form) -> Closing:
    return Closing(
        case_id=required(form, "case_id"),
        outcome=required(form, "outcome"),
        from_transaction_id=form.get("from_transaction_id", "").strip() or None,
        block_days=whole_days(form, "block_days"),
        allow_rule_id=form.get("allow_rule_id", "").strip() or None,
        allow_days=whole_days(form, "allow_days"),
    )


def queue_filter(query: Mapping[str, str], me: str) -> QueueFilter:
    offset = query.get("offset", "0")
    return QueueFilter(
        assigned_to=me if query.get("mine") else None,
        unassigned=bool(query.get("unassigned")),
        action=query.get("action") or None,
        rule_id=query.get("rule") or None,
        model_version=query.get("model") or None,
        statuses=("closed",) if query.get("closed") else OPEN_STATUSES,
        offset=int(offset) if offset.isdigit() and len(offset) < 7 else 0,
    )


def actor_of(who: Principal, request: Request) -> Actor:
    return Actor(who.name, who.role, remote_addr(request))


def remote_addr(request: Request) -> str | None:
    return request.client.host if request.client else None


def quoted(value: str) -> str:
    return urlencode({"": value})[1:]


def local_link(url: str | None) -> bool:
    """A Referer worth linking back to: a path on this console (never another site)."""
    if not url:
        return False
    return url.startswith("/") and not url.startswith("//")


def back(path: str, done: str) -> Response:
    """See `path` after a change, with what was done shown once there. The message travels in a cookie only
    this console sets (never in the URL, where a link from elsewhere could put words in the console's mouth)."""
    response = RedirectResponse(path, status_code=303)
    response.set_cookie(
        FLASH_COOKIE, quoted(done[:300]), max_age=60, path="/", httponly=True, samesite="strict"
    )
    return response


def flash(request: Request) -> str | None:
    raw = request.cookies.get(FLASH_COOKIE)
    return unquote_plus(raw) if raw else None


def unauthorized() -> Response:
    return JSONResponse(
        {"error": "an API token is needed: Authorization: Bearer <token> (scorer console tokens add)"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def json_response(value: Any) -> Response:
    def default(obj: Any) -> Any:
        if isinstance(obj, datetime):
            return obj.isoformat()
        raise TypeError

    return Response(orjson.dumps(value, default=default), media_type="application/json")
