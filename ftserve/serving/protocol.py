"""Requests to generation: validate what the engine cannot serve (a 400 naming the parameter) and turn
each choice into a Row with its sampling parameters; usage and best_of on the way back.

`chat_messages` is the one place that decides which chat message fields and content parts are served:
what it does not honour yet (images, audio, files, legacy function calls) is refused by name, never dropped.
"""

from __future__ import annotations

import json
from typing import Any

from ftserve.core.errors import bad_request
from ftserve.core.schemas.completions import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    MessageToolCall,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    Usage,
)
from ftserve.engine.constraint import Constraint
from ftserve.engine.generation import Row
from ftserve.engine.grammar import strict_schema
from ftserve.engine.sampling import Sampling

# Chat message fields that rendering honours; any other one a client sets is refused by name.
_MESSAGE_FIELDS = {"role", "content", "name"}


def check_supported(req: CompletionRequest | ChatCompletionRequest) -> None:
    """Refuse what would change the result if it were ignored."""
    if req.reasoning_effort is not None:
        raise bad_request(
            "reasoning_effort is not supported: the served models do not reason",
            param="reasoning_effort",
            code="unsupported_parameter",
        )


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The messages as rendering takes them (OpenAI's shape; `developer` is the system role); 400 for any part not
    served, and for tool history that does not hold together (a `tool` message answering no earlier call)."""
    out: list[dict[str, Any]] = []
    call_ids: set[str] = set()
    for i, m in enumerate(req.messages):
        if m.role == "function":
            raise bad_request(
                f"messages[{i}]: legacy 'function' messages are not supported; send 'tool' messages (tool_call_id)",
                param=f"messages[{i}].role",
                code="unsupported_message",
            )
        for key, value in (m.model_extra or {}).items():
            if key not in _MESSAGE_FIELDS and value not in ([], {}, ""):
                raise bad_request(
                    f"messages[{i}].{key} is not supported"
                    + (" (legacy function calling: use tool_calls)" if key == "function_call" else ""),
                    param=f"messages[{i}].{key}",
                    code="unsupported_message",
                )
        if m.tool_calls and m.role != "assistant":
            raise bad_request(
                f"messages[{i}]: only assistant messages carry tool_calls", param=f"messages[{i}].tool_calls"
            )
        if m.tool_call_id is not None and m.role != "tool":
            raise bad_request(
                f"messages[{i}]: only tool messages carry a tool_call_id", param=f"messages[{i}].tool_call_id"
            )
        message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": _text(m, i)}
        if m.tool_calls:
            message["tool_calls"] = [_history_call(i, j, c, call_ids) for j, c in enumerate(m.tool_calls)]
        if m.role == "tool":
            message["tool_call_id"] = _answered_call(i, m.tool_call_id, call_ids)
        out.append(message)
    return out


def _history_call(i: int, j: int, call: MessageToolCall, seen: set[str]) -> dict[str, Any]:
    """An assistant's earlier call, checked: a fresh id and arguments that are a JSON object."""
    where = f"messages[{i}].tool_calls[{j}]"
    if call.id in seen:
        raise bad_request(
            f"{where}: the id '{call.id}' is used twice", param=f"{where}.id", code="duplicate_tool_call_id"
        )
    try:
        arguments = json.loads(call.function.arguments)
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise bad_request(
            f"{where}.function.arguments must be a JSON object, as text",
            param=f"{where}.function.arguments",
            code="invalid_tool_arguments",
        )
    seen.add(call.id)
    return call.model_dump()


def _answered_call(i: int, call_id: str | None, calls: set[str]) -> str:
    if call_id is None:
        raise bad_request(
            f"messages[{i}]: a tool message needs the tool_call_id of the call it answers",
            param=f"messages[{i}].tool_call_id",
            code="missing_tool_call_id",
        )
    if call_id not in calls:
        raise bad_request(
            f"messages[{i}].tool_call_id '{call_id}' answers no tool call of an earlier assistant message",
            param=f"messages[{i}].tool_call_id",
            code="unknown_tool_call_id",
        )
    return call_id


def _text(m: ChatMessage, i: int) -> str:
    """A message's text: its string, or its text parts joined; any other part is a 400 naming its type."""
    if isinstance(m.content, str) or m.content is None:
        return m.content or ""
    texts = []
    for j, part in enumerate(m.content):
        kind = part.get("type")
        if kind != "text" or not isinstance(part.get("text"), str):
            raise bad_request(
                f"messages[{i}].content[{j}]: content parts of type '{kind}' are not supported; only text parts are",
                param=f"messages[{i}].content[{j}].type",
                code="unsupported_content",
            )
        texts.append(part["text"])
    return "".join(texts)


def response_constraint(req: CompletionRequest | ChatCompletionRequest) -> Constraint | None:
    """The grammar response_format asks for: None for text, any JSON object, or JSON matching the schema.

    Every schema is enforced, `strict` or not, and objects that do not declare `additionalProperties` take no
    undeclared properties (OpenAI's strict mode; xgrammar's and vLLM's default): a model must not invent keys."""
    fmt = req.response_format
    if isinstance(fmt, ResponseFormatJsonObject):
        return Constraint("json_object")
    if not isinstance(fmt, ResponseFormatJsonSchema):
        return None
    schema = fmt.json_schema.schema_
    if schema is None:  # a named format without a schema: any JSON object
        return Constraint("json_object")
    return Constraint("json_schema", json.dumps(strict_schema(schema)))


def check_prompt_ids(ids: list[int], vocab: int, index: int) -> None:
    """Token-id prompts must name tokens the model has."""
    bad = [t for t in ids if t >= vocab]
    if bad:
        raise bad_request(
            f"prompt[{index}] holds token ids outside the model's vocabulary of {vocab}: {bad[:5]}", param="prompt"
        )


def check_max_tokens(sent: int | None, limit: int, param: str = "max_tokens") -> None:
    """A max_tokens above the server's cap is a 400 quoting the value sent."""
    if sent is not None and sent > limit:
        raise bad_request(
            f"{param} is too large: {sent}. This server generates at most {limit} tokens per request",
            param=param,
        )


def sampling(
    req: CompletionRequest | ChatCompletionRequest,
    max_tokens: int,
    logprobs: int | None,
    choice: int,
    vocab: int,
    prompt_logprobs: bool = False,
    constraint: Constraint | None = None,
) -> Sampling:
    """One choice's sampling parameters (choice i of a seeded request samples with seed + i, modulo 2**64)."""
    stops = req.stop_list()
    if len(stops) > 4:
        raise bad_request("At most 4 stop sequences are allowed", param="stop")
    bias = tuple(sorted((int(k), float(v)) for k, v in (req.logit_bias or {}).items()))
    unknown = [t for t, _ in bias if t >= vocab]
    if unknown:
        raise bad_request(f"logit_bias names token ids outside the model's vocabulary: {unknown}", param="logit_bias")
    # torch's generators take any 64-bit pattern: negative seeds and seed + i past 2**63 wrap, never overflow.
    seed = None if req.seed is None else (req.seed + choice) % 2**64
    return Sampling(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=tuple(stops),
        seed=seed,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        logit_bias=bias,
        frequency_penalty=req.frequency_penalty or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        constraint=constraint,
    )


def check_length(prompt_len: int, max_tokens: int, limit: int, param: str = "max_tokens") -> None:
    if prompt_len + max_tokens > limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens; the prompt has {prompt_len} tokens and "
            f"{param} is {max_tokens}",
            param=param,
            code="context_length_exceeded",
        )


