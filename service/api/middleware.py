"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and cost per request).

Order, outermost first (see app.py): Edge -> CORS (Starlette's, entered only by requests with
an Origin header) -> RateLimit -> the route.
Edge is one layer rather than four (client address, request context, telemetry, headers):
each layer costs a coroutine call and each `send` wrapper one more call per ASGI message, on
every request; merged, the status route measured faster (loadtest/bench_api.py,
docs/benchmarks.md).
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Awaitable, Iterable

import structlog
from starlette.datastructures import Headers
from starlette.middleware import cors
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_body
from service.api.ratelimit import RateLimiter
from service.api.responses import JSONResponse
from service.settings import REQUEST_ID_PATTERN
from service.telemetry import metrics, tracing
from service.telemetry.logging import access_logger, get_logger

log = get_logger("service.api")
REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Strict-Transport-Security": "max-age=15552000; includeSubDomains",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "X-Permitted-Cross-Domain-Policies": "none",
}
RawHeaders = list[tuple[bytes, bytes]]
# Set on every response that lacks them. `Vary: Origin` too: CORS answers differ by Origin, so
# caches must key on it also for the requests without one, which skip the CORS layer.
DEFAULT_HEADERS = [
    *((name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()),
    (b"vary", b"Origin"),
]
DEFAULT_NAMES = frozenset(name for name, _ in DEFAULT_HEADERS)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Response headers an inner layer asks Edge to set (the rate limiter's), as ASGI header pairs.
EXTRA_HEADERS = "response_headers"


def new_request_id() -> str:
    """A random UUID4 as text: `str(uuid.uuid4())`'s value (16 bytes from os.urandom, the version
    and variant bits set) for half its CPU, which builds a UUID object to format it once; every
    request without its own id pays this."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _trusted(host: str, networks: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


def client_address(scope: Scope, trusted: tuple[Network, ...]) -> str | None:
    """The client's address: X-Forwarded-For / X-Real-IP only when the peer is a trusted proxy.

    X-Forwarded-For is read right to left, skipping trusted hops: the first untrusted address
    is the client. A client talking to us directly cannot choose its own rate-limit bucket.
    """
    client = scope.get("client")
    if not client or not _trusted(client[0], trusted):
        return None
    headers = Headers(scope=scope)
    hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
    chosen = next((h for h in reversed(hops) if not _trusted(h, trusted)), None)
    return chosen or (hops[0] if hops else headers.get("x-real-ip", "").strip() or None)


class EdgeMiddleware:
    """What every HTTP request gets on its way in and every response on its way out.

    In: the real client address (from a trusted proxy's headers), a request id (a sane client
    value echoed, else a UUID4) bound to the log context. Out: X-Request-ID, X-Trace-Id when
    tracing, the headers inner layers left in `scope["state"][EXTRA_HEADERS]`, and the
    DEFAULT_HEADERS a response lacks. After: request metrics by route template (never the raw
    path: job ids would make one time series per job) and one access log line. A JSON 500 with
    the request id is the last resort for an unhandled error.
    """

    def __init__(self, app: ASGIApp, trusted: Iterable[Network] = ()) -> None:
        self.app = app
        self.trusted = tuple(trusted)
        self.with_trace_header = tracing.enabled()
        self.access = access_logger()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        if self.trusted and (chosen := client_address(scope, self.trusted)):
            scope["client"] = (chosen, 0)
        request_id = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"x-request-id"), "")
        if not REQUEST_ID.match(request_id):
            request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        trace_id = tracing.current_trace_id() if self.with_trace_header else None
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                new = [(b"x-request-id", request_id.encode()), *state.get(EXTRA_HEADERS, ())]
                if trace_id:
                    new.append((b"x-trace-id", trace_id.encode()))
                headers = message.get("headers", ())
                present = {name for name, _ in headers}
                ours = {name for name, _ in new}
                if present.isdisjoint(ours) and present.isdisjoint(DEFAULT_NAMES):  # the usual case
                    headers = [*headers, *new, *DEFAULT_HEADERS]
                else:
                    headers = [item for item in headers if item[0] not in ours]  # ours win
                    present |= ours
                    headers += new
                    headers += [item for item in DEFAULT_HEADERS if item[0] not in present]
                message["headers"] = headers
            await send(message)

        metrics.IN_PROGRESS.add(1)
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
            metrics.IN_PROGRESS.add(-1)
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.observe_request(route, scope["method"], status, elapsed)
            self.access.info(
                "request",
                method=scope["method"],
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                client=(scope.get("client") or ("-",))[0],
                request_id=request_id,
            )
            structlog.contextvars.unbind_contextvars("request_id")


class CORSMiddleware(cors.CORSMiddleware):
    """Starlette's CORS, entered only by requests that carry an Origin header.

    A request without one is not a CORS request: all the layer would do is add `Vary: Origin`
    (Edge's DEFAULT_HEADERS has it) at the cost of a `send` wrapper and a header rewrite, a
    measurable share of a status request (docs/benchmarks.md). Not a coroutine itself: the
    caller awaits the inner layer's directly, one frame less to create, and to pass through
    each time the request resumes after a wait (the rate limit's, a Redis read).
    """

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "http" and any(name == b"origin" for name, _ in scope["headers"]):
            return super().__call__(scope, receive, send)
        return self.app(scope, receive, send)


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
        scope.setdefault("state", {})[EXTRA_HEADERS] = decision.raw_headers()  # Edge sets them: no wrapper
        await self.app(scope, receive, send)
