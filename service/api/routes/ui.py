"""GET /ui: the built-in downloads page, and GET /ui/config.json, the settings it reads.

The page is static (service/api/static/ui.html, ui.css, ui.js: no build step, no CDN), so the
few values it needs from the server's settings come from a small JSON document instead of
being templated into the HTML; that keeps the Content-Security-Policy free of inline code.
"""

from __future__ import annotations

from importlib import resources as package_files

from starlette.requests import Request
from starlette.responses import HTMLResponse

from service.api.responses import JSONResponse

PAGE = package_files.files("service.api") / "static" / "ui.html"

# Only the page's own files: no inline script or style, no third party. The download link is a
# plain navigation (302 to S3) and the Jaeger link opens elsewhere, so neither needs a source.
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


async def page(request: Request) -> HTMLResponse:
    """The downloads page, under a CSP that allows only its own scripts and styles."""
    return HTMLResponse(
        PAGE.read_text(),
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
    )


async def config(request: Request) -> JSONResponse:
    """What the page needs from the settings: the Jaeger UI to link trace ids to, if any."""
    settings = request.app.state.runtime.settings
    jaeger = getattr(settings, "jaeger_ui_url", None)  # JAEGER_UI_URL; unset = no trace links
    return JSONResponse(
        {
            "jaegerUrl": str(jaeger).rstrip("/") if jaeger else None,
            "pollIntervalS": settings.poll_interval_s,
        },
        headers={"Cache-Control": "no-cache"},
    )
