"""/v1/fine_tuning/alpha/graders: run a grader on one sample, or validate one (ftserve/graders does the work)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ftserve import graders
from ftserve.control.api.deps import OrgDep, SettingsDep
from ftserve.core.errors import bad_request
from ftserve.core.schemas.errors import ERROR_RESPONSES
from ftserve.core.schemas.graders import (
    GraderRunRequest,
    GraderRunResponse,
    GraderValidateRequest,
    GraderValidateResponse,
)

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders", tags=["graders"], responses=ERROR_RESPONSES)


@router.post("/run", response_model=GraderRunResponse)
async def run_grader(body: GraderRunRequest, settings: SettingsDep, _org: OrgDep) -> GraderRunResponse:
    """The grader's reward for `model_sample` and `item`; a model grader is a 400 until ftserve can judge."""
    try:
        # A python grader waits on its sandbox (seconds at most): off the event loop.
        limits = graders.limits_for(settings.python_grader_timeout_seconds, settings.python_grader_memory_bytes)
        return await run_in_threadpool(graders.run, body.grader, body.model_sample, body.item, limits)
    except graders.NotSupportedYet as exc:
        raise bad_request(str(exc), param="grader.type", code="grader_not_supported_yet") from None


@router.post("/validate", response_model=GraderValidateResponse)
async def validate_grader(body: GraderValidateRequest, _org: OrgDep) -> GraderValidateResponse:
    """The grader as sent, once it is checked (a 400 naming the field that is not)."""
    await run_in_threadpool(graders.check, body.grader)
    return GraderValidateResponse(grader=body.grader)
