"""Publish a job's outputs: the files first (the adapter, its completion marker last), then the DB
through the training store (checkpoints registered as servable models, the final model, the result CSV)."""

from __future__ import annotations

from typing import Any

from peft import PeftModel

from app.services.training_store import JobSpec, TrainingStore
from app.storage import Storage
from training.export import RESULT_COLUMNS, results_csv, save_adapter


def checkpoint(
    store: TrainingStore,
    storage: Storage,
    spec: JobSpec,
    model: PeftModel,
    final_name: str,
    step: int,
    metrics: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> str:
    """Save an epoch-end checkpoint (with the trainer state to resume from), then register it; its model name."""
    save_adapter(model, storage.adapter_dir(spec.id, step), state)
    return store.checkpoint(spec.org, spec.base, final_name, step, metrics)


def finish(
    store: TrainingStore,
    storage: Storage,
    spec: JobSpec,
    model: PeftModel,
    name: str,
    trained_tokens: int,
    rows: list[dict[str, Any]],
    columns: list[str] = RESULT_COLUMNS,
) -> None:
    """Save the final adapter, then store the result CSV, register the model and mark the job succeeded."""
    save_adapter(model, storage.adapter_dir(spec.id, None))
    store.finish(spec.org, spec.base, name, trained_tokens, results_csv(rows, columns))
