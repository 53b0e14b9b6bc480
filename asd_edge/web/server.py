"""The dashboard's HTTP server (Starlette on uvicorn): pages, the devices' state as JSON,
live updates as server-sent events, clips, actions and ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import structlog
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Config
from .access import Access, Visitor, is_loopback
from .actions import Actions
from .auth import LoginThrottle, verify_password
from .bridge import Bridge, BridgeError
from .clipfiles import ALERT_ID, local_clip
from .fleet import Fleet
from .hub import Hub
from .i18n import STRINGS, choose_language
from .metrics import CONTENT_TYPE, render_metrics

__all__ = ["create_app"]

log = structlog.get_logger()

HERE: Final = Path(__file__).parent
LOGIN_MAX_BYTES: Final = 4096
ACTION_MAX_BYTES: Final = 4096
CLIP_CACHE_ITEMS: Final = 8
"""Clips fetched from other devices kept in memory (at most mqtt.clip_max_mb each)."""
SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

Handler = Callable[[Request], Awaitable[Response]]


def create_app(config: Config, bridge: Bridge, fleet: Fleet, hub: Hub) -> Starlette:
    """The application; ``bridge`` is started and stopped with it."""
    access = Access(config.web)
    access.check()
    throttle = LoginThrottle()
    answering: set[str] = set()
    checking = asyncio.Semaphore(1)
    actions = Actions(config, bridge, fleet)
    clips_dir = Path(config.state_dir) / "clips"
    own = fleet.own_key()
    remote_clips: dict[tuple[str, str], bytes] = {}
    templates = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        auto_reload=False,
    )

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        lang = choose_language(request.headers.get("accept-language"))
        visitor = access.visitor(request)
        html = templates.get_template(name).render(
            lang=lang,
            t=STRINGS[lang],
            strings=STRINGS[lang],
            csrf=access.csrf_token(request),
            may_act=visitor.may_act,
            has_password=config.web.password_hash is not None,
            **context,
        )
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    def guarded(handler: Handler, *, api: bool = True) -> Handler:
        async def run(request: Request) -> Response:
            visitor = access.visitor(request)
            if not visitor.may_view:
                if api:
                    return JSONResponse({"error": "log in first"}, 401)
                return RedirectResponse(f"/login?next={request.url.path}", 303)
            return await handler(request)

        return run

    async def fleet_page(request: Request) -> Response:
        return page(request, "fleet.html", devices=fleet.summaries())

    async def device_page(request: Request) -> Response:
        key = request.path_params["key"]
        if fleet.detail(key) is None and key != own:
            return PlainTextResponse("unknown device", 404)
        return page(request, "device.html", key=key)

    async def api_fleet(_request: Request) -> Response:
        return JSONResponse({"devices": fleet.summaries()})

    async def api_device(request: Request) -> Response:
        detail = fleet.detail(request.path_params["key"])
        if detail is None:
            return JSONResponse({"error": "unknown device"}, 404)
        detail["local_clips"] = request.path_params["key"] == own
        return JSONResponse(detail)

    async def events(request: Request) -> Response:
        key = request.path_params.get("key")
        if hub.full:
            return PlainTextResponse("too many pages open on this dashboard", 503)
        return StreamingResponse(
            hub.stream(key),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def clip(request: Request) -> Response:
        key, alert_id, ext = (request.path_params[k] for k in ("key", "alert_id", "ext"))
        if not ALERT_ID.match(alert_id):
            return PlainTextResponse("not an alert id", 404)
        if key == own:
            found = await asyncio.to_thread(local_clip, clips_dir, alert_id)
            if found is None:
                return PlainTextResponse("no clip on this device for that alert", 404)
            if ext == "png":
                if found.picture is None:
                    return PlainTextResponse("no picture for this clip", 404)
                return FileResponse(found.picture, media_type="image/png")
            return FileResponse(found.audio, media_type=found.media_type)
        prefix = fleet.prefix_of(key)
        if prefix is None or ext == "png":
            return PlainTextResponse("pictures are served by the device's own dashboard", 404)
        data = remote_clips.get((key, alert_id))
        if data is None:
            try:
                data = await bridge.fetch_clip(prefix, alert_id)
            except BridgeError as exc:
                return PlainTextResponse(str(exc), 404)
            remote_clips[(key, alert_id)] = data
            while len(remote_clips) > CLIP_CACHE_ITEMS:
                remote_clips.pop(next(iter(remote_clips)))
        return Response(data, media_type=_audio_type(data))

    async def action(request: Request) -> Response:
        visitor: Visitor = access.visitor(request)
        if not visitor.may_act:
            return JSONResponse({"ok": False, "error": "log in first"}, 401)
        if not access.csrf_ok(request, visitor):
            log.warning("web_action_refused", why="csrf", client=_client(request))
            return JSONResponse({"ok": False, "error": "CSRF check failed: reload the page"}, 403)
        body = await _json_body(request, ACTION_MAX_BYTES)
        if not isinstance(body, dict):
            return JSONResponse(
                {
                    "ok": False,
                    "error": f"expected a JSON object of at most {ACTION_MAX_BYTES} bytes",
                },
                400,
            )
        key, name = request.path_params["key"], request.path_params["name"]
        status, answer = await actions.run(key, name, body)
        log.info("web_action", device=key, action=name, ok=answer.get("ok"))
        return JSONResponse(answer, status)

    async def metrics(_request: Request) -> Response:
        metrics_text = render_metrics(fleet.snapshots(), now=time.time())
        return Response(metrics_text, media_type=CONTENT_TYPE)

    async def login_page(request: Request) -> Response:
        return page(request, "login.html", next=_next(request))

    async def login(request: Request) -> Response:
        client = _client(request)
        if client in answering:
            return JSONResponse({"ok": False, "error": "one login at a time"}, 429)
        if not access.csrf_ok(request, Visitor(True, False)):  # a page from before a restart
            return JSONResponse({"ok": False, "error": "reload the page"}, 403)
        body = await _json_body(request, LOGIN_MAX_BYTES)
        password = body.get("password") if isinstance(body, dict) else None
        stored = config.web.password_hash
        right = False
        if stored is not None and isinstance(password, str):
            async with checking:  # scrypt off the event loop, one at a time
                right = await asyncio.to_thread(verify_password, password, stored)
        if right:
            throttle.succeeded(client)
            request.session.clear()
            request.session["user"] = "admin"
            request.session["since"] = time.time()
            request.session["csrf"] = secrets.token_urlsafe(32)
            log.info("web_login", client=client)
            return JSONResponse({"ok": True, "next": _next(request)})
        answering.add(client)
        try:
            delay_s = throttle.delay_s(client)
            throttle.failed(client)
            log.warning("web_login_failed", client=client, delay_s=delay_s)
            await asyncio.sleep(delay_s)
        finally:
            answering.discard(client)
        return JSONResponse({"ok": False, "error": "wrong password"}, 401)

    async def logout(request: Request) -> Response:
        if access.csrf_ok(request, access.visitor(request)):
            request.session.clear()
        return RedirectResponse("/login", 303)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        bridge.start()
        leases = asyncio.create_task(hub.run_leases())
        log.info("web_started", host=config.web.host, port=config.web.port, device=own)
        try:
            yield
        finally:
            leases.cancel()
            bridge.stop()
            log.info("web_stopped")

    routes = [
        Route("/", guarded(fleet_page, api=False)),
        Route("/device/{key}", guarded(device_page, api=False)),
        Route("/api/devices", guarded(api_fleet)),
        Route("/api/devices/{key}", guarded(api_device)),
        Route("/api/events", guarded(events)),
        Route("/api/devices/{key}/events", guarded(events)),
        Route("/clips/{key}/{alert_id}.{ext:str}", guarded(clip)),
        Route("/api/devices/{key}/actions/{name:path}", action, methods=["POST"]),
        Route("/metrics", guarded(metrics)),
        Route("/login", login_page),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=secrets.token_urlsafe(32),  # a restart logs everyone out
            session_cookie="asd_edge_session",
            max_age=int(config.web.session_hours * 3600),
            same_site="strict",
            https_only=access.cookie_secure,
        )
    ]
    middleware.append(Middleware(SecurityHeaders, loopback_names_only=access.open_view))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.fleet = fleet
    return app


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every response (a plain ASGI middleware: it leaves
    streamed responses, the live events, streaming). With ``loopback_names_only`` (the
    dashboard open without a password) a request whose Host is not a loopback name is
    refused: a web page elsewhere cannot rebind its own name to 127.0.0.1 and read it."""

    def __init__(self, app: ASGIApp, *, loopback_names_only: bool = False) -> None:
        self.app = app
        self.loopback_names_only = loopback_names_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.loopback_names_only and not _loopback_host(Headers(scope=scope).get("host")):
            refused = PlainTextResponse("this dashboard answers to 127.0.0.1 or localhost", 421)
            await refused(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


def _loopback_host(host: str | None) -> bool:
    """A Host header naming this machine (``access.is_loopback``), any port."""
    if not host:
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return is_loopback(name.lower())


def _client(request: Request) -> str:
    """Who a login comes from, for the throttle: the address, an IPv6 one by its /64 (a
    host has a whole /64 to rotate through)."""
    host = request.client.host if request.client is not None else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6 and not address.is_loopback:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


def _next(request: Request) -> str:
    """Where to go after logging in: a path on this site only (no scheme, no host, no
    backslash or control character a browser could read as ``//host``)."""
    target = request.query_params.get("next", "/")
    parts = urlsplit(target)
    safe = (
        target.startswith("/")
        and not target.startswith("//")
        and not parts.scheme
        and not parts.netloc
        and not any(c == "\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in target)
    )
    return target if safe else "/"


async def _json_body(request: Request, limit: int) -> object:
    """The request's JSON body, or None: longer than ``limit`` bytes (refused before it is
    read whole), not UTF-8 JSON, or NaN/Infinity."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            return None
    try:
        return json.loads(bytes(raw), parse_constant=_no_constant) if raw else None
    except (ValueError, RecursionError):
        return None


def _no_constant(name: str) -> None:
    raise ValueError(name)


def _audio_type(data: bytes) -> str:
    """The media type of a clip fetched from another device, from its first bytes."""
    if data[:4] == b"fLaC":
        return "audio/flac"
    return "audio/wav" if data[:4] == b"RIFF" else "application/octet-stream"
