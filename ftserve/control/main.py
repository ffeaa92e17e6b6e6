"""create_app(settings, roles): the api role (files, jobs, models) and/or the inference role in one FastAPI app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ftserve.control.api import batches, evals, files, fine_tuning, graders, metrics, models, proxy, uploads
from ftserve.control.api.errors import install_error_handlers
from ftserve.control.api.limits import BodyLimit
from ftserve.control.api.request_ids import RequestId
from ftserve.control.web import install_dashboard
from ftserve.core.config import Settings

ROLES = frozenset({"api", "inference"})


def _document_errors_not_422(app: FastAPI) -> None:
    """ftserve answers invalid input with 400 in OpenAI's envelope, never 422: keep /docs truthful."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings, roles: frozenset[str] | set[str] = ROLES) -> FastAPI:
    """Build the app for the given roles; the inference role (and torch) is imported only when asked for."""
    unknown = set(roles) - ROLES
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loops = [asyncio.create_task(start()) for start in app.state.background]
        yield
        for loop in loops:
            loop.cancel()
        for close in app.state.shutdown:
            result = close()
            if asyncio.iscoroutine(result):
                await result

    app = FastAPI(
        title="ftserve",
        version="0.1.0",
        lifespan=lifespan,
        description="Self-hosted LoRA fine-tuning with OpenAI's fine-tuning API",
    )
    app.state.settings = settings
    app.state.roles = frozenset(roles)
    # What each role adds: loops to run while serving, closers for shutdown, and listeners told when a
    # fine-tuned model is deleted (the inference role unloads its adapter).
    app.state.background = []  # list[Callable[[], Awaitable[None]]]
    app.state.shutdown = []  # list[Callable[[], Any]]
    app.state.model_deleted = []  # list[Callable[[ResolvedModel], None]]
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes, part_limit=settings.max_upload_part_bytes)
    metrics.install(app)
    app.add_middleware(RequestId)

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, object]:
        return {"status": "ok", "roles": sorted(roles)}

    _document_errors_not_422(app)
    if "api" in roles:
        from ftserve.control.services.reaper import run_forever

        app.include_router(files.router)
        app.include_router(uploads.router)
        app.include_router(fine_tuning.router)
        app.include_router(models.router)
        app.include_router(batches.router)
        app.include_router(graders.router)
        app.include_router(evals.router)
        install_dashboard(app)
        reaper: Callable[[], Awaitable[None]] = lambda: run_forever(settings)  # noqa: E731
        app.state.background.append(reaper)
    if "inference" in roles:
        from ftserve.control.services.batch_store import SqlBatchStore, runner_id
        from ftserve.control.services.eval_store import SqlEvalStore
        from ftserve.control.services.response_store import SqlResponseStore
        from ftserve.control.services.serving_catalog import SqlModelCatalog
        from ftserve.serving.app import install  # the inference role: engine, torch and the model code load here

        catalog, store = SqlModelCatalog(settings), SqlBatchStore(settings, runner_id())
        evals_store = SqlEvalStore(settings, runner_id())
        install(app, settings, catalog, store, SqlResponseStore(settings), evals_store, sweep="api" not in roles)
    elif "api" in roles and settings.inference_url:
        # A separate inference role: forward the completion paths so clients keep one base URL.
        proxy.install(app, settings.inference_url)
    return app
