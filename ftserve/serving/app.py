"""Add the inference role to an app: the engine, its routes, unloading deleted models, the sweep, the Batch API's
runner and the Evals API's runner."""

from __future__ import annotations

from fastapi import FastAPI

from ftserve.core.config import Settings
from ftserve.core.resolved import ResolvedModel
from ftserve.serving.backends.dispatch import Backends
from ftserve.serving.batches import BatchRunner
from ftserve.serving.evals import EvalRunner
from ftserve.serving.ports import BatchStore, EvalStore, ModelCatalog, ResponseStore
from ftserve.serving.refs import adapter_key
from ftserve.serving.response_routes import router as responses_router
from ftserve.serving.routes import router
from ftserve.serving.sweep import sweep_forever


def install(
    app: FastAPI,
    settings: Settings,
    catalog: ModelCatalog,
    batches: BatchStore,
    responses: ResponseStore,
    evals: EvalStore,
    sweep: bool,
) -> None:
    """Serve completions from this process, with the control plane's ports (what model names mean, the Batch
    API's store, the Responses API's stored responses, the Evals API's runs); `sweep`: no api role here, so ask the
    catalog now and then which adapters were deleted."""
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
    # Eval runs, the same way (a runner of their own: a long eval never holds up the Batch API, nor the reverse).
    eval_runner = EvalRunner(engine, settings, evals, catalog, responses)
    app.state.background.append(eval_runner.run_forever)
    app.state.shutdown.append(eval_runner.stop)
    app.state.shutdown.append(engine.close)
