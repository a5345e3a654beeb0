"""``/viewer/{job_id}``: the plain HTML + JS viewer page (data comes from the JSON API)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
VIEWER_PAGE = STATIC_DIR / "viewer.html"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["viewer"])


@router.get(
    "/viewer/{job_id}",
    response_class=FileResponse,
    summary="Viewer page for one job (asks for the API key in the browser)",
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
)
def viewer_page(
    job_id: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")],
) -> FileResponse:
    del job_id  # the page reads it from its own URL
    return FileResponse(VIEWER_PAGE, media_type="text/html", headers=SECURITY_HEADERS)
