"""Serve the dashboard: `/` is the single page, `/ui/static/*` its assets (no data lives in them)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    """The dashboard page; it asks the /v1 API for everything it shows, with the browser's stored key."""
    # no-cache: a new release's page must not pair with the old release's cached scripts.
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})


def install_dashboard(app: FastAPI) -> None:
    """Mount the dashboard page and its static assets on the api role's app."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
