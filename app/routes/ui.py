"""GET /: the page for people, and its assets under /ui/ (static files in `app/static`).

The page is a client of the public API like any other: it calls /models, /classify, /encode,
/decode, /sample and /impute with the API key typed into it. It holds no data, so it is open
even when a key is configured (as /docs is); `MODELSERVE_UI=false` leaves it out (404).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"

# Everything the page loads comes from this origin: no CDN, no inline script or style.
# blob: and data: for the previews of picked images and the canvases' exports.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The page itself; its scripts and styles are under /ui/."""
    return FileResponse(
        STATIC / "index.html",
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",  # revalidated (ETag), so a new release shows at once
        },
    )


def install(app: FastAPI) -> None:
    """Serve the page at / and its assets at /ui/ (no authentication: they hold no data)."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=STATIC), name="ui")
