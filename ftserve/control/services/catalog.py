"""Model names: base models from settings, fine-tuned models and checkpoints from the DB, scoped to an org."""

from __future__ import annotations

import io
import zipfile

from sqlalchemy import delete as sa_delete
from sqlalchemy import select
from sqlalchemy.orm import Session

from ftserve.control.db.tables import Checkpoint, FineTunedModel
from ftserve.core.config import Settings
from ftserve.core.errors import NotFound, PermissionDenied, quote
from ftserve.core.ids import now
from ftserve.core.resolved import ResolvedModel
from ftserve.core.storage import Storage

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
__all__ = ["ResolvedModel"]  # re-exported: the catalog's callers name what it returns from here


def resolve(session: Session, settings: Settings, org: str, name: str, param: str = "model") -> ResolvedModel:
    """Resolve a model name for this org; another org's model is the same 404 as a missing one."""
    if name in settings.base_models:
        return ResolvedModel(name=name, base=name)
    row = session.get(FineTunedModel, name)
    if row is None or row.org_id != org or row.deleted_at is not None:
        raise model_not_found(name, param)
    return ResolvedModel(name=row.id, base=row.base_model, job_id=row.job_id, step=row.step)


def model_not_found(name: str, param: str = "model") -> NotFound:
    return NotFound(
        f"The model {quote(name)} does not exist or you do not have access to it.", param=param, code="model_not_found"
    )


def list_models(session: Session, settings: Settings, org: str) -> list[tuple[str, int, str]]:
    """(id, created, owned_by) for every base and this org's live fine-tuned models and checkpoints."""
    out = [(name, 0, "ftserve") for name in settings.base_models]
    rows = session.scalars(
        select(FineTunedModel)
        .where(FineTunedModel.org_id == org, FineTunedModel.deleted_at.is_(None))
        .order_by(FineTunedModel.created_at, FineTunedModel.id)
    )
    out.extend((r.id, r.created_at, org) for r in rows)
    return out


def register(session: Session, name: str, org: str, base: str, job_id: str, step: int | None) -> FineTunedModel:
    row = FineTunedModel(id=name, org_id=org, base_model=base, job_id=job_id, step=step, created_at=now())
    session.merge(row)
    return row


def servable_adapters(session: Session, adapters: set[tuple[str, int | None]]) -> set[tuple[str, int | None]]:
    """Those (job id, step) adapters that still back a model nobody deleted."""
    if not adapters:
        return set()
    rows = session.execute(
        select(FineTunedModel.job_id, FineTunedModel.step).where(
            FineTunedModel.job_id.in_({job for job, _ in adapters}), FineTunedModel.deleted_at.is_(None)
        )
    )
    return {(job, step) for job, step in rows} & adapters


def delete_checkpoints(session: Session, settings: Settings, checkpoints: list[Checkpoint]) -> int:
    """Delete checkpoints: their rows, the servable models they registered, and their adapter files."""
    storage = Storage(settings)
    for ckpt in checkpoints:
        session.execute(sa_delete(FineTunedModel).where(FineTunedModel.id == ckpt.fine_tuned_model_checkpoint))
        session.delete(ckpt)
        storage.delete_adapter(ckpt.job_id, ckpt.step_number)
    return len(checkpoints)


def delete(session: Session, settings: Settings, org: str, name: str) -> ResolvedModel:
    """Mark a fine-tuned model deleted; base models cannot be deleted."""
    resolved = resolve(session, settings, org, name)
    if resolved.is_base:
        raise PermissionDenied(f"Base model {quote(name)} cannot be deleted", param="model", code="model_not_deletable")
    row = session.get(FineTunedModel, name)
    assert row is not None
    row.deleted_at = now()
    session.commit()
    return resolved


def adapter_archive(session: Session, settings: Settings, org: str, name: str) -> tuple[str, bytes]:
    """(file name, zip bytes) of a fine-tuned model's adapter directory, as peft and vLLM load it."""
    resolved = resolve(session, settings, org, name)
    if resolved.job_id is None:  # the model exists, its adapter does not
        raise NotFound(
            f"{quote(name)} is a base model; only fine-tuned models have adapters",
            param="model",
            code="not_a_fine_tuned_model",
        )
    folder = Storage(settings).adapter_if_complete(resolved.job_id, resolved.step)
    files = [folder / f for f in ADAPTER_FILES if (folder / f).is_file()] if folder is not None else []
    if len(files) != len(ADAPTER_FILES):
        raise model_not_found(name)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in files:
            zf.write(f, arcname=f.name)
    safe = name.replace(":", "_").replace("/", "_")
    return f"{safe}.zip", buf.getvalue()
