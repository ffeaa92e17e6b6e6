"""The Responses API (/v1/responses): its request, the Response object, its output items and its typed stream
events, as OpenAI defines them (openai-python's types/responses). Serving answers a request as a chat plan
(serving/responses.py); what ftserve does not serve (hosted tools, reasoning) is refused there by name."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from ftserve.core.schemas.common import Metadata
from ftserve.core.schemas.completions import FUNCTION_NAME, _Request

# What `include` may ask for (OpenAI's ResponseIncludable); none of them changes a text-only reply here.
INCLUDABLE = (
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
)
# OpenAI's hosted tools: refused by name (ftserve runs no tools of its own).
HOSTED_TOOLS = (
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "web_search_2025_08_26",
    "file_search",
    "code_interpreter",
    "computer_use_preview",
    "computer_use",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
    "custom",
)


class InputTextPart(_Request):
    """A message's text part: input_text (output_text in an assistant message sent back)."""

    # An output_text part sent back carries annotations and logprobs beside its text: kept, never rendered.
    model_config = ConfigDict(extra="allow")

    type: Literal["input_text", "output_text"]
    text: str


class InputOtherPart(_Request):
    """Any other content part (input_image, input_file, input_audio): refused by its type when served."""

    model_config = ConfigDict(extra="allow")

    type: str


def _part_kind(value: Any) -> str:
    """Which model validates a content part: a text part by its type, anything else as another kind."""
    kind = value.get("type") if isinstance(value, dict) else None
    return "text" if kind in ("input_text", "output_text") else "other"


# Tagged by _part_kind so a bad text part is named at its field (`input[0].content[1].text`), not as a whole.
InputContentPart = Annotated[
    Annotated[InputTextPart, Tag("text")] | Annotated[InputOtherPart, Tag("other")], Discriminator(_part_kind)
]


class InputMessage(_Request):
    """A message item (EasyInputMessage or a stored output message sent back): role and text content."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] | None = None
    id: str | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputContentPart]
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallItem(_Request):
    """A call the model made earlier, sent back as input."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function_call"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Request):
    """The caller's result of a call: answers `call_id`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    output: str
    status: Literal["in_progress", "completed", "incomplete"] | None = None


def _item_kind(value: Any) -> str:
    """Which model validates an input item: its `type`; an item without one is a message (EasyInputMessage)."""
    if not isinstance(value, dict) or value.get("type") is None:
        return "message"
    return str(value["type"])


# Tagged by the item's type (pydantic's callable discriminator: a message may leave its type out), so a bad item is
# reported at its own field (`input[1].call_id`) instead of as an object no branch of a plain union took.
InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class NamedFunctionChoice(_Request):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)


class TextFormat(_Request):
    """text.format: `text`, `json_object`, or `json_schema` (name, schema, strict) flattened as OpenAI sends it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Request):
    model_config = ConfigDict(extra="forbid")

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class StreamOptions(_Request):
    model_config = ConfigDict(extra="ignore")


class ResponseCreateRequest(_Request):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    # Function tools ({"type": "function", "name", "parameters", …}); a hosted tool is refused by its type.
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    store: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    metadata: Metadata | None = None
    truncation: Literal["disabled", "auto"] | None = None
    include: list[Literal[INCLUDABLE]] | None = None  # type: ignore[valid-type]
    user: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Only "none" (or an empty object) is served: the served models do not reason.
    reasoning: dict[str, Any] | None = None


# --- the Response object ---


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(BaseModel):
    # No prompt cache: nothing read from it, nothing written (the SDK's model requires both).
    cache_write_tokens: int = 0
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


class Response(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


# An input item as GET /v1/responses/{id}/input_items lists it: the item with an id (and status on messages).
class InputItemsPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


# --- stream events (each carries its type and sequence_number) ---


class ResponseEvent(BaseModel):
    """One server-sent event of a streamed response (openai-python's ResponseStreamEvent)."""

    type: str
    sequence_number: int


class ResponseLifecycleEvent(ResponseEvent):
    """response.created, response.in_progress, response.completed, response.incomplete, response.failed."""

    type: Literal[
        "response.created", "response.in_progress", "response.completed", "response.incomplete", "response.failed"
    ]
    response: Response


class OutputItemEvent(ResponseEvent):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(ResponseEvent):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class TextDeltaEvent(ResponseEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class TextDoneEvent(ResponseEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class ArgumentsDeltaEvent(ResponseEvent):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(ResponseEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(ResponseEvent):
    type: Literal["error"] = "error"
    code: str | None = None
    message: str
    param: str | None = None
