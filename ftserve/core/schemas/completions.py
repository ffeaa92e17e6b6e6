"""Completions and chat completions: request and response types as OpenAI defines them.

Requests follow OpenAI's SDK conventions: an explicit `null` means "the default"; fields that do not
change the output (`store`, `metadata`, `service_tier`, `prompt_cache_key`, `safety_identifier`, `user`)
are accepted and ignored; text that is not valid Unicode (a lone surrogate) is a 400 naming its field.
What the engine cannot serve yet (content parts other than text, legacy function calls) is refused in one
place, serving/protocol.py, not silently dropped here; tool rules between fields (a `tool` message answering
no call, a named tool_choice naming no tool) are checked in serving/tools.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ftserve.core.schemas.common import Metadata, WireRequest
from ftserve.core.validation import moved

# OpenAI takes `seed` as a 64-bit signed integer.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
TokenId = Annotated[int, Field(ge=0)]


def _drop_nulls(data: Any) -> Any:
    """`{"n": null}` means the default, as in OpenAI's API and SDK: drop explicit nulls before validation."""
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if v is not None}
    return data


def lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """Where in a JSON value a string holds a lone surrogate (not encodable as UTF-8), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "value"
        return None
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and lone_surrogate_path(key) is not None:
            return f"{path}.{key!r}" if path else repr(key)
        found = lone_surrogate_path(item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


class _Request(WireRequest):
    """Nulls mean the default; every string must be valid Unicode; JSON types as sent (WireRequest)."""

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        return _drop_nulls(data)

    @field_validator("*", mode="before")
    @classmethod
    def _valid_unicode(cls, value: Any, info: ValidationInfo) -> Any:
        where = lone_surrogate_path(value)
        if where is not None:
            sep = "" if where.startswith("[") else "."
            at = info.field_name if where == "value" else f"{info.field_name}{sep}{where}"
            raise ValueError(f"{at} contains a lone surrogate, which is not valid Unicode text")
        return value


class StreamOptions(_Request):
    # Options newer clients send (include_obfuscation) change nothing here: ignored, as before.
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class InferenceRequest(_Request):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    # Token id (as a string, as OpenAI sends it) → bias in [-100, 100] added to that token's logit.
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        default=None, json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}}
    )
    # Documented no-ops: accepted because current clients send them, and ignored because they do not
    # change the output (docs/api.md).
    user: str | None = None
    store: bool | None = None
    metadata: Metadata | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Refused with a 400 by serving/protocol.py: the served models do not reason (docs/api.md).
    reasoning_effort: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys_are_token_ids(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key in v or {}:
            if not (key.isascii() and key.isdigit()):
                raise ValueError(f"keys must be token ids (digits); got {key!r}")
        return v

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class JsonSchemaSpec(_Request):
    """response_format.json_schema as OpenAI defines it: the schema the reply must match, and its name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    # `schema` shadows a BaseModel attribute: the field is schema_, the wire name is schema.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    # OpenAI's strict mode: objects take no properties beyond those they declare (engine/grammar.strict_schema).
    strict: bool | None = None


# The three formats are plain models: a discriminator field cannot carry _Request's validators (the strings
# they hold are in JsonSchemaSpec, which does).
class ResponseFormatText(WireRequest):
    type: Literal["text"]


class ResponseFormatJsonObject(WireRequest):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(WireRequest):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


# What the reply must be: free text, any JSON object, or JSON matching a schema (grammar-constrained decoding,
# docs/structured-outputs.md).
ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]


# The document says what the validator checks (schemathesis sends only what the schema allows).
Prompt = (
    Annotated[str, Field(min_length=1)]
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[TokenId], Field(min_length=1)]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
)


class CompletionRequest(InferenceRequest):
    # A string, strings, token ids, or lists of token ids (what lm-eval sends), as OpenAI takes them.
    prompt: Prompt
    # 0 with echo: score the prompt only (its logprobs), generate nothing.
    max_tokens: int | None = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1, le=16)
    suffix: str | None = None
    # ftserve's extension (OpenAI's completions take no response_format): the same as on chat completions.
    response_format: ResponseFormat | None = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v: Prompt) -> Prompt:
        if isinstance(v, list) and (not v or any(isinstance(p, list) and not p for p in v)):
            raise ValueError("prompt must not be an empty list")
        return v

    def prompt_list(self) -> list[str | list[int]]:
        """The prompts, one per entry: a text, or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [[int(t) for t in p]]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


# OpenAI's rule for function names.
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionCall(_Request):
    """A call in an assistant message of the history: the function's name and its arguments as JSON text."""

    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str


class MessageToolCall(_Request):
    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    # Extra fields (audio, …) are kept so serving can refuse what it does not honour by name.
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    # An assistant message's calls (its content may then be null).
    tool_calls: list[MessageToolCall] | None = None
    # A `tool` message answers the call with this id, earlier in the conversation.
    tool_call_id: str | None = None


class FunctionDefinition(_Request):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    # A JSON schema of the arguments object; none means the function takes no arguments.
    parameters: dict[str, Any] | None = None
    # Objects take no properties beyond those they declare (OpenAI's strict mode) when the call is constrained.
    strict: bool | None = None


class ChatTool(_Request):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(_Request):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(InferenceRequest):
    # OpenAI's legacy function calling, replaced by tools.
    model_config = ConfigDict(json_schema_extra=moved({"functions": "tools", "function_call": "tool_choice"}))

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=5)
    response_format: ResponseFormat | None = None
    # Function tools (docs/tools.md): what the model may call, whether it must, and whether several at once.
    tools: list[ChatTool] | None = Field(default=None, min_length=1, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    # With echo, the prompt's first token has no logprob and no alternatives (null), as in OpenAI's API.
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ReplyFunctionCall(BaseModel):
    name: str
    arguments: str


class ReplyToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ReplyFunctionCall


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    # null when the reply is only tool calls
    content: str | None
    tool_calls: list[ReplyToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    bytes: list[int] | None
    logprob: float


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChatChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


# --- stream chunks (serialized with exclude_unset: a field a chunk does not carry is absent, as in OpenAI's) ---


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (the last, with include_usage, has no choices)."""

    id: str
    object: Literal["text_completion"]  # no default: exclude_unset would leave a default out
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A piece of tool call `index`: its first carries id, type and function.name, the next argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion (the last, with include_usage, has no choices)."""

    id: str
    object: Literal["chat.completion.chunk"]  # no default: exclude_unset would leave a default out
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
