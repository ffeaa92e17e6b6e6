"""OpenAI's graders (openai-python `types/graders/*`) and the alpha grader endpoints' bodies
(`types/fine_tuning/alpha/grader_{run,validate}_{params,response}`), field for field.

Strict: no extra keys, no coercion (a number sent as a string is refused), so a bad grader is a 400 naming
the field. What a schema cannot say (a template's variable, a formula's names, a metric ftserve cannot
compute) is checked by `ftserve.graders.validate`, also a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", strict=True)
# Each name and template is text a person writes; a bound keeps one request's work bounded.
Name = Annotated[str, Field(max_length=256)]
Template = Annotated[str, Field(max_length=65_536)]

SimilarityMetric = Literal[
    "cosine",
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
]


class StringCheckGrader(BaseModel):
    """A string comparison between input and reference (both templates)."""

    model_config = _STRICT
    type: Literal["string_check"]
    name: Name
    input: Template
    reference: Template
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(BaseModel):
    """A similarity metric between input and reference (both templates)."""

    model_config = _STRICT
    type: Literal["text_similarity"]
    name: Name
    input: Template
    reference: Template
    evaluation_metric: SimilarityMetric


class PythonGrader(BaseModel):
    """`source` defines `grade(sample, item) -> float`; ftserve runs it in a sandbox (docs/graders.md)."""

    model_config = _STRICT
    type: Literal["python"]
    name: Name
    # OpenAI's limit on a python grader's source (256 kB).
    source: Annotated[str, Field(max_length=262_144)]
    # Accepted for compatibility: ftserve has one sandbox image (the server's Python, standard library only).
    image_tag: str | None = None


class InputText(BaseModel):
    model_config = _STRICT
    type: Literal["input_text"]
    text: Template


class OutputText(BaseModel):
    model_config = _STRICT
    type: Literal["output_text"]
    text: Template


class InputImage(BaseModel):
    model_config = _STRICT
    type: Literal["input_image"]
    image_url: str
    detail: str | None = None


class InputAudioData(BaseModel):
    model_config = _STRICT
    data: str
    format: Literal["mp3", "wav"]


class InputAudio(BaseModel):
    model_config = _STRICT
    type: Literal["input_audio"]
    input_audio: InputAudioData


ContentPart = Annotated[InputText | OutputText | InputImage | InputAudio, Field(discriminator="type")]
InputItem = Template | ContentPart


class GraderMessage(BaseModel):
    """One message to a model grader; its content may hold templates."""

    model_config = _STRICT
    role: Literal["user", "assistant", "system", "developer"]
    content: InputItem | list[InputItem]
    type: Literal["message"] | None = None


class SamplingParams(BaseModel):
    model_config = _STRICT
    max_completions_tokens: Annotated[int, Field(ge=1)] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    seed: int | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None


class ScoreModelGrader(BaseModel):
    """A model scores the input within `range` (default [0, 1])."""

    model_config = _STRICT
    type: Literal["score_model"]
    name: Name
    model: str
    input: list[GraderMessage]
    range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    sampling_params: SamplingParams | None = None


class LabelModelGrader(BaseModel):
    """A model picks one of `labels`; the reward is 1 when it is one of `passing_labels`."""

    model_config = _STRICT
    type: Literal["label_model"]
    name: Name
    model: str
    input: list[GraderMessage]
    labels: Annotated[list[str], Field(min_length=1)]
    passing_labels: Annotated[list[str], Field(min_length=1)]


SubGrader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader,
    Field(discriminator="type"),
]


class MultiGrader(BaseModel):
    """Several graders by name, combined by `calculate_output` (a formula over their names)."""

    model_config = _STRICT
    type: Literal["multi"]
    name: Name
    # OpenAI's guide sends a mapping of name → grader; its SDK types it as one grader (then named by its name).
    graders: dict[Name, SubGrader] | SubGrader
    calculate_output: Annotated[str, Field(max_length=4096)]


# What the endpoints take (OpenAI's run and validate params: a label_model only inside a multi).
Grader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | MultiGrader,
    Field(discriminator="type"),
]
AnyGrader = Grader | LabelModelGrader


class GraderRunRequest(BaseModel):
    model_config = _STRICT
    grader: Grader
    # The sample's text: `sample.output_text`, and `sample.output_json` when it parses as JSON.
    model_sample: str
    # The dataset item: the `item` namespace of templates, and python graders' second argument.
    item: Any = None


class GraderValidateRequest(BaseModel):
    model_config = _STRICT
    grader: Grader


class GraderValidateResponse(BaseModel):
    grader: Grader | None = None


class GraderErrors(BaseModel):
    """OpenAI's `metadata.errors`: one flag per kind of failure (a failed grade's reward is 0)."""

    formula_parse_error: bool = False
    invalid_variable_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_server_error: bool = False
    model_grader_server_error_details: str | None = None
    other_error: bool = False
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False


class GraderRunMetadata(BaseModel):
    name: str
    type: str
    errors: GraderErrors
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None = None
    sampled_model_name: str | None = None


class GraderRunResponse(BaseModel):
    reward: float
    sub_rewards: dict[str, Any]
    metadata: GraderRunMetadata
    model_grader_token_usage_per_model: dict[str, Any]
