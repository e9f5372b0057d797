"""The console's HTTP side: server-rendered pages for analysts and a small JSON API for integrations.

Security, as the pages are built: every page and API call needs a session (an HttpOnly, SameSite=Strict
cookie, Secure when the console is served over TLS or behind it) or an API token (`Authorization: Bearer`,
the API only); every state change through a form carries the session's CSRF token (the sign-in form a
token of its own, double-submitted in a cookie); templates escape everything they render (autoescape on);
no script at all, and a Content-Security-Policy that allows none. Roles are enforced in ConsoleService.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from scorer.cases.model import OUTCOMES, CaseError
from scorer.console.forms import (
    FLASH_COOKIE,
    BadRequest,
    Form,
    actor_of,
    back,
    closing_from,
    flash,
    json_response,
    local_link,
    queue_filter,
    quoted,
    read_body,
    read_form,
    remote_addr,
    required,
    same,
    unauthorized,
)
from scorer.console.service import ConsoleService, Forbidden, Unavailable
from scorer.db.accounts import Principal

SESSION_COOKIE = "scorer_session"
LOGIN_CSRF_COOKIE = "scorer_login_csrf"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
Handler = Callable[[Request], Awaitable[Response]]


def templates() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(str(resources.files("scorer.console") / "templates"))
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)


class ConsoleApp:
    """Builds the Starlette application over a ConsoleService."""

    def __init__(
        self,
        service: ConsoleService,
        secure_cookies: bool,
        ready: Callable[[], bool],
        policy: Callable[[], str],
    ) -> None:
        self.service = service
        self.policy = policy  # the decision policy in force, as words (scorer-control, refreshed apart)
        self.secure = secure_cookies
        self.ready = ready
        self.env = templates()
        self.css = (resources.files("scorer.console") / "static" / "console.css").read_bytes()

    def starlette(self) -> Starlette:
        pages: list[tuple[str, Handler, list[str]]] = [
            ("/login", self.login_page, ["GET"]),
            ("/login", self.login, ["POST"]),
            ("/logout", self.logout, ["POST"]),
            ("/", self.queue_page, ["GET"]),
            ("/case", self.case_page, ["GET"]),
            ("/case/take", self.take, ["POST"]),
            ("/case/assign", self.assign, ["POST"]),
            ("/case/note", self.note, ["POST"]),
            ("/case/close", self.close, ["POST"]),
            ("/cases/bulk-close", self.bulk_close, ["POST"]),
            ("/api/v1/cases", self.api_cases, ["GET"]),
            ("/api/v1/case", self.api_case, ["GET"]),
            ("/api/v1/case/verdict", self.api_verdict, ["POST"]),
            ("/static/console.css", self.stylesheet, ["GET"]),
            ("/healthz", self.healthz, ["GET"]),
            ("/readyz", self.readyz, ["GET"]),
        ]
        routes = [Route(path, self._guarded(path, fn), methods=m) for path, fn, m in pages]
        return Starlette(routes=routes)

    def _guarded(self, route: str, fn: Handler) -> Handler:
        """The handler with the security headers, the timing metric and errors as pages or JSON."""
        api = route.startswith("/api/")

        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await fn(request)
            except (BadRequest, CaseError) as exc:
                response = self._error(request, api, 422 if isinstance(exc, BadRequest) else 409, str(exc))
            except Forbidden as exc:
                response = self._error(request, api, 403, str(exc))
            except Unavailable as exc:
                response = self._error(request, api, 503, str(exc))
            response.headers.update(HEADERS)
            self.service.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
            return response

        return handle

    # sign-in --------------------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        return self._login_form(request, 200, None, "")

    def _login_form(self, request: Request, status: int, message: str | None, name: str) -> Response:
        token = secrets.token_urlsafe(24)
        response = self._page("login.html", None, status=status, login_csrf=token, message=message, name=name)
        self._cookie(response, LOGIN_CSRF_COOKIE, token, max_age=3600)
        return response

    async def login(self, request: Request) -> Response:
        form = await read_form(request)
        if not same(form.get("csrf"), request.cookies.get(LOGIN_CSRF_COOKIE)):
            return self._error(request, False, 403, "the sign-in form expired: load it again")
        name, password = form.get("name", ""), form.get("password", "")
        try:
            tokens = await run_in_threadpool(self.service.sign_in, name, password, remote_addr(request))
        except Forbidden as exc:
            return self._login_form(request, 429, str(exc), name)
        if tokens is None:
            return self._login_form(request, 401, "wrong name or password", name)
        response = RedirectResponse("/", status_code=303)
        self._cookie(response, SESSION_COOKIE, tokens[0], max_age=12 * 3600)
        response.delete_cookie(LOGIN_CSRF_COOKIE)
        return response

    async def logout(self, request: Request) -> Response:
        who, form = await self._changing(request)
        if isinstance(who, Response):
            return who
        await run_in_threadpool(self.service.sign_out, request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # pages ----------------------------------------------------------------------------------------------

    async def queue_page(self, request: Request) -> Response:
        who = await self._signed_in(request)
        if who is None:
            return RedirectResponse("/login", status_code=303)
        flt = queue_filter(request.query_params, who.name)
        content = await run_in_threadpool(self.service.queue, flt)
        args = dict(request.query_params)

        def page_link(offset: int) -> str:
            return "/?" + urlencode({**args, "offset": max(0, offset)})

        return self._page(
            "queue.html", who, cases=content.cases, capacity=content.capacity, alerts_24h=content.alerts_24h,
            figures=content.figures, policy=self.policy(), flt=flt, outcomes=OUTCOMES, page_link=page_link,
            message=flash(request),
        )  # fmt: skip

    async def case_page(self, request: Request) -> Response:
        who = await self._signed_in(request)
        if who is None:
            return RedirectResponse("/login", status_code=303)
        case_id = request.query_params.get("id", "")
        detail = await run_in_threadpool(self.service.case, case_id)
        if detail is None:
            return self._error(request, False, 404, f"no case {case_id!r}")
        rules = sorted({t.rule_id for t in detail.transactions if t.rule_id})
        return self._page(
            "case.html", who, case=detail, outcomes=OUTCOMES, rules_hit=rules,
            message=flash(request),
        )  # fmt: skip

    async def stylesheet(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css")

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        ok = await run_in_threadpool(self.ready)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    # changes --------------------------------------------------------------------------------------------

    async def take(self, request: Request) -> Response:
        who, _ = await self._changing(request)
        if isinstance(who, Response):
            return who
        case_id = request.query_params.get("id", "")
        await run_in_threadpool(self.service.assign, actor_of(who, request), case_id, who.name)
        return back(f"/case?id={quoted(case_id)}", "you took the case")

    async def assign(self, request: Request) -> Response:
        who, form = await self._changing(request)
        if isinstance(who, Response):
            return who
        case_id = required(form, "case_id")
        assignee = form.get("assignee", "").strip() or None
        await run_in_threadpool(self.service.assign, actor_of(who, request), case_id, assignee)
        return back(f"/case?id={quoted(case_id)}", f"assigned to {assignee}" if assignee else "unassigned")

    async def note(self, request: Request) -> Response:
        who, form = await self._changing(request)
        if isinstance(who, Response):
            return who
        case_id = required(form, "case_id")
        await run_in_threadpool(self.service.note, actor_of(who, request), case_id, form.get("text", ""))
        return back(f"/case?id={quoted(case_id)}", "note added")

    async def close(self, request: Request) -> Response:
        who, form = await self._changing(request)
        if isinstance(who, Response):
            return who
        closing = closing_from(form)
        verdict = await run_in_threadpool(self.service.close, actor_of(who, request), closing)
        done = f"case {closing.case_id} closed as {closing.outcome}: {len(verdict.labels)} labels published"
        return back(f"/case?id={quoted(closing.case_id)}", done)

    async def bulk_close(self, request: Request) -> Response:
        who, form = await self._changing(request)
        if isinstance(who, Response):
            return who
        ids = [v for k, v in form.items_multi if k == "case_id"]
        results = await run_in_threadpool(
            self.service.bulk_close, actor_of(who, request), ids, required(form, "outcome")
        )
        refused = [f"{c}: {why}" for c, why in results if why]
        done = f"{len(results) - len(refused)} closed" + (
            f"; refused {'; '.join(refused)}" if refused else ""
        )
        return back("/", done)

    # the JSON API ---------------------------------------------------------------------------------------

    async def api_cases(self, request: Request) -> Response:
        who = await self._bearer(request)
        if who is None:
            return unauthorized()
        content = await run_in_threadpool(self.service.queue, queue_filter(request.query_params, who.name))
        return json_response(
            {"cases": [asdict(c) for c in content.cases], "capacity": asdict(content.capacity)}
        )

    async def api_case(self, request: Request) -> Response:
        who = await self._bearer(request)
        if who is None:
            return unauthorized()
        detail = await run_in_threadpool(self.service.case, request.query_params.get("id", ""))
        if detail is None:
            return JSONResponse({"error": "no such case"}, status_code=404)
        return json_response(asdict(detail))

    async def api_verdict(self, request: Request) -> Response:
        who = await self._bearer(request)
        if who is None:
            return unauthorized()
        try:
            body = orjson.loads(await read_body(request))
        except orjson.JSONDecodeError as exc:
            raise BadRequest("the body is not JSON") from exc
        if not isinstance(body, dict):
            raise BadRequest("the body is a JSON object")
        closing = closing_from(Form([(k, str(v)) for k, v in body.items() if v is not None]))
        verdict = await run_in_threadpool(self.service.close, actor_of(who, request), closing)
        return json_response(
            {
                "case": asdict(verdict.summary),
                "labels": [asdict(lb) for lb in verdict.labels],
                "reversal": verdict.reversal,
            }
        )

    # helpers --------------------------------------------------------------------------------------------

    async def _signed_in(self, request: Request) -> Principal | None:
        token = request.cookies.get(SESSION_COOKIE)
        return None if not token else await run_in_threadpool(self.service.session, token)

    async def _bearer(self, request: Request) -> Principal | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return await run_in_threadpool(self.service.api_token, token.strip())

    async def _changing(self, request: Request) -> tuple[Principal | Response, Form]:
        """The signed-in user and the form of a state change, or the response refusing it (no session:
        back to sign-in; a missing or wrong CSRF token: 403)."""
        who = await self._signed_in(request)
        if who is None:
            return RedirectResponse("/login", status_code=303), Form([])
        form = await read_form(request)
        if not same(form.get("csrf"), who.csrf_token):
            return self._error(request, False, 403, "missing or wrong CSRF token: reload the page"), form
        return who, form

    def _page(self, template: str, who: Principal | None, status: int = 200, **values: Any) -> Response:
        values.setdefault("message", None)
        html = self.env.get_template(template).render(
            who=who, csrf=who.csrf_token if who else "", message_kind="info", **values
        )
        response = HTMLResponse(html, status_code=status)
        if values["message"] is not None:
            response.delete_cookie(FLASH_COOKIE, path="/")  # shown once
        return response

    def _error(self, request: Request, api: bool, status: int, reason: str) -> Response:
        if api:
            return JSONResponse({"error": reason}, status_code=status)
        titles = {403: "Not allowed", 404: "Not found", 409: "Refused", 422: "Cannot read the request",
                  503: "Unavailable"}  # fmt: skip
        html = self.env.get_template("error.html").render(
            who=None, csrf="", status=status, title=titles.get(status, "Error"), reason=reason,
            back=request.headers.get("referer") if local_link(request.headers.get("referer")) else "/",
            message=None, message_kind="error",
        )  # fmt: skip
        return HTMLResponse(html, status_code=status)

    def _cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path="/", httponly=True, samesite="strict", secure=self.secure
        )
