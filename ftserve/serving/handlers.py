"""Each endpoint of ftserve/core/endpoints as the inference role answers it: plan (the validated request → the
engine's rows), check (what must compile before the rows are submitted) and body (the finished rows → OpenAI's
response). The routes and the batch runner look a handler up by path, so neither branches on the request's kind."""

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
from ftserve.serving.responses import ResponsePlan, plan_response, response_body, responses_words
from ftserve.serving.tools import check_grammar


class Plan(Protocol):
    """What every endpoint's plan carries: the rows the engine runs."""

    rows: list[Row]


Req = TypeVar("Req", bound=BaseModel)
P = TypeVar("P", bound=Plan)


@dataclass(frozen=True)
class Handler(Generic[Req, P]):
    """One endpoint's request → rows → response, shared by its HTTP route and the batch runner."""

    endpoint: Endpoint
    plan: Callable[[Req, PreTrainedTokenizerBase, Settings, str], P]
    body: Callable[[P, PreTrainedTokenizerBase, str, int], BaseModel]
    check: Callable[[Backend, str, P], None]


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


# The Responses API's plan takes the request with its stored conversation (serving/responses.ResponseInput).
RESPONSE_HANDLER: Handler[Any, ResponsePlan] = Handler(RESPONSES, plan_response, response_body, _check_response)

HANDLERS: dict[str, Handler[Any, Any]] = {
    h.endpoint.path: h for h in (COMPLETION_HANDLER, CHAT_HANDLER, RESPONSE_HANDLER)
}
