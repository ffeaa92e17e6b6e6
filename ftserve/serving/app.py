"""Add the inference role to an app: the engine, its routes, unloading deleted models, the sweep, and the
Batch API's runner."""

from __future__ import annotations

from fastapi import FastAPI

from ftserve.core.config import Settings
from ftserve.core.resolved import ResolvedModel
from ftserve.serving.backends.dispatch import Backends
from ftserve.serving.batches import BatchRunner
from ftserve.serving.ports import BatchStore, ModelCatalog, ResponseStore
from ftserve.serving.refs import adapter_key
from ftserve.serving.response_routes import router as responses_router
from ftserve.serving.routes import router
from ftserve.serving.sweep import sweep_forever


def install(
    app: FastAPI, settings: Settings, catalog: ModelCatalog, batches: BatchStore, responses: ResponseStore, sweep: bool
) -> None:
    """Serve completions from this process, with the control plane's ports (what model names mean, the Batch
    API's store, the Responses API's stored responses); `sweep`: no api role here, so ask the catalog now and then
    which adapters were deleted."""
    # Each base's own engine: ftserve's (builtin) or its vLLM servers (vllm), per the registry.
    engine = Backends(settings)
    app.state.engine = engine
    app.state.catalog = catalog
    app.state.responses = responses
    app.include_router(router)
    app.include_router(responses_router)

    def unload(resolved: ResolvedModel) -> None:
        if resolved.job_id is not None:
            engine.unload(resolved.base, adapter_key(resolved.job_id, resolved.step))

    app.state.model_deleted.append(unload)
    if sweep:
        app.state.background.append(lambda: sweep_forever(engine, catalog, settings.adapter_sweep_seconds))
    # The Batch API runs here, through this engine; it leaves its batch (lease released) before the engine stops.
    runner = BatchRunner(engine, settings, batches, catalog, responses)
    app.state.background.append(runner.run_forever)
    app.state.shutdown.append(runner.stop)
    app.state.shutdown.append(engine.close)
