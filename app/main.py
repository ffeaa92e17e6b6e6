"""create_app(roles): the api role (files, jobs, models) and/or the inference role in one FastAPI app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app import metrics
from app.api import files, fine_tuning, models, proxy
from app.api.errors import install_error_handlers
from app.api.limits import BodyLimit
from app.api.request_ids import RequestId
from app.config import Settings, get_settings
from app.web import install_dashboard

log = logging.getLogger(__name__)
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


async def _sweep_deleted_adapters(app: FastAPI, interval: float) -> None:
    """An inference role without the api role: unload adapters whose model was deleted elsewhere."""
    while True:
        await asyncio.sleep(interval)
        try:
            unloaded = await asyncio.to_thread(app.state.engine.unload_deleted)
            if unloaded:
                log.info("unloaded %d adapters of deleted models", unloaded)
        except Exception:
            log.exception("adapter sweep failed")


def create_app(settings: Settings | None = None, roles: frozenset[str] | set[str] = ROLES) -> FastAPI:
    """Build the app for the given roles; the inference role (and torch) is imported only when asked for."""
    settings = settings or get_settings()
    unknown = set(roles) - ROLES
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loops = []
        if "api" in roles:
            from app.services.reaper import run_forever

            loops.append(asyncio.create_task(run_forever(settings)))
        elif "inference" in roles:
            loops.append(asyncio.create_task(_sweep_deleted_adapters(app, settings.adapter_sweep_seconds)))
        yield
        for loop in loops:
            loop.cancel()
        engine = getattr(app.state, "engine", None)
        if engine is not None:
            engine.close()
        client = getattr(app.state, "inference_client", None)
        if client is not None:
            await client.aclose()

    app = FastAPI(
        title="ftserve",
        version="0.1.0",
        lifespan=lifespan,
        description="Self-hosted LoRA fine-tuning with OpenAI's fine-tuning API",
    )
    app.state.settings = settings
    app.state.roles = frozenset(roles)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    metrics.install(app)

    app.add_middleware(RequestId)

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, object]:
        return {"status": "ok", "roles": sorted(roles)}

    _document_errors_not_422(app)
    if "api" in roles:
        app.include_router(files.router)
        app.include_router(fine_tuning.router)
        app.include_router(models.router)
        install_dashboard(app)
    if "inference" in roles:
        from worker.inference.engine import InferenceEngine
        from worker.inference.server import router as inference_router

        app.state.engine = InferenceEngine(settings)
        app.include_router(inference_router)
    elif "api" in roles and settings.inference_url:
        # A separate inference role: forward the completion paths so clients keep one base URL.
        proxy.install(app, settings.inference_url)
    return app
