"""The Responses API as a chat plan: a request's input items (after the stored conversation its
`previous_response_id` names) become chat messages, its function tools, tool_choice and text.format become
chat's tools and response_format, and the finished row becomes a Response with `message` and `function_call`
output items; streamed, the row's chat deltas become OpenAI's semantic events (serving/response_events).
What ftserve does not serve (hosted tools, reasoning, content that is not text) is refused by name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from transformers import PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.errors import InvalidRequest, bad_request
from ftserve.core.ids import new_id
from ftserve.core.schemas.completions import ChatCompletionRequest
from ftserve.core.schemas.responses import (
    HOSTED_TOOLS,
    FunctionCallItem,
    FunctionCallOutputItem,
    IncompleteDetails,
    InputMessage,
    InputTextPart,
    NamedFunctionChoice,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputText,
    Response,
    ResponseCreateRequest,
    ResponseUsage,
)
from ftserve.engine.generation import Row
from ftserve.serving.requests import ChatPlan, plan_chat
from ftserve.serving.response_conversation import Conversation, conversation
from ftserve.serving.tools import reply_message

_TOOL_KEYS = {"type", "name", "description", "parameters", "strict"}


class ResponseInput(BaseModel):
    """A request with the conversation before it (the stored items of its previous_response_id's chain)."""

    req: ResponseCreateRequest
    history: list[dict[str, Any]] = []


@dataclass
class ResponsePlan:
    """A /v1/responses request as one chat row, with the items it adds to the conversation."""

    req: ResponseCreateRequest
    chat: ChatPlan
    input_items: list[dict[str, Any]]  # this request's input, each item with its id
    history: list[dict[str, Any]]
    rows: list[Row] = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return self.chat.prompt_len


def input_items(req: ResponseCreateRequest) -> list[dict[str, Any]]:
    """The request's input as stored items (ids given; a string is one user message); 400 for non-text content."""
    if req.input is None:
        return []
    if isinstance(req.input, str):
        return [_message("user", [{"type": "input_text", "text": req.input}])]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(req.input):
        if isinstance(item, InputMessage):
            kind = "output_text" if item.role == "assistant" else "input_text"
            if isinstance(item.content, str):
                parts = [{"type": kind, "text": item.content}]
            else:
                parts = []
                for j, part in enumerate(item.content):
                    if not isinstance(part, InputTextPart):
                        raise bad_request(
                            f"input[{i}].content[{j}]: content of type '{part.type}' is not supported; ftserve's "
                            "models take text (input_text, output_text)",
                            param=f"input[{i}].content[{j}].type",
                            code="unsupported_content",
                        )
                    parts.append({"type": part.type, "text": part.text})
            out.append(_message(item.role, parts, item.id))
        elif isinstance(item, FunctionCallItem):
            out.append(
                {
                    "id": item.id or new_id("fc_"),
                    "type": "function_call",
                    "call_id": item.call_id,
                    "name": item.name,
                    "arguments": item.arguments,
                    "status": "completed",
                }
            )
        elif isinstance(item, FunctionCallOutputItem):
            out.append(
                {
                    "id": item.id or new_id("fco_"),
                    "type": "function_call_output",
                    "call_id": item.call_id,
                    "output": item.output,
                    "status": "completed",
                }
            )
    return out


def _message(role: str, parts: list[dict[str, Any]], ident: str | None = None) -> dict[str, Any]:
    return {"id": ident or new_id("msg_"), "type": "message", "role": role, "content": parts, "status": "completed"}


def _tools(req: ResponseCreateRequest) -> list[dict[str, Any]] | None:
    """Function tools as chat takes them; a hosted tool (web_search, file_search, …) is a 400 naming it."""
    if not req.tools:
        return None
    out = []
    for i, tool in enumerate(req.tools):
        kind = tool.get("type")
        if isinstance(kind, str) and (kind in HOSTED_TOOLS or kind.startswith("web_search")):
            raise bad_request(
                f"tools[{i}]: the hosted tool '{kind}' is not supported; ftserve serves function tools only",
                param=f"tools[{i}].type",
                code="unsupported_tool",
            )
        if kind != "function":
            raise bad_request(
                f"tools[{i}].type must be 'function'; got {kind!r}", param=f"tools[{i}].type", code="unsupported_tool"
            )
        extra = sorted(set(tool) - _TOOL_KEYS)
        if extra:
            raise bad_request(f"tools[{i}].{extra[0]} is not supported", param=f"tools[{i}].{extra[0]}")
        function = {k: v for k, v in tool.items() if k != "type" and v is not None}
        out.append({"type": "function", "function": function})
    return out


def _response_format(req: ResponseCreateRequest) -> dict[str, Any] | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.name is None:
        raise bad_request("text.format.name is required for a json_schema format", param="text.format.name")
    spec: dict[str, Any] = {"name": fmt.name}
    for key, value in (("description", fmt.description), ("schema", fmt.schema_), ("strict", fmt.strict)):
        if value is not None:
            spec[key] = value
    return {"type": "json_schema", "json_schema": spec}


def _check_reasoning(req: ResponseCreateRequest) -> None:
    reasoning = req.reasoning or {}
    if any(v is not None for k, v in reasoning.items() if not (k == "effort" and v in ("none", None))):
        raise bad_request(
            "reasoning is not supported: the served models do not reason",
            param="reasoning",
            code="unsupported_parameter",
        )


def _forced(req: ResponseCreateRequest) -> bool:
    return bool(req.tools) and (req.tool_choice == "required" or isinstance(req.tool_choice, NamedFunctionChoice))


def chat_request(req: ResponseCreateRequest, messages: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat completion request the response is generated by."""
    _check_reasoning(req)
    if not messages:
        raise bad_request("input is required: the request has no input and no instructions", param="input")
    choice: Any = req.tool_choice
    if choice is not None and not isinstance(choice, str):
        choice = {"type": "function", "function": {"name": choice.name}}
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tools": _tools(req),
        "tool_choice": choice,
        "parallel_tool_calls": req.parallel_tool_calls,
        # text.format shapes text; a forced call's reply has none (OpenAI takes both together): calls win.
        "response_format": None if _forced(req) else _response_format(req),
    }
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        raise bad_request(f"{where}: {err['msg']}", param=where) from None


# Chat's parameter names as the Responses API spells them, for a 400 raised by the chat plan.
_WORDS = (
    ("max_completion_tokens", "max_output_tokens"),
    ("response_format", "text.format"),
    (".function.parameters", ".parameters"),
    (".function.name", ".name"),
)


@contextmanager
def responses_words(conv: Conversation | None = None) -> Iterator[None]:
    """A 400 of the chat plan (or its grammar check) names the Responses API's parameter: max_output_tokens,
    text.format, tools[i].parameters; a chat message's fault names the item it came from (`input[2].call_id`), the
    instructions or previous_response_id (conv: where each message came from), else `input` as a whole."""
    try:
        yield
    except InvalidRequest as exc:
        chat = exc.param or ""
        param = conv.param(chat) if conv is not None else None
        if conv is not None and param is not None:
            exc.message, exc.param = conv.message(exc.message, chat), param
        elif chat.startswith("messages["):
            exc.message = f"input (the conversation as chat messages, instructions first): {exc.message}"
            exc.param = "input"
        else:
            for chat_words, words in _WORDS:
                exc.message = exc.message.replace(chat_words, words)
                exc.param = exc.param.replace(chat_words, words) if exc.param else exc.param
        exc.args = (exc.message,)
        raise


def plan_response(inp: ResponseInput, tok: PreTrainedTokenizerBase, settings: Settings, base: str) -> ResponsePlan:
    req = inp.req
    items = input_items(req)
    conv = conversation(req.instructions, inp.history + items, len(inp.history))
    with responses_words(conv):
        chat = plan_chat(chat_request(req, conv.messages), tok, settings, base)
    return ResponsePlan(req, chat, items, inp.history, chat.rows)


def skeleton(req: ResponseCreateRequest, rid: str, created: int) -> Response:
    """The response as it stands before any output: in_progress, echoing the request's settings."""
    return Response(
        id=rid,
        created_at=created,
        status="in_progress",
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        model=req.model,
        output=[],
        parallel_tool_calls=req.parallel_tool_calls is not False,
        previous_response_id=req.previous_response_id,
        reasoning=req.reasoning,
        store=req.store,
        temperature=1.0 if req.temperature is None else req.temperature,
        text={"format": req.text.format.model_dump(by_alias=True, exclude_none=True)}
        if req.text is not None and req.text.format is not None
        else {"format": {"type": "text"}},
        tool_choice=_tool_choice(req),
        tools=list(req.tools or []),
        top_p=1.0 if req.top_p is None else req.top_p,
        truncation=req.truncation or "disabled",
        user=req.user,
        metadata=dict(req.metadata or {}),
    )


def _tool_choice(req: ResponseCreateRequest) -> Any:
    return req.tool_choice.model_dump() if isinstance(req.tool_choice, BaseModel) else req.tool_choice or "auto"


def finished(response: Response, plan: ResponsePlan, output: list[OutputItem]) -> Response:
    """The response with its output, status and usage once its row has finished."""
    row = plan.rows[0]
    incomplete = row.finish_reason == "length"
    out_tokens = len(row.token_ids)
    return response.model_copy(
        update={
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": IncompleteDetails(reason="max_output_tokens") if incomplete else None,
            "output": output,
            "usage": ResponseUsage(
                input_tokens=plan.prompt_len, output_tokens=out_tokens, total_tokens=plan.prompt_len + out_tokens
            ),
        }
    )


def response_body(plan: ResponsePlan, tok: PreTrainedTokenizerBase, rid: str, created: int) -> Response:
    """The finished row as OpenAI's Response: a message (its text) and/or function_call items."""
    row = plan.rows[0]
    content, calls, _ = reply_message(plan.chat.tools, row)
    status: Literal["completed", "incomplete"] = "incomplete" if row.finish_reason == "length" else "completed"
    output: list[OutputItem] = []
    if content or not calls:
        output.append(OutputMessage(id=new_id("msg_"), status=status, content=[OutputText(text=content or "")]))
    for c in calls or []:
        output.append(
            OutputFunctionCall(
                id=new_id("fc_"),
                call_id=c.id,
                name=c.function.name,
                arguments=c.function.arguments,
                status="completed",
            )
        )
    return finished(skeleton(plan.req, rid, created), plan, output)
