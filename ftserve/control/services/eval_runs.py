"""Eval runs, the api side: create (the data source checked: its file, model, input messages and sampling, each 400
naming its field; then queued for the inference role's eval runner), read, list, cancel, delete, and the output
items the runner recorded."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ftserve.control.db.tables import EvalOutputItem, EvalRun
from ftserve.control.services import catalog
from ftserve.control.services.evals import get_eval
from ftserve.control.services.files import get_file
from ftserve.control.services.pagination import page
from ftserve.core.config import Settings
from ftserve.core.errors import InvalidRequest, bad_request, not_found
from ftserve.core.evals.requests import check_sampling
from ftserve.core.ids import new_id, now
from ftserve.core.schemas.evals import (
    EvalApiError,
    FileIdSource,
    JsonlDataSource,
    OutputItemObject,
    PerModelUsage,
    PerTestingCriteriaResult,
    QuerySource,
    ResultCounts,
    RunCreate,
    RunObject,
)
from ftserve.graders import input_messages

ACTIVE = ("queued", "in_progress")


def report_url(eval_id: str, run_id: str) -> str:
    """The run's page on the dashboard (served by the api role at /dashboard)."""
    return f"/dashboard/evals/{eval_id}?run={run_id}"


def to_wire(r: EvalRun) -> RunObject:
    counts = ResultCounts(passed=r.passed, failed=r.failed, errored=r.errored, total=r.passed + r.failed + r.errored)
    return RunObject(
        id=r.id,
        eval_id=r.eval_id,
        name=r.name,
        model=r.model,
        status=r.status,  # type: ignore[arg-type]
        created_at=r.created_at,
        data_source=r.data_source,
        metadata=r.metadata_,
        error=EvalApiError(**r.error) if r.error else None,
        result_counts=counts,
        per_testing_criteria_results=[PerTestingCriteriaResult(**c) for c in r.per_criteria],
        per_model_usage=[PerModelUsage(**u) for u in r.per_model_usage],
        report_url=report_url(r.eval_id, r.id),
        extensions={"item_count": r.item_count},
    )


def _check_file(session: Session, org: str, source: FileIdSource) -> None:
    f = get_file(session, org, source.id, "data_source.source.id")
    if f.purpose != "evals":
        raise bad_request(
            f"File {f.id} has purpose '{f.purpose}', not 'evals'",
            param="data_source.source.id",
            code="invalid_file_purpose",
        )
    if f.status != "processed":
        raise bad_request(
            f"File {f.id} is not a valid evals file: {f.status_details}",
            param="data_source.source.id",
            code="invalid_file",
        )


def create_run(session: Session, settings: Settings, org: str, eval_id: str, req: RunCreate) -> EvalRun:
    """Check the data source; commit the run as `queued` for a runner to claim."""
    e = get_eval(session, org, eval_id)
    ds = req.data_source
    if isinstance(ds.source, QuerySource):
        raise bad_request(
            f"source type '{ds.source.type}' is not supported: ftserve does not query stored completions or "
            "responses for eval items; give the items as a file_id (purpose evals) or file_content",
            param="data_source.source.type",
            code="unsupported_data_source",
        )
    if isinstance(ds.source, FileIdSource):
        _check_file(session, org, ds.source)
    model = None
    if not isinstance(ds, JsonlDataSource):
        if not ds.model:
            raise bad_request(
                f"a {ds.type} data source samples a model: name it", param="data_source.model", code="missing_model"
            )
        model = catalog.resolve(session, settings, org, ds.model, param="data_source.model").name
        if ds.input_messages is None:
            raise bad_request(
                f"a {ds.type} data source needs input_messages: a template over {{{{item.*}}}} or an item_reference",
                param="data_source.input_messages",
                code="missing_input_messages",
            )
        input_messages.check(ds.input_messages, "data_source.input_messages")
        check_sampling(ds, model)
    run = EvalRun(
        id=new_id("evalrun_", 32),
        eval_id=e.id,
        org_id=org,
        name=req.name or model or ds.type,
        model=model,
        status="queued",
        data_source=ds.model_dump(mode="json", exclude_none=True, by_alias=True),
        metadata_=req.metadata,
        passed=0,
        failed=0,
        errored=0,
        per_criteria=[{"testing_criteria": c["name"], "passed": 0, "failed": 0} for c in e.testing_criteria],
        per_model_usage=[],
        created_at=now(),
    )
    session.add(run)
    session.commit()
    return run


