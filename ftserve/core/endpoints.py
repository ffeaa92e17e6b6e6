"""The OpenAI endpoints ftserve serves, in one table: each one's path, request, response and stream-chunk models,
the id prefix of its responses and the format a batch input file calling it gets. The api's proxy, Batch API
validation and the inference role's routes and batch runner all read it, so a new endpoint is one row here (and
its handler in ftserve/serving/handlers.py). The Responses API's stored objects add GET/DELETE routes under its
path (`routes`), which the proxy forwards too."""

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
from ftserve.core.schemas.responses import Response, ResponseCreateRequest, ResponseEvent


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI endpoint of the inference role."""

    path: str
    request: type[InferenceRequest] | type[ResponseCreateRequest]
    response: type[BaseModel]
    chunk: type[BaseModel]  # one server-sent event of its stream
    id_prefix: str  # of the response's id: "cmpl-…", "chatcmpl-…"
    batch_format: str | None  # a validated batch input file whose lines call this endpoint has this `format`
    metric_label: str  # its `endpoint` label in the request metrics
    # More routes under the path (method, path): the stored objects' reads and deletes.
    routes: tuple[tuple[str, str], ...] = ()


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

RESPONSES = Endpoint(
    "/v1/responses",
    ResponseCreateRequest,
    Response,
    ResponseEvent,
    "resp_",
    "batch_responses",
    "responses",
    (
        ("GET", "/v1/responses/{response_id}"),
        ("DELETE", "/v1/responses/{response_id}"),
        ("GET", "/v1/responses/{response_id}/input_items"),
    ),
)

ENDPOINTS: dict[str, Endpoint] = {e.path: e for e in (COMPLETIONS, CHAT_COMPLETIONS, RESPONSES)}
# Those a batch input file's lines may call.
BATCH_ENDPOINTS: dict[str, Endpoint] = {p: e for p, e in ENDPOINTS.items() if e.batch_format is not None}


def by_batch_format(fmt: str) -> Endpoint | None:
    """The endpoint a batch input file of this format calls, or None for any other file format."""
    return next((e for e in BATCH_ENDPOINTS.values() if e.batch_format == fmt), None)
