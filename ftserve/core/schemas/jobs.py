"""Fine-tuning jobs, events and checkpoints as OpenAI sends them, plus ftserve's marked extensions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ftserve.core.job_status import JobStatus
from ftserve.core.schemas.common import Metadata

Auto = Literal["auto"]
# OpenAI's bounds (n_epochs 1-50, batch_size 1-256, learning_rate_multiplier > 0); ftserve also caps the
# multiplier at 10 (a finite learning rate that still trains) and refuses NaN and Infinity.
Epochs = Annotated[int, Field(ge=1, le=50)]
BatchSize = Annotated[int, Field(ge=1, le=256)]
LearningRateMultiplier = Annotated[float, Field(gt=0.0, le=10.0, allow_inf_nan=False)]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Epochs | None = None
    batch_size: Auto | BatchSize | None = None
    learning_rate_multiplier: Auto | LearningRateMultiplier | None = None


class DpoHyperparameters(Hyperparameters):
    """OpenAI's DPO hyperparameters: the supervised three plus beta ("auto" or 0 < beta <= 2)."""

    beta: Auto | float | None = Field(default=None, json_schema_extra={"exclusiveMinimum": 0, "maximum": 2})

    @field_validator("beta")
    @classmethod
    def _beta_range(cls, value: Auto | float | None) -> Auto | float | None:
        if isinstance(value, float | int) and not 0 < value <= 2:
            raise ValueError('beta must be "auto" or a number greater than 0 and at most 2')
        return value


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    """OpenAI's `method`; `reinforcement` is accepted by the schema so the service can refuse it by name."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


class FtserveExtensions(BaseModel):
    """ftserve-only settings (not in OpenAI's API); documented in docs/api.md."""

    model_config = ConfigDict(extra="forbid")

    prompt_loss_weight: float | None = Field(default=None, ge=0.0, le=1.0)
    lora_rank: int | None = Field(default=None, ge=1, le=256)
    lora_alpha: float | None = Field(default=None, gt=0)
    lora_dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(default=None, min_length=1)
    warmup_ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    lr_scheduler: Literal["linear", "cosine", "constant"] | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