def get_run(session: Session, org: str, eval_id: str, run_id: str) -> EvalRun:
    r = session.get(EvalRun, run_id)
    if r is None or r.org_id != org or r.eval_id != eval_id:
        raise not_found("eval run", run_id, "run_id")
    return r


def list_runs(
    session: Session,
    org: str,
    eval_id: str,
    after: str | None,
    limit: int,
    order: str,
    status: str | None,
    models: list[str] | None = None,
) -> tuple[list[EvalRun], bool]:
    """A page of the eval's runs; with `models` (ftserve's extension) only the runs that sampled one of them."""
    get_eval(session, org, eval_id)
    stmt = select(EvalRun).where(EvalRun.eval_id == eval_id)
    if status:
        stmt = stmt.where(EvalRun.status == status)
    if models:
        stmt = stmt.where(EvalRun.model.in_(models))
    return page(session, stmt, EvalRun, after=after, limit=limit, descending=order == "desc")


def cancel_run(session: Session, org: str, eval_id: str, run_id: str) -> EvalRun:
    """queued/in_progress → canceled at once; the runner stops at its next write (what it recorded stays)."""
    r = get_run(session, org, eval_id, run_id)
    moved = session.execute(
        update(EvalRun)
        .where(EvalRun.id == run_id, EvalRun.status.in_(ACTIVE))
        .values(status="canceled", finished_at=now(), lease_owner=None, lease_expires_at=None)
    )
    session.commit()
    session.refresh(r)
    if moved.rowcount == 0 and r.status != "canceled":  # type: ignore[attr-defined]
        raise InvalidRequest(
            f"Eval run {run_id} is {r.status}; it cannot be canceled", param="run_id", code="run_not_cancelable"
        )
    return r


def delete_run(session: Session, org: str, eval_id: str, run_id: str) -> None:
    """The run and its output items; a runner still on it stops at its next write."""
    get_run(session, org, eval_id, run_id)
    session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id == run_id))
    session.execute(delete(EvalRun).where(EvalRun.id == run_id))
    session.commit()


def item_to_wire(row: EvalOutputItem, eval_id: str) -> OutputItemObject:
    return OutputItemObject(
        id=row.id,
        eval_id=eval_id,
        run_id=row.run_id,
        created_at=row.created_at,
        status=row.status,  # type: ignore[arg-type]
        datasource_item_id=row.datasource_item_id,
        **row.record,
    )


def list_output_items(
    session: Session,
    org: str,
    eval_id: str,
    run_id: str,
    after: str | None,
    limit: int,
    order: str,
    status: str | None,
) -> tuple[list[EvalOutputItem], bool]:
    get_run(session, org, eval_id, run_id)
    stmt = select(EvalOutputItem).where(EvalOutputItem.run_id == run_id)
    if status:
        stmt = stmt.where(EvalOutputItem.status == status)
    return page(session, stmt, EvalOutputItem, after=after, limit=limit, descending=order == "desc")


def get_output_item(session: Session, org: str, eval_id: str, run_id: str, item_id: str) -> EvalOutputItem:
    get_run(session, org, eval_id, run_id)
    row = session.scalar(select(EvalOutputItem).where(EvalOutputItem.id == item_id, EvalOutputItem.run_id == run_id))
    if row is None:
        raise not_found("output item", item_id, "output_item_id")
    return row
