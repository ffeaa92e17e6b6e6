"""Model names to engine references: a resolved model becomes a ModelRef with its adapter's key and directory."""

from __future__ import annotations

from pathlib import Path

from ftserve.core.resolved import ResolvedModel
from ftserve.core.storage import Storage
from ftserve.engine.engine import AdapterRef, ModelRef


def adapter_key(job_id: str, step: int | None) -> str:
    """The adapter's key within its base: `{job id}-final` or `{job id}-{step}`."""
    return f"{job_id}-{'final' if step is None else step}"


def parse_adapter_key(key: str) -> tuple[str, int | None]:
    """(job id, step or None for the final adapter): adapter_key read back."""
    job_id, _, step = key.rpartition("-")
    return job_id, None if step == "final" else int(step)


def model_ref(resolved: ResolvedModel, storage: Storage) -> ModelRef:
    """The engine's reference for a resolved model name."""
    if resolved.job_id is None:
        return ModelRef(resolved.name, resolved.base)
    job_id, step = resolved.job_id, resolved.step

    def locate() -> Path | None:
        # Only a directory the service derived and the exporter marked complete: safetensors, never pickle.
        # On a remote store this fetches a local copy (once per host: later loads find it in the cache).
        return storage.adapter_if_complete(job_id, step)

    return ModelRef(resolved.name, resolved.base, AdapterRef(adapter_key(job_id, step), locate))
