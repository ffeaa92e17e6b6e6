"""Serve the dashboard: `/` is the single page, `/ui/static/*` its assets (no data lives in them), and
`/dashboard/evals/{id}` (an eval run's `report_url`) a redirect to the page's eval view."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    """The dashboard page; it asks the /v1 API for everything it shows, with the browser's stored key."""
    # no-cache: a new release's page must not pair with the old release's cached scripts.
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})


@router.get("/dashboard/evals/{eval_id}")
def eval_report(eval_id: str, run: str | None = None) -> RedirectResponse:
    """A run's `report_url`: the page's hash route for the eval, with the run selected (the page fetches both with
    the browser's key, so this address itself reveals nothing and needs none)."""
    target = f"#/evals/{quote(eval_id, safe='')}" + (f"?run={quote(run, safe='')}" if run else "")
    # Relative ("../../"), so a proxy serving the dashboard under a prefix keeps it.
    return RedirectResponse(f"../../{target}", status_code=302)


def install_dashboard(app: FastAPI) -> None:
    """Mount the dashboard page and its static assets on the api role's app."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
