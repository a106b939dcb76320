"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and cost per request).

Order, outermost first (see app.py): ClientAddress -> RequestContext -> CORS -> RateLimit.
"""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from collections.abc import Iterable

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_body
from service.api.ratelimit import RateLimiter
from service.telemetry import metrics, tracing
from service.telemetry.logging import get_logger

log = get_logger("service.api")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Strict-Transport-Security": "max-age=15552000; includeSubDomains",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "X-Permitted-Cross-Domain-Policies": "none",
}
RawHeaders = list[tuple[bytes, bytes]]
RAW_SECURITY_HEADERS = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _replaced(headers: Iterable[tuple[bytes, bytes]], new: RawHeaders) -> RawHeaders:
    """ASGI response headers with `new` set: same-named ones dropped, `new` appended (what
    MutableHeaders' item assignment does, in one pass over the list instead of one per name)."""
    names = {name for name, _ in new}
    return [item for item in headers if item[0] not in names] + new


def _trusted(host: str, networks: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


class ClientAddressMiddleware:
    """Take the client address from X-Forwarded-For / X-Real-IP only from a trusted proxy.

    X-Forwarded-For is read right to left, skipping trusted hops: the first untrusted address
    is the client. A client talking to us directly cannot choose its own rate-limit bucket.
    """

    def __init__(self, app: ASGIApp, trusted: Iterable[Network]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.trusted:  # no proxy configured (the default): nothing to parse per request
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and _trusted(client[0], self.trusted):
            headers = Headers(scope=scope)
            hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
            chosen = next((h for h in reversed(hops) if not _trusted(h, self.trusted)), None)
            chosen = chosen or (hops[0] if hops else headers.get("x-real-ip", "").strip() or None)
            if chosen:
                scope = {**scope, "client": (chosen, 0)}
        await self.app(scope, receive, send)


class RequestContextMiddleware:
    """Request id, security headers, an access log line, and a JSON 500 as the last resort."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = Headers(scope=scope).get("x-request-id", "")
        request_id = offered if REQUEST_ID.match(offered) else str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = _replaced(message.get("headers", ()), [(b"x-request-id", request_id.encode())])
                present = {name for name, _ in headers}
                headers += [item for item in RAW_SECURITY_HEADERS if item[0] not in present]
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled_error", path=scope["path"])
            if response_started:
                raise
            status = 500
            body = error_body(500, "An unexpected error occurred", request_id)
            await JSONResponse(body, 500)(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            log.info(
                "request",
                method=scope["method"],
                route=getattr(route, "path", "unmatched"),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                client=(scope.get("client") or ("-",))[0],
            )
            structlog.contextvars.unbind_contextvars("request_id")


class RateLimitMiddleware:
    """A fixed-window budget per client, kept in Redis so every API process shares it.

    Health probes and /metrics are exempt: an orchestrator polling them must not eat a
    client's budget nor be throttled into restarting a healthy process.
    """

    EXEMPT = frozenset({"/health/live", "/health/ready", "/metrics"})

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("anonymous",))[0]
        decision = await self.limiter.hit(client)
        if decision is None:  # Redis unreachable: fail open, the route reports its own 503
            await self.app(scope, receive, send)
            return
        if not decision.allowed:
            metrics.RATE_LIMITED.inc()
            body = error_body(429, "Too many requests; see Retry-After", scope["state"].get("request_id"))
            headers = {**decision.headers(), "Retry-After": str(decision.reset_s)}
            await JSONResponse(body, 429, headers=headers)(scope, receive, send)
            return
        raw = decision.raw_headers()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _replaced(message.get("headers", ()), raw)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TelemetryMiddleware:
    """Request metrics by route template (service/telemetry/metrics.py) and the X-Trace-Id header.

    Sits right inside ClientAddress, so the time measured covers rate limiting and error
    handling too. The route label is Starlette's matched route template (`scope["route"]`),
    never the raw path: job ids would make one time series per job.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.with_trace_header = tracing.enabled()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        trace_id = tracing.current_trace_id() if self.with_trace_header else None

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if trace_id:
                    MutableHeaders(scope=message)["X-Trace-Id"] = trace_id
            await send(message)

        metrics.HTTP_IN_PROGRESS.inc()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            metrics.HTTP_IN_PROGRESS.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.observe_request(route, scope["method"], status, time.perf_counter() - started)
