"""The data browser page: plain HTML, CSS and JavaScript served by the cloud itself (no CDN, works offline).

`GET /` is the page and `/static/*` its script and style files (cloud/static/). The page holds no
data of its own: it signs in as one or more parts (part id + secret, kept in the tab's
sessionStorage, sent as HTTP Basic auth with the `X-Capsync-Browser` header so a wrong secret
shows the page's own error rather than the browser's password prompt) and calls the query API:
`/v1/summary`, `/v1/tabular`, `/v1/binary`, `/v1/binary/{id}`, `/v1/tabular/sql` and `/mql`.
See docs/cloud.md.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: The page runs only its own scripts and talks only to its own origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def index(request: Request) -> Response:
    """`GET /`: the data browser page."""
    html = (STATIC_DIR / "index.html").read_bytes()
    return Response(html, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


class _Static(StaticFiles):
    """Static files with the page's security headers, revalidated on every load (never half cached)."""

    def file_response(self, *args, **kwargs) -> Response:  # type: ignore[override]
        response = super().file_response(*args, **kwargs)
        response.headers.update(SECURITY_HEADERS)  # index.html is a page here too: same CSP as `/`
        return response


def routes() -> list[Route | Mount]:
    """The page's routes, to add to the app."""
    return [
        Route("/", index, methods=["GET"]),
        Mount("/static", app=_Static(directory=STATIC_DIR), name="static"),
    ]
