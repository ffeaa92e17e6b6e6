"""/v1/models: list, retrieve, delete (fine-tuned models only)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ftserve.control.api.deps import OrgDep, SessionDep, SettingsDep
from ftserve.control.services import catalog as service
from ftserve.core.schemas.common import DeletedObject, ListPage
from ftserve.core.schemas.errors import ERROR_RESPONSES, error_doc
from ftserve.core.schemas.models import ModelObject

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


@router.get("", response_model=ListPage[ModelObject])
def list_models(session: SessionDep, settings: SettingsDep, org: OrgDep) -> ListPage[ModelObject]:
    data = [ModelObject(id=i, created=c, owned_by=o) for i, c, o in service.list_models(session, settings, org)]
    return ListPage[ModelObject](data=data)


@router.get(
    "/{model:path}/adapter",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "The PEFT adapter directory as a zip"}},
)
def download_adapter(model: str, session: SessionDep, settings: SettingsDep, org: OrgDep) -> Response:
    """ftserve extension: the fine-tuned model's PEFT adapter (adapter_config.json + safetensors), e.g. for vLLM."""
    name, data = service.adapter_archive(session, settings, org, model)
    return Response(
        data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get("/{model:path}", response_model=ModelObject)
def retrieve_model(model: str, session: SessionDep, settings: SettingsDep, org: OrgDep) -> ModelObject:
    for ident, created, owner in service.list_models(session, settings, org):
        if ident == model:
            return ModelObject(id=ident, created=created, owned_by=owner)
    raise service.model_not_found(model)


@router.delete(
    "/{model:path}",
    response_model=DeletedObject,
    responses={403: error_doc("A base model cannot be deleted (code model_not_deletable)")},
)
def delete_model(
    model: str, request: Request, session: SessionDep, settings: SettingsDep, org: OrgDep
) -> DeletedObject:
    resolved = service.delete(session, settings, org, model)
    for listener in request.app.state.model_deleted:  # e.g. this process's engine unloads the adapter
        listener(resolved)
    return DeletedObject(id=model, object="model")
