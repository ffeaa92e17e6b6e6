"""The OpenAI endpoints ftserve serves, in one table: each one's path, request, response and stream-chunk models,
the id prefix of its responses and the format a batch input file calling it gets. The api's proxy, Batch API
validation and the inference role's routes and batch runner all read it, so a new endpoint is one row here (and
its handler in ftserve/serving/handlers.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from ftserve.core.schemas.completions import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChunk,
    CompletionRequest,
    InferenceRequest,
)


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI endpoint of the inference role."""

    path: str
    request: type[InferenceRequest]
    response: type[BaseModel]
    chunk: type[BaseModel]  # one server-sent event of its stream
    id_prefix: str  # of the response's id: "cmpl-…", "chatcmpl-…"
    batch_format: str  # a validated batch input file whose lines call this endpoint has this `format`
    metric_label: str  # its `endpoint` label in the request metrics


COMPLETIONS = Endpoint(
    "/v1/completions", CompletionRequest, Completion, CompletionChunk, "cmpl-", "batch_completions", "completions"
)
CHAT_COMPLETIONS = Endpoint(
    "/v1/chat/completions",
    ChatCompletionRequest,
    ChatCompletion,
    ChatCompletionChunk,
    "chatcmpl-",
    "batch_chat",
    "chat",
)

ENDPOINTS: dict[str, Endpoint] = {e.path: e for e in (COMPLETIONS, CHAT_COMPLETIONS)}


def by_batch_format(fmt: str) -> Endpoint | None:
    """The endpoint a batch input file of this format calls, or None for any other file format."""
    return next((e for e in ENDPOINTS.values() if e.batch_format == fmt), None)
