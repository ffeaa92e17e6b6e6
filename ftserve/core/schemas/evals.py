"""The Evals API as OpenAI defines it (openai-python `types/eval_*`, `types/evals/*`): an eval's create and update
bodies, its testing criteria (the graders of core/schemas/graders with their `pass_threshold`), a run's data
sources, and the eval, run and output item objects."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ftserve.core.schemas import graders as g
from ftserve.core.schemas.common import Metadata, WireRequest

RunStatus = Literal["queued", "in_progress", "completed", "canceled", "failed"]
# Output item statuses: every criterion passed, one failed, or the item or a criterion errored.
ItemStatus = Literal["pass", "fail", "error"]


class CustomDataSourceConfig(WireRequest):
    type: Literal["custom"]
    item_schema: dict[str, Any]
    include_sample_schema: bool = False


class LogsDataSourceConfig(WireRequest):
    """Refused by name at creation: ftserve has no logs of stored completions to query (docs/api.md)."""

    type: Literal["logs", "stored_completions"]
    metadata: dict[str, Any] | None = None


DataSourceConfig = Annotated[CustomDataSourceConfig | LogsDataSourceConfig, Field(discriminator="type")]


class TextSimilarityCriterion(g.TextSimilarityGrader):
    pass_threshold: float


class PythonCriterion(g.PythonGrader):
    pass_threshold: float | None = None


class ScoreModelCriterion(g.ScoreModelGrader):
    pass_threshold: float | None = None


class MultiCriterion(g.MultiGrader):
    pass_threshold: float | None = None


TestingCriterion = Annotated[
    g.StringCheckGrader
    | TextSimilarityCriterion
    | PythonCriterion
    | ScoreModelCriterion
    | g.LabelModelGrader
    | MultiCriterion,
    Field(discriminator="type"),
]


class EvalCreate(WireRequest):
    data_source_config: DataSourceConfig
    testing_criteria: Annotated[list[TestingCriterion], Field(min_length=1, max_length=64)]
    name: Annotated[str, Field(max_length=256)] | None = None
    metadata: Metadata | None = None


class EvalUpdate(WireRequest):
    name: Annotated[str, Field(max_length=256)] | None = None
    metadata: Metadata | None = None


class EvalObject(BaseModel):
    id: str
    object: Literal["eval"] = "eval"
    created_at: int
    name: str
    metadata: dict[str, str] | None = None
    # {"type": "custom", "schema": {item (and sample) namespaces}} as OpenAI returns it.
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


# --- runs ---


class ContentRow(WireRequest):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class FileContentSource(WireRequest):
    type: Literal["file_content"]
    content: Annotated[list[ContentRow], Field(min_length=1)]


class FileIdSource(WireRequest):
    type: Literal["file_id"]
    id: str


class QuerySource(WireRequest):
    """A query over stored completions or responses: refused by name (docs/api.md)."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["stored_completions", "responses"]


Source = Annotated[FileContentSource | FileIdSource | QuerySource, Field(discriminator="type")]


class TemplateMessage(WireRequest):
    """A message of `input_messages.template`: role and content, whose text may hold {{item.*}}."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | g.InputText | g.OutputText | list[str | g.InputText | g.OutputText]
    type: Literal["message"] | None = None


class TemplateInput(WireRequest):
    type: Literal["template"]
    template: Annotated[list[TemplateMessage], Field(min_length=1)]


class ItemReferenceInput(WireRequest):
    type: Literal["item_reference"]
    item_reference: str


InputMessages = Annotated[TemplateInput | ItemReferenceInput, Field(discriminator="type")]


class CompletionsSampling(WireRequest):
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning_effort: str | None = None


class ResponsesSampling(WireRequest):
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    text: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning_effort: str | None = None


class JsonlDataSource(WireRequest):
    type: Literal["jsonl"]
    source: Source


class CompletionsDataSource(WireRequest):
    type: Literal["completions"]
    source: Source
    input_messages: InputMessages | None = None
    model: str | None = None
    sampling_params: CompletionsSampling | None = None


class ResponsesDataSource(WireRequest):
    type: Literal["responses"]
    source: Source
    input_messages: InputMessages | None = None
    model: str | None = None
    sampling_params: ResponsesSampling | None = None


DataSource = Annotated[JsonlDataSource | CompletionsDataSource | ResponsesDataSource, Field(discriminator="type")]


class RunCreate(WireRequest):
    data_source: DataSource
    name: Annotated[str, Field(max_length=256)] | None = None
    metadata: Metadata | None = None


class ResultCounts(BaseModel):
    total: int = 0
    passed: int = 0
    failed: int = 0
    errored: int = 0


class PerTestingCriteriaResult(BaseModel):
    testing_criteria: str
    passed: int = 0
    failed: int = 0


class PerModelUsage(BaseModel):
    model_name: str
    invocation_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class EvalApiError(BaseModel):
    code: str
    message: str


class RunObject(BaseModel):
    id: str
    object: Literal["eval.run"] = "eval.run"
    eval_id: str
    name: str
    model: str | None = None
    status: RunStatus
    created_at: int
    data_source: dict[str, Any]
    metadata: dict[str, str] | None = None
    error: EvalApiError | None = None
    result_counts: ResultCounts
    per_testing_criteria_results: list[PerTestingCriteriaResult]
    per_model_usage: list[PerModelUsage]
    report_url: str
    # --- ftserve extensions: {"item_count": items in the data source, once the run started} ---
    extensions: dict[str, Any] | None = None


class RunDeleted(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool = True
    run_id: str


class OutputItemObject(BaseModel):
    id: str
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    eval_id: str
    run_id: str
    created_at: int
    status: ItemStatus
    datasource_item_id: int
    datasource_item: dict[str, Any]
    # Per criterion: {name, type, score, passed, sample} (+ `error` {code, message} when it could not grade).
    results: list[dict[str, Any]]
    sample: dict[str, Any]
