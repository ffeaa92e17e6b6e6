"""/v1/uploads (OpenAI's Uploads API): create an upload, add parts (multipart field `data`), complete, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Header, UploadFile

from ftserve.control.api.deps import OrgDep, SessionDep, SettingsDep
from ftserve.control.api.files import read_chunks
from ftserve.control.services import idempotency
from ftserve.control.services import uploads as service
from ftserve.core.schemas.errors import ERROR_RESPONSES
from ftserve.core.schemas.uploads import UploadComplete, UploadCreate, UploadObject, UploadPartObject

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=ERROR_RESPONSES)
# OpenAPI links: the id an upload's creation returns is what its parts, complete and cancel take (tools such as
# schemathesis follow them, so its stateful phase reaches those operations with real uploads).
_UPLOAD_ID = {"upload_id": "$response.body#/id"}
LINKS = {
    "AddPart": {"operationId": "add_upload_part", "parameters": _UPLOAD_ID},
    "Complete": {"operationId": "complete_upload", "parameters": _UPLOAD_ID},
    "Cancel": {"operationId": "cancel_upload", "parameters": _UPLOAD_ID},
}


@router.post("", response_model=UploadObject, operation_id="create_upload", responses={200: {"links": LINKS}})
def create_upload(body: UploadCreate, session: SessionDep, settings: SettingsDep, org: OrgDep) -> UploadObject:
    # No Idempotency-Key here: a repeated create costs an empty pending upload, which expires on its own.
    return service.to_wire(service.create_upload(session, settings, org, body))


@router.post("/{upload_id}/parts", response_model=UploadPartObject, operation_id="add_upload_part")
async def add_upload_part(
    upload_id: str,
    session: SessionDep,
    settings: SettingsDep,
    org: OrgDep,
    data: Annotated[UploadFile, File(description="The chunk of bytes for this Part")],
) -> UploadPartObject:
    return service.part_to_wire(await service.add_part(session, settings, org, upload_id, read_chunks(data)))


@router.post("/{upload_id}/complete", response_model=UploadObject, operation_id="complete_upload")
async def complete_upload(
    upload_id: str,
    body: UploadComplete,
    session: SessionDep,
    settings: SettingsDep,
    org: OrgDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    # The path holds the upload's id (cut to what an id can be): one key completes one upload, and a retry gets
    # the completed upload back.
    path = f"/v1/uploads/{upload_id[:64]}/complete"
    with idempotency.once(session, settings, org, idempotency_key, path) as slot:
        if slot.stored is not None:
            return slot.stored
        row, file = await service.complete_upload(session, settings, org, upload_id, body)
        slot.result = service.to_wire(row, file)
    return slot.result


@router.post("/{upload_id}/cancel", response_model=UploadObject, operation_id="cancel_upload")
async def cancel_upload(upload_id: str, session: SessionDep, settings: SettingsDep, org: OrgDep) -> UploadObject:
    return service.to_wire(await service.cancel_upload(session, settings, org, upload_id))
