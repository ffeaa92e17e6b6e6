"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request

from ftserve.control.api.deps import OrgDep, SessionDep, SettingsDep
from ftserve.control.services import idempotency
from ftserve.control.services import jobs as service
from ftserve.control.services.job_views import checkpoint_to_wire, event_to_wire, job_to_wire
from ftserve.core.schemas.common import ListPage
from ftserve.core.schemas.errors import ERROR_RESPONSES
from ftserve.core.schemas.jobs import FineTuningJob, JobCheckpoint, JobCreate, JobEvent

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=ERROR_RESPONSES)
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=FineTuningJob)
def create_job(
    body: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    org: OrgDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Any:
    with idempotency.once(session, settings, org, idempotency_key, "/v1/fine_tuning/jobs") as slot:
        if slot.stored is not None:
            return slot.stored
        slot.result = job_to_wire(service.create_job(session, settings, org, body))
    return slot.result


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """OpenAI's `metadata[key]=value` query syntax."""
    found = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    return found or None


@router.get("", response_model=ListPage[FineTuningJob])
def list_jobs(
    request: Request, session: SessionDep, org: OrgDep, after: str | None = None, limit: Limit = 20
) -> ListPage[FineTuningJob]:
    rows, has_more = service.list_jobs(session, org, after, limit, _metadata_filter(request))
    return ListPage[FineTuningJob](data=[job_to_wire(j) for j in rows], has_more=has_more)


@router.get("/{job_id}", response_model=FineTuningJob)
def retrieve_job(job_id: str, session: SessionDep, org: OrgDep) -> FineTuningJob:
    return job_to_wire(service.get_job(session, org, job_id))


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
def cancel_job(job_id: str, session: SessionDep, settings: SettingsDep, org: OrgDep) -> FineTuningJob:
    return job_to_wire(service.cancel_job(session, settings, org, job_id))


@router.post("/{job_id}/pause", response_model=FineTuningJob)
def pause_job(job_id: str, session: SessionDep, org: OrgDep) -> FineTuningJob:
    return job_to_wire(service.pause_job(session, org, job_id))


@router.post("/{job_id}/resume", response_model=FineTuningJob)
def resume_job(job_id: str, session: SessionDep, settings: SettingsDep, org: OrgDep) -> FineTuningJob:
    return job_to_wire(service.resume_job(session, settings, org, job_id))


@router.get("/{job_id}/events", response_model=ListPage[JobEvent])
def list_events(
    job_id: str, session: SessionDep, org: OrgDep, after: str | None = None, limit: Limit = 20
) -> ListPage[JobEvent]:
    rows, has_more = service.list_events(session, org, job_id, after, limit)
    return ListPage[JobEvent](data=[event_to_wire(e) for e in rows], has_more=has_more)


@router.get("/{job_id}/checkpoints", response_model=ListPage[JobCheckpoint])
def list_checkpoints(
    job_id: str,
    session: SessionDep,
    org: OrgDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> ListPage[JobCheckpoint]:
    rows, has_more = service.list_checkpoints(session, org, job_id, after, limit)
    data = [checkpoint_to_wire(c) for c in rows]
    return ListPage[JobCheckpoint](
        data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )
