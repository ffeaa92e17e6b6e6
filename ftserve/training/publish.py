"""Publish a job's outputs: each adapter is written into a private staging directory, then the training
store promotes it into place and records it in one fenced transaction (a worker that lost its lease
publishes nothing): checkpoints (servable models), resume points of paused jobs, the final model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from peft import PeftModel

from ftserve.core.ids import fine_tuned_model_name
from ftserve.core.storage import Storage
from ftserve.training import resume
from ftserve.training.export import RESULT_COLUMNS, results_csv, write_adapter
from ftserve.training.ports import JobSpec, JobStore

T = TypeVar("T")


def _staged(
    storage: Storage,
    target: str,
    model: PeftModel,
    state: dict[str, Any] | None,
    record: Callable[[Callable[[], None]], T],
) -> T:
    """Write the adapter aside, then let `record` promote it inside its transaction; never leave the stage."""
    staged = storage.staging_dir(target)
    try:
        write_adapter(model, staged, state)
        return record(lambda: storage.promote(staged, target))
    finally:
        storage.discard(staged)  # gone if promoted; a refused (fenced-out) write leaves nothing behind


def checkpoint(
    store: JobStore,
    storage: Storage,
    spec: JobSpec,
    model: PeftModel,
    final_name: str,
    step: int,
    metrics: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> str | None:
    """Save an epoch-end checkpoint (with the trainer state to resume from) and register it; its model name."""
    return _staged(
        storage,
        storage.adapter_key(spec.id, step),
        model,
        state,
        lambda place: store.checkpoint(spec.org, spec.base, final_name, step, metrics, place),
    )


def pause_point(
    store: JobStore, storage: Storage, spec: JobSpec, model: PeftModel, step: int, state: dict[str, Any]
) -> bool:
    """Save a paused job's resume point; True when the job was resumed meanwhile and training goes on."""
    return _staged(
        storage, storage.resume_key(spec.id), model, state, lambda place: store.pause_point_saved(step, place)
    )


def finish(
    store: JobStore,
    storage: Storage,
    spec: JobSpec,
    model: PeftModel,
    name: str,
    trained_tokens: int,
    rows: list[dict[str, Any]],
    columns: list[str] = RESULT_COLUMNS,
) -> None:
    """Save the final adapter, then store the result CSV, register the model and mark the job succeeded."""
    csv = results_csv(rows, columns)
    _staged(
        storage,
        storage.adapter_key(spec.id, None),
        model,
        None,
        lambda place: store.finish(spec.org, spec.base, name, trained_tokens, csv, place),
    )


def register_found_checkpoints(store: JobStore, storage: Storage, spec: JobSpec) -> None:
    """Register the complete checkpoints on disk the DB does not list: a worker saved them and was lost
    before it recorded them. Each becomes a servable checkpoint model with its event, like any other."""
    final_name = fine_tuned_model_name(spec.base, spec.org, spec.suffix, spec.id)
    for point in resume.checkpoints(storage, spec.id):
        metrics = point.progress.rows[-1] if point.progress.rows else {"step": point.progress.step}
        store.checkpoint(spec.org, spec.base, final_name, point.progress.step, metrics, lambda: None, found=True)
