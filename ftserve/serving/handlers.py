"""Each endpoint of ftserve/core/endpoints as the inference role answers it: plan (the validated request → the
engine's rows), check (what must compile before the rows are submitted) and body (the finished rows → OpenAI's
response), and for an endpoint with state (the Responses API) what it reads before planning and keeps after the body
is built. The routes and the batch runner look a handler up by path, so neither branches on the request's kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel
from transformers import PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.endpoints import CHAT_COMPLETIONS, COMPLETIONS, RESPONSES, Endpoint
from ftserve.engine.generation import Row
from ftserve.serving.backends.base import Backend
from ftserve.serving.ports import ResponseStore
from ftserve.serving.requests import (
    ChatPlan,
    CompletionPlan,
    chat_body,
    check_constraints,
    completion_body,
    has_constraints,
    plan_chat,
    plan_completion,
)
from ftserve.serving.responses import ResponseInput, ResponsePlan, plan_response, response_body, responses_words
from ftserve.serving.stored_responses import history, save
from ftserve.serving.tools import check_grammar


class Plan(Protocol):
    """What every endpoint's plan carries: the rows the engine runs."""

    rows: list[Row]


Req = TypeVar("Req", bound=BaseModel)
P = TypeVar("P", bound=Plan)


@dataclass(frozen=True)
class Caller:
    """Whose request it is and where the org's state lives: what an endpoint with state reads and writes."""

    org: str
    responses: ResponseStore


def _the_request(req: Any, caller: Caller) -> Any:
    return req


def _keep_nothing(caller: Caller, plan: Any, body: BaseModel) -> None:
    return None


@dataclass(frozen=True)
class Handler(Generic[Req, P]):
    """One endpoint's request → rows → response, shared by its HTTP route and the batch runner."""

    endpoint: Endpoint
    plan: Callable[[Any, PreTrainedTokenizerBase, Settings, str], P]
    body: Callable[[P, PreTrainedTokenizerBase, str, int], BaseModel]
    check: Callable[[Backend, str, P], None]
    # What `plan` takes: the validated request, or (Responses) it with the stored conversation it continues;
    # reads the DB, so call it off the event loop.
    given: Callable[[Req, Caller], Any] = _the_request
    # After the body is built: keep what the endpoint keeps (a stored response); writes the DB.
    keep: Callable[[Caller, P, BaseModel], None] = _keep_nothing


def _check_rows(engine: Backend, base: str, plan: Plan) -> None:
    """Compile the rows' response_format constraints (blocking: off the event loop); a refused one is a 400."""
    if has_constraints(plan.rows):
        check_constraints(engine, base, plan.rows)


def _check_chat(engine: Backend, base: str, plan: ChatPlan) -> None:
    """As for any rows, and first the tools' forced-call grammar: a refused schema names its tool."""
    if plan.tools is not None:
        check_grammar(engine, base, plan.tools)
    _check_rows(engine, base, plan)


COMPLETION_HANDLER: Handler[Any, CompletionPlan] = Handler(COMPLETIONS, plan_completion, completion_body, _check_rows)
CHAT_HANDLER: Handler[Any, ChatPlan] = Handler(CHAT_COMPLETIONS, plan_chat, chat_body, _check_chat)


def _check_response(engine: Backend, base: str, plan: ResponsePlan) -> None:
    """As for chat (the Responses API's request is a chat plan), a refused schema named as the request wrote it."""
    with responses_words():
        _check_chat(engine, base, plan.chat)


def _continued(req: Any, caller: Caller) -> ResponseInput:
    """The request with the conversation its previous_response_id names (a 404 if that is not stored)."""
    return ResponseInput(req=req, history=history(caller.responses, caller.org, req.previous_response_id))


def _keep_response(caller: Caller, plan: ResponsePlan, body: BaseModel) -> None:
    save(caller.responses, caller.org, plan, body)


RESPONSE_HANDLER: Handler[Any, ResponsePlan] = Handler(
    RESPONSES, plan_response, response_body, _check_response, _continued, _keep_response
)

HANDLERS: dict[str, Handler[Any, Any]] = {
    h.endpoint.path: h for h in (COMPLETION_HANDLER, CHAT_HANDLER, RESPONSE_HANDLER)
}
