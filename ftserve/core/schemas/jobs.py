"""Fine-tuning jobs, events and checkpoints as OpenAI sends them, plus ftserve's marked extensions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ftserve.core.job_status import JobStatus
from ftserve.core.schemas.common import Metadata, WireRequest
from ftserve.core.schemas.graders import Grader
from ftserve.core.validation import moved

Auto = Literal["auto"]
# OpenAI's bounds (n_epochs 1-50, batch_size 1-256, learning_rate_multiplier > 0); ftserve also caps the
# multiplier at 10 (a finite learning rate that still trains) and refuses NaN and Infinity.
Epochs = Annotated[int, Field(ge=1, le=50)]
BatchSize = Annotated[int, Field(ge=1, le=256)]
LearningRateMultiplier = Annotated[float, Field(gt=0.0, le=10.0, allow_inf_nan=False)]
Beta = Annotated[float, Field(gt=0.0, le=2.0, allow_inf_nan=False)]
# Reinforcement fine-tuning's own (OpenAI's names): samples per prompt scale with compute_multiplier
# (docs/training.md#reinforcement-fine-tuning); evaluation every eval_interval steps over eval_samples prompts.
ComputeMultiplier = Annotated[float, Field(ge=0.00001, le=10.0, allow_inf_nan=False)]
EvalInterval = Annotated[int, Field(ge=1, le=10_000)]
EvalSamples = Annotated[int, Field(ge=1, le=1_000)]

# Fields that moved, where a client that learned an earlier shape sends them, and where they are now: the
# legacy /v1/fine-tunes API took the hyperparameters at the top level, and ftserve's own settings live in
# `extensions` (earlier ftserve versions took prompt_loss_weight among the hyperparameters).
_EXTENSIONS = ("prompt_loss_weight", "lora_rank", "lora_alpha", "lora_dropout", "target_modules", "warmup_ratio")
MOVED_INTO_EXTENSIONS = {name: f"extensions.{name}" for name in (*_EXTENSIONS, "lr_scheduler")}
MOVED_FROM_TOP = {
    **MOVED_INTO_EXTENSIONS,
    **{name: f"hyperparameters.{name}" for name in ("n_epochs", "batch_size", "learning_rate_multiplier")},
    "beta": "method.dpo.hyperparameters.beta",
}
MOVED_FROM_HYPERPARAMETERS = {**MOVED_INTO_EXTENSIONS, "beta": "method.dpo.hyperparameters.beta"}


class Hyperparameters(WireRequest):
    model_config = ConfigDict(json_schema_extra=moved(MOVED_FROM_HYPERPARAMETERS))

    n_epochs: Auto | Epochs | None = None
    batch_size: Auto | BatchSize | None = None
    learning_rate_multiplier: Auto | LearningRateMultiplier | None = None


class DpoHyperparameters(Hyperparameters):
    """OpenAI's DPO hyperparameters: the supervised three plus beta ("auto" or 0 < beta <= 2)."""

    model_config = ConfigDict(json_schema_extra=moved(MOVED_INTO_EXTENSIONS))

    beta: Auto | Beta | None = None


class ReinforcementHyperparameters(Hyperparameters):
    """OpenAI's reinforcement hyperparameters: the shared three plus its own; `reasoning_effort` the bases
    ftserve serves cannot honour beyond "default" (refused by name at job creation)."""

    model_config = ConfigDict(json_schema_extra=moved(MOVED_INTO_EXTENSIONS))

    compute_multiplier: Auto | ComputeMultiplier | None = None
    eval_interval: Auto | EvalInterval | None = None
    eval_samples: Auto | EvalSamples | None = None
    # OpenAI's default; never "auto" (not one of its values).
    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"


class SupervisedMethod(WireRequest):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(WireRequest):
    hyperparameters: DpoHyperparameters | None = None


class ReinforcementMethod(WireRequest):
    """OpenAI's reinforcement method: the grader that scores each sampled answer, and the hyperparameters."""

    grader: Grader
    hyperparameters: ReinforcementHyperparameters | None = None


class Method(WireRequest):
    """OpenAI's `method`."""

    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class FtserveExtensions(WireRequest):
    """ftserve-only settings (not in OpenAI's API); documented in docs/api.md."""

    prompt_loss_weight: float | None = Field(default=None, ge=0.0, le=1.0)
    lora_rank: int | None = Field(default=None, ge=1, le=256)
    lora_alpha: float | None = Field(default=None, gt=0)
    lora_dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(default=None, min_length=1)
    warmup_ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    lr_scheduler: Literal["linear", "cosine", "constant"] | None = None
    # Reinforcement jobs: the longest answer a rollout samples (tokens; default FTSERVE_RFT_MAX_COMPLETION_TOKENS).
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)


class JobCreate(WireRequest):
    model_config = ConfigDict(json_schema_extra=moved(MOVED_FROM_TOP))

    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: Metadata | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[Any] | None = None
    # --- ftserve extensions (not part of OpenAI's API) ---
    extensions: FtserveExtensions | None = Field(default=None, description="ftserve extension block")


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None
    # --- ftserve extensions ---
    extensions: dict[str, Any] | None = None
    # How the job's last run trained: {"processes": N, "hosts": H} of its torchrun gang; None: one process.
    gang: dict[str, int] | None = None


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] = "message"


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float | None]
    step_number: int
