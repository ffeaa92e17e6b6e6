"""/v1/batches: create, list, retrieve, cancel (the inference role's runner does the work)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query

from ftserve.control.api.deps import OrgDep, SessionDep, SettingsDep
from ftserve.control.services import batches as service
from ftserve.control.services import idempotency
from ftserve.core.schemas.batches import BatchCreate, BatchObject
from ftserve.core.schemas.common import ListPage
from ftserve.core.schemas.errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=ERROR_RESPONSES)


@router.post("", response_model=BatchObject)
def create_batch(
    body: BatchCreate,
    session: SessionDep,
    settings: SettingsDep,
    org: OrgDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Any:
    with idempotency.once(session, settings, org, idempotency_key, "/v1/batches") as slot:
        if slot.stored is not None:
            return slot.stored
        slot.result = service.to_wire(service.create_batch(session, org, body))
    return slot.result


@router.get("", response_model=ListPage[BatchObject])
def list_batches(
    session: SessionDep, org: OrgDep, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> ListPage[BatchObject]:
    rows, has_more = service.list_batches(session, org, after, limit)
    data = [service.to_wire(b) for b in rows]
    return ListPage[BatchObject](
        data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )


@router.get("/{batch_id}", response_model=BatchObject)
def retrieve_batch(batch_id: str, session: SessionDep, org: OrgDep) -> BatchObject:
    return service.to_wire(service.get_batch(session, org, batch_id))


@router.post("/{batch_id}/cancel", response_model=BatchObject)
def cancel_batch(batch_id: str, session: SessionDep, org: OrgDep) -> BatchObject:
    return service.to_wire(service.cancel_batch(session, org, batch_id))