def check_best_of(req: CompletionRequest) -> int:
    """How many candidates to generate per prompt (best_of, default n); 400 for what cannot be served."""
    if req.suffix:
        raise bad_request("suffix (text insertion) is not supported by these models", param="suffix")
    best_of = req.best_of or req.n
    if best_of < req.n:
        raise bad_request(f"best_of ({best_of}) must be at least n ({req.n})", param="best_of")
    if req.stream and best_of > req.n:
        raise bad_request("best_of larger than n cannot be streamed", param="best_of")
    return best_of


def best(rows: list[Row], best_of: int, n: int) -> list[Row]:
    """Per prompt, the n candidates with the highest mean logprob per sampled token (OpenAI's best_of)."""
    if best_of == n:
        return rows

    def score(row: Row) -> float:
        # Every sampled token counts, the end-of-text one included.
        sampled = row.token_logprobs + ([] if row.stop_logprob is None else [row.stop_logprob])
        return sum(sampled) / max(len(sampled), 1)

    groups = [rows[i : i + best_of] for i in range(0, len(rows), best_of)]
    return [row for group in groups for row in sorted(group, key=score, reverse=True)[:n]]


def usage(prompt_tokens: list[int], rows: list[Row]) -> Usage:
    p = sum(prompt_tokens)
    c = sum(len(r.token_ids) for r in rows)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)
