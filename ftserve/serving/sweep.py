"""The deleted-model sweep: an inference role apart from the api never hears of a deletion, so it asks the
DB which resident adapters still back a live model and unloads the rest."""

from __future__ import annotations

import asyncio
import logging

from ftserve.serving.backends.base import Backend
from ftserve.serving.ports import ModelCatalog
from ftserve.serving.refs import parse_adapter_key

log = logging.getLogger(__name__)


def unload_deleted(engine: Backend, catalog: ModelCatalog) -> int:
    """Unload resident adapters whose model no longer exists or was deleted; how many were unloaded.

    Requests for such a model already get 404 (resolution reads the DB); this frees the memory too.
    """
    resident = engine.resident_adapters()
    if not resident:
        return 0
    servable = catalog.servable_adapters({parse_adapter_key(key) for _, key in resident})
    gone = [(base, key) for base, key in resident if parse_adapter_key(key) not in servable]
    for base, key in gone:
        engine.unload(base, key)
    return len(gone)


async def sweep_forever(engine: Backend, catalog: ModelCatalog, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            unloaded = await asyncio.to_thread(unload_deleted, engine, catalog)
            if unloaded:
                log.info("unloaded %d adapters of deleted models", unloaded)
        except Exception:
            log.exception("adapter sweep failed")
