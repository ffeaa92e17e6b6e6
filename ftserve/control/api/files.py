"""/v1/files: upload (multipart file + purpose), list, retrieve, delete, content."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from ftserve.control.api.deps import OrgDep, SessionDep, SettingsDep
from ftserve.control.services import files as service
from ftserve.control.services import idempotency
from ftserve.core.schemas.common import DeletedObject, ListPage
from ftserve.core.schemas.errors import ERROR_RESPONSES
from ftserve.core.schemas.files import UPLOAD_PURPOSES, FileObject
from ftserve.core.storage import Storage

router = APIRouter(prefix="/v1/files", tags=["files"], responses=ERROR_RESPONSES)
CHUNK = 1024 * 1024


async def read_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


@router.post("", response_model=FileObject)
async def create_file(
    session: SessionDep,
    settings: SettingsDep,
    org: OrgDep,
    file: Annotated[UploadFile, File(description="The JSONL file")],
    # The schema lists the purposes ftserve accepts; anything else is a 400 naming them.
    purpose: Annotated[str, Form(json_schema_extra={"enum": list(UPLOAD_PURPOSES)})],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Any:
    with idempotency.once(session, settings, org, idempotency_key, "/v1/files") as slot:
        if slot.stored is not None:
            return slot.stored
        row = await service.create_upload(session, settings, org, file.filename or "", purpose, read_chunks(file))
        slot.result = service.to_wire(row)
    return slot.result


@router.get("", response_model=ListPage[FileObject])
def list_files(
    session: SessionDep,
    org: OrgDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> ListPage[FileObject]:
    rows, has_more = service.list_files(session, org, purpose=purpose, after=after, limit=limit, order=order)
    data = [service.to_wire(r) for r in rows]
    return ListPage[FileObject](
        data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, session: SessionDep, org: OrgDep) -> FileObject:
    return service.to_wire(service.get_file(session, org, file_id))


@router.delete("/{file_id}", response_model=DeletedObject)
def delete_file(file_id: str, session: SessionDep, settings: SettingsDep, org: OrgDep) -> DeletedObject:
    service.delete_file(session, settings, org, file_id)
    return DeletedObject(id=file_id, object="file")


@router.get("/{file_id}/content", response_class=StreamingResponse)
def file_content(file_id: str, session: SessionDep, settings: SettingsDep, org: OrgDep) -> Response:
    row = service.get_file(session, org, file_id)
    media = "text/csv" if row.purpose == "fine-tune-results" else "application/jsonl"
    storage = Storage(settings)
    if not storage.remote:
        return FileResponse(storage.file_path(file_id), media_type=media, filename=row.filename)
    disposition = {"Content-Disposition": f'attachment; filename="{_ascii(row.filename)}"'}
    return StreamingResponse(_stream(storage.open_file(file_id)), media_type=media, headers=disposition)


def _stream(source: IO[bytes]) -> Iterator[bytes]:
    """The object's bytes in chunks, without holding the whole file (Starlette runs this in a thread)."""
    with source:
        while chunk := source.read(CHUNK):
            yield chunk


def _ascii(name: str) -> str:
    return name.encode("ascii", "replace").decode().replace('"', "_")
