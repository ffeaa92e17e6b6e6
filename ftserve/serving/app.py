"""Add the inference role to an app: the engine, its routes, unloading deleted models, the sweep, and the
Batch API's runner."""

from __future__ import annotations

from fastapi import FastAPI

from ftserve.control.services.catalog import ResolvedModel
from ftserve.core.config import Settings
from ftserve.serving.backends.dispatch import Backends
from ftserve.serving.batches import BatchRunner
from ftserve.serving.refs import adapter_key
from ftserve.serving.routes import router
from ftserve.serving.sweep import sweep_forever


def install(app: FastAPI, settings: Settings, sweep: bool) -> None:
    """Serve completions from this process; `sweep`: no api role here, so watch the DB for deleted models."""
    # Each base's own engine: ftserve's (builtin) or its vLLM servers (vllm), per the registry.
    engine = Backends(settings)
    app.state.engine = engine
    app.include_router(router)

    def unload(resolved: ResolvedModel) -> None:
        if resolved.job_id is not None:
            engine.unload(resolved.base, adapter_key(resolved.job_id, resolved.step))

    app.state.model_deleted.append(unload)
    if sweep:
        app.state.background.append(lambda: sweep_forever(engine, settings))
    # The Batch API runs here, through this engine; it leaves its batch (lease released) before the engine stops.
    runner = BatchRunner(engine, settings)
    app.state.background.append(runner.run_forever)
    app.state.shutdown.append(runner.stop)
    app.state.shutdown.append(engine.close)
