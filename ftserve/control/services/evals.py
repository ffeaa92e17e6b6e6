"""Evals, the api side: create (the item schema and every testing criterion checked, each 400 naming its field),
read, list, update (name, metadata), delete with its runs. Runs are in eval_runs.py, the runner's store in
eval_store.py."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ftserve import graders
from ftserve.control.db.tables import Eval, EvalOutputItem, EvalRun
from ftserve.control.services.pagination import page
from ftserve.core.config import Settings
from ftserve.core.errors import bad_request, not_found
from ftserve.core.evals.items import schema_problem
from ftserve.core.ids import new_id, now
from ftserve.core.schemas.evals import CustomDataSourceConfig, EvalCreate, EvalObject, EvalUpdate

# The `sample` namespace a run fills in (include_sample_schema): what graders read as {{sample.*}}.
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
        "output_tools": {"type": "array"},
    },
    "required": ["model", "choices", "output_text"],
}


def data_source_schema(config: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `data_source_config` of an eval object: the item (and sample) namespaces as one JSON schema."""
    properties = {"item": config["item_schema"]}
    if config.get("include_sample_schema"):
        properties["sample"] = SAMPLE_SCHEMA
    return {"type": "custom", "schema": {"type": "object", "properties": properties, "required": list(properties)}}


def to_wire(e: Eval) -> EvalObject:
    return EvalObject(
        id=e.id,
        created_at=e.created_at,
        name=e.name,
        metadata=e.metadata_,
        data_source_config=data_source_schema(e.data_source_config),
        testing_criteria=e.testing_criteria,
    )


def check_criteria(settings: Settings, criteria: list[Any]) -> None:
    """Each criterion as the graders check it (templates, formulas, python source, judge models): a 400 naming
    `testing_criteria[i]....`."""
    limits = graders.limits_for(settings.python_grader_timeout_seconds, settings.python_grader_memory_bytes)
    judging = graders.JudgeConfig(model_map=settings.grader_model_map)
    for i, criterion in enumerate(criteria):
        graders.check(criterion, f"testing_criteria[{i}]", limits, judging)


def create_eval(session: Session, settings: Settings, org: str, req: EvalCreate) -> Eval:
    config = req.data_source_config
    if not isinstance(config, CustomDataSourceConfig):
        raise bad_request(
            f"data_source_config type '{config.type}' is not supported: ftserve keeps no logs of stored completions "
            "to query; use 'custom' with an item_schema and run over a file or inline content",
            param="data_source_config.type",
            code="unsupported_data_source_config",
        )
    problem = schema_problem(config.item_schema)
    if problem is not None:
        raise bad_request(
            f"item_schema is not a valid JSON schema: {problem}",
            param="data_source_config.item_schema",
            code="invalid_item_schema",
        )
    check_criteria(settings, req.testing_criteria)
    row = Eval(
        id=new_id("eval_", 32),
        org_id=org,
        name=req.name or "",
        metadata_=req.metadata,
        data_source_config=config.model_dump(mode="json"),
        testing_criteria=[c.model_dump(mode="json", exclude_none=True) for c in req.testing_criteria],
        created_at=now(),
    )
    session.add(row)
    session.commit()
    return row


def get_eval(session: Session, org: str, eval_id: str) -> Eval:
    e = session.get(Eval, eval_id)
    if e is None or e.org_id != org:
        raise not_found("eval", eval_id, "eval_id")
    return e


def list_evals(
    session: Session,
    org: str,
    after: str | None,
    limit: int,
    order: str,
    order_by: str,
    models: list[str] | None = None,
) -> tuple[list[Eval], bool]:
    """A page of the org's evals; with `models` (ftserve's extension) only those with a run on one of them."""
    if order_by != "created_at":
        raise bad_request(
            "order_by 'updated_at' is not supported: evals list by created_at", param="order_by", code="unsupported"
        )
    stmt = select(Eval).where(Eval.org_id == org)
    if models:
        stmt = stmt.where(Eval.id.in_(select(EvalRun.eval_id).where(EvalRun.org_id == org, EvalRun.model.in_(models))))
    return page(session, stmt, Eval, after=after, limit=limit, descending=order == "desc")


def update_eval(session: Session, org: str, eval_id: str, req: EvalUpdate) -> Eval:
    e = get_eval(session, org, eval_id)
    if req.name is not None:
        e.name = req.name
    if "metadata" in req.model_fields_set:
        e.metadata_ = req.metadata
    session.commit()
    return e


def delete_eval(session: Session, org: str, eval_id: str) -> None:
    """The eval, its runs and their output items; a run still going stops at its runner's next write."""
    get_eval(session, org, eval_id)
    runs = select(EvalRun.id).where(EvalRun.eval_id == eval_id)
    session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id.in_(runs)))
    session.execute(delete(EvalRun).where(EvalRun.eval_id == eval_id))
    session.execute(delete(Eval).where(Eval.id == eval_id))
    session.commit()
