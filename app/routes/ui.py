"""GET / and GET /ui/{name}: the page for people and its assets (static files in `app/static`).

The page is a client of the public API like any other: it calls /models, /classify, /encode,
/decode, /sample and /impute with the API key typed into it. It holds no data, so it is open
even when a key is configured (as /docs is); `MODELSERVE_UI=false` leaves the router out (404).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC = Path(__file__).resolve().parent.parent / "static"

# Everything the page loads comes from this origin: no CDN, no inline script or style.
# blob: and data: for the previews of picked images and the canvases' exports.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)

router = APIRouter(include_in_schema=False)

# Starlette's file serving (content types, ETag and 304, no path escapes) behind our own routes,
# so each request is counted under its route template like every other (a mount is not).
files = StaticFiles(directory=STATIC)


@router.get("/")
async def index(request: Request) -> Response:
    """The page itself; its scripts and styles are under /ui/."""
    response = await files.get_response("index.html", request.scope)
    response.headers.update(
        {
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",  # revalidated (ETag), so a new release shows at once
        }
    )
    return response


@router.get("/ui/{name}")
async def asset(name: str, request: Request) -> Response:
    """A script or style sheet of the page (404 for anything else)."""
    response = await files.get_response(name, request.scope)
    response.headers.update({"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
    return response
