"""/v1/evals: evals, their runs and each run's output items (the inference role's eval runner does the work)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from ftserve.control.api.deps import OrgDep, SessionDep, SettingsDep
from ftserve.control.services import eval_runs as runs
from ftserve.control.services import evals as service
from ftserve.core.schemas.common import ListPage
from ftserve.core.schemas.errors import ERROR_RESPONSES
from ftserve.core.schemas.evals import (
    EvalCreate,
    EvalDeleted,
    EvalObject,
    EvalUpdate,
    OutputItemObject,
    RunCreate,
    RunDeleted,
    RunObject,
    RunStatus,
)

router = APIRouter(prefix="/v1/evals", tags=["evals"], responses=ERROR_RESPONSES)
Limit = Annotated[int, Query(ge=1, le=100)]
Order = Literal["asc", "desc"]
ModelList = Annotated[list[str] | None, Query(max_length=100)]
BracketedModels = Annotated[list[str] | None, Query(alias="model[]", max_length=100)]


def _models(model: ModelList = None, bracketed: BracketedModels = None) -> list[str] | None:
    """ftserve's extension: only evals (runs) with a run on one of these models, as `?model=a&model=b` or the
    openai SDK's `extra_query={"model": [...]}` (`model[]=a`): how the dashboard's job page finds the evals run on a
    job's fine-tuned model and checkpoints."""
    given = [*(model or []), *(bracketed or [])]
    return given or None


Models = Annotated[list[str] | None, Depends(_models)]


def _page(data: list[EvalObject] | list[RunObject] | list[OutputItemObject], has_more: bool) -> dict[str, object]:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
    }


@router.post("", response_model=EvalObject)
def create_eval(body: EvalCreate, session: SessionDep, settings: SettingsDep, org: OrgDep) -> EvalObject:
    return service.to_wire(service.create_eval(session, settings, org, body))


@router.get("", response_model=ListPage[EvalObject])
def list_evals(
    session: SessionDep,
    org: OrgDep,
    models: Models,
    after: str | None = None,
    limit: Limit = 20,
    order: Order = "asc",
    order_by: Literal["created_at", "updated_at"] = "created_at",
) -> dict[str, object]:
    rows, has_more = service.list_evals(session, org, after, limit, order, order_by, models)
    return _page([service.to_wire(e) for e in rows], has_more)


@router.get("/{eval_id}", response_model=EvalObject)
def retrieve_eval(eval_id: str, session: SessionDep, org: OrgDep) -> EvalObject:
    return service.to_wire(service.get_eval(session, org, eval_id))


@router.post("/{eval_id}", response_model=EvalObject)
def update_eval(eval_id: str, body: EvalUpdate, session: SessionDep, org: OrgDep) -> EvalObject:
    return service.to_wire(service.update_eval(session, org, eval_id, body))


@router.delete("/{eval_id}", response_model=EvalDeleted)
def delete_eval(eval_id: str, session: SessionDep, org: OrgDep) -> EvalDeleted:
    service.delete_eval(session, org, eval_id)
    return EvalDeleted(eval_id=eval_id)


@router.post("/{eval_id}/runs", response_model=RunObject)
def create_run(eval_id: str, body: RunCreate, session: SessionDep, settings: SettingsDep, org: OrgDep) -> RunObject:
    return runs.to_wire(runs.create_run(session, settings, org, eval_id, body))


@router.get("/{eval_id}/runs", response_model=ListPage[RunObject])
def list_runs(
    eval_id: str,
    session: SessionDep,
    org: OrgDep,
    models: Models,
    after: str | None = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: RunStatus | None = None,
) -> dict[str, object]:
    rows, has_more = runs.list_runs(session, org, eval_id, after, limit, order, status, models)
    return _page([runs.to_wire(r) for r in rows], has_more)


@router.get("/{eval_id}/runs/{run_id}", response_model=RunObject)
def retrieve_run(eval_id: str, run_id: str, session: SessionDep, org: OrgDep) -> RunObject:
    return runs.to_wire(runs.get_run(session, org, eval_id, run_id))


# OpenAI's reference documents the cancel as a POST to the run; the SDK posts to …/cancel: both are served.
@router.post("/{eval_id}/runs/{run_id}/cancel", response_model=RunObject)
@router.post("/{eval_id}/runs/{run_id}", response_model=RunObject)
def cancel_run(eval_id: str, run_id: str, session: SessionDep, org: OrgDep) -> RunObject:
    return runs.to_wire(runs.cancel_run(session, org, eval_id, run_id))


@router.delete("/{eval_id}/runs/{run_id}", response_model=RunDeleted)
def delete_run(eval_id: str, run_id: str, session: SessionDep, org: OrgDep) -> RunDeleted:
    runs.delete_run(session, org, eval_id, run_id)
    return RunDeleted(run_id=run_id)


@router.get("/{eval_id}/runs/{run_id}/output_items", response_model=ListPage[OutputItemObject])
def list_output_items(
    eval_id: str,
    run_id: str,
    session: SessionDep,
    org: OrgDep,
    after: str | None = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: Literal["pass", "fail", "error"] | None = None,
) -> dict[str, object]:
    rows, has_more = runs.list_output_items(session, org, eval_id, run_id, after, limit, order, status)
    return _page([runs.item_to_wire(r, eval_id) for r in rows], has_more)


@router.get("/{eval_id}/runs/{run_id}/output_items/{output_item_id}", response_model=OutputItemObject)
def retrieve_output_item(
    eval_id: str, run_id: str, output_item_id: str, session: SessionDep, org: OrgDep
) -> OutputItemObject:
    return runs.item_to_wire(runs.get_output_item(session, org, eval_id, run_id, output_item_id), eval_id)
