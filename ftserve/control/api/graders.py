"""/v1/fine_tuning/alpha/graders: run a grader on one sample, or validate one (ftserve/graders does the work).

Model graders ask their judge through ftserve's serving path over HTTP, as the caller (its Authorization header
is forwarded), so the judge sees the models the caller may use and no others."""

from __future__ import annotations

from typing import Annotated

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Header, Request

from ftserve import graders
from ftserve.control.api.deps import OrgDep, SettingsDep
from ftserve.core.config import Settings
from ftserve.core.schemas.errors import ERROR_RESPONSES
from ftserve.core.schemas.graders import (
    GraderRunRequest,
    GraderRunResponse,
    GraderValidateRequest,
    GraderValidateResponse,
)
from ftserve.graders.http_judge import HttpJudge, judge_url

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders", tags=["graders"], responses=ERROR_RESPONSES)

# Grader runs wait on sandboxes and judges in threads of their own: a model grader's judge is answered by this
# same process (`ftserve up`), whose routes need the default thread pool, so grader runs must never fill it.
GRADER_THREADS = 16


def _threads(request: Request) -> CapacityLimiter:
    """This app's limiter for grader runs, made on its event loop the first time it is needed."""
    limiter: CapacityLimiter | None = getattr(request.app.state, "grader_threads", None)
    if limiter is None:
        limiter = request.app.state.grader_threads = CapacityLimiter(GRADER_THREADS)
    return limiter


def _judging(settings: Settings, request: Request, authorization: str | None) -> graders.JudgeConfig:
    url = judge_url(settings, "inference" in request.app.state.roles)
    judge = HttpJudge(url, authorization) if url else None
    return graders.JudgeConfig(judge=judge, model_map=settings.grader_model_map)


@router.post("/run", response_model=GraderRunResponse)
async def run_grader(
    body: GraderRunRequest,
    request: Request,
    settings: SettingsDep,
    _org: OrgDep,
    authorization: Annotated[str | None, Header()] = None,
) -> GraderRunResponse:
    """The grader's reward for `model_sample` and `item`, with its judges' token usage."""
    limits = graders.limits_for(settings.python_grader_timeout_seconds, settings.python_grader_memory_bytes)
    judging = _judging(settings, request, authorization)
    try:
        return await to_thread.run_sync(
            graders.run, body.grader, body.model_sample, body.item, limits, judging, limiter=_threads(request)
        )
    finally:
        if isinstance(judging.judge, HttpJudge):
            judging.judge.close()


@router.post("/validate", response_model=GraderValidateResponse)
async def validate_grader(
    body: GraderValidateRequest, request: Request, settings: SettingsDep, _org: OrgDep
) -> GraderValidateResponse:
    """The grader as sent, once it is checked (a 400 naming the field that is not)."""
    judging = graders.JudgeConfig(model_map=settings.grader_model_map)
    await to_thread.run_sync(graders.check, body.grader, "grader", None, judging, limiter=_threads(request))
    return GraderValidateResponse(grader=body.grader)
