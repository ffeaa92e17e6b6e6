"""SQLAlchemy 2 models: the DB is the source of truth for every file, job, event and model."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Dialect, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from ftserve.core.job_status import JobStatus


class JobStatusType(TypeDecorator[JobStatus]):
    """JobStatus stored as its string (a plain VARCHAR, so the schema needs no enum type or migration)."""

    impl = String(32)
    cache_ok = True

    def process_bind_param(self, value: JobStatus | str | None, dialect: Dialect) -> str | None:
        return None if value is None else JobStatus(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> JobStatus | None:
        return None if value is None else JobStatus(value)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    # sha256 of the key; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class File(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_line: Mapped[int | None] = mapped_column(Integer, nullable=True)
    format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    n_examples: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_files_org_created", "org_id", "created_at", "id"),)


class Job(Base):
    __tablename__ = "fine_tuning_jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[JobStatus] = mapped_column(JobStatusType())
    # OpenAI's method.type: "supervised", "dpo" or "reinforcement".
    method: Mapped[str] = mapped_column(String(16), default="supervised", server_default="supervised")
    # A method's own configuration beyond its hyperparameters, as sent (reinforcement: {"grader": {...}}).
    method_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # What the client asked for ("auto" kept) and what training resolved it to (DPO's beta included).
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    # ftserve extensions: prompt_loss_weight, lora rank/alpha/dropout/target_modules.
    extensions: Mapped[dict[str, Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result_files: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Lease: which worker runs the job and until when its claim holds without a heartbeat. `attempts`
    # counts claims and fences writes: a worker writes only while (lease_owner, attempts) are still its own.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Times the job's worker vanished (its lease expired while the DB was reachable); the reaper fails the
    # job worker_lost at max_job_attempts. Pauses and database outages do not count.
    worker_losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # When the job was last sent to the broker; the reaper re-sends jobs queued for too long.
    enqueued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # A torchrun gang across hosts (FTSERVE_JOB_HOSTS): the claiming worker's rendezvous endpoint for claim
    # `gang_attempt`, the hosts it needs and how many have joined (itself first); workers join while
    # gang_joined < gang_hosts. gang_processes: how many processes the job's last gang ran (1: no gang).
    gang_endpoint: Mapped[str | None] = mapped_column(String(255), nullable=True)
    gang_attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gang_hosts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gang_joined: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gang_processes: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        Index("ix_jobs_org_created", "org_id", "created_at", "id"),
        Index("ix_jobs_status", "status"),
    )


class JobEvent(Base):
    __tablename__ = "job_events"

    # seq orders events exactly (created_at has one-second resolution).
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Checkpoint(Base):
    __tablename__ = "job_checkpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(256))


class FineTunedModel(Base):
    """A servable adapter: a job's final model or one of its checkpoints."""

    __tablename__ = "fine_tuned_models"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    base_model: Mapped[str] = mapped_column(String(256))
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    # None for the final adapter; the optimizer step for a checkpoint.
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    deleted_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class IdempotencyKey(Base):
    """The first response to a POST with an Idempotency-Key, replayed on retries."""

    __tablename__ = "idempotency_keys"

    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    path: Mapped[str] = mapped_column(String(256))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Batch(Base):
    """A Batch API batch: requests of one input file run through the inference engine, under a lease."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    # Why the batch failed before running: [{code, message, param, line}].
    errors: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    in_progress_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finalizing_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expired_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelling_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelled_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Which inference process runs the batch and until when its claim holds without a renewal.
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        Index("ix_batches_org_created", "org_id", "created_at", "id"),
        Index("ix_batches_status", "status"),
    )


class BatchResult(Base):
    """A finished request of a running batch (its output or error line), so a restart never redoes it."""

    __tablename__ = "batch_results"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    # The line as it goes into the output (ok) or error file: OpenAI's {"id", "custom_id", "response", "error"}.
    record: Mapped[str] = mapped_column(Text)


class Upload(Base):
    """An Uploads API upload: parts are stored as they arrive, then composed into one File on complete."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    mime_type: Mapped[str] = mapped_column(String(255))
    # What the client declared at create; the listed parts must add up to it at complete.
    bytes: Mapped[int] = mapped_column(BigInteger)
    # pending | completing (a complete in progress; "pending" on the wire) | completed | cancelled | expired
    status: Mapped[str] = mapped_column(String(16))
    # Every stored part's bytes, counted against max_upload_total_bytes.
    received_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)

    __table_args__ = (Index("ix_uploads_status_expires", "status", "expires_at"),)


class UploadPart(Base):
    """A stored part of an upload (its bytes under uploads/{upload_id}/{id} in the object store)."""

    __tablename__ = "upload_parts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)


class StoredResponse(Base):
    """A Responses API response kept for retrieval and `previous_response_id` (`store` true): the Response object,
    this request's input items and the conversation before them, so a follow-up needs no walk up the chain."""

    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_items: Mapped[list[Any]] = mapped_column(JSON)
    history: Mapped[list[Any]] = mapped_column(JSON)

    # The second index is the retention sweep's: every org's responses older than the cutoff.
    __table_args__ = (
        Index("ix_responses_org_created", "org_id", "created_at", "id"),
        Index("ix_responses_created", "created_at"),
    )


class Eval(Base):
    """An Evals API eval: the item schema of its data and the testing criteria (graders) every run is graded by."""

    __tablename__ = "evals"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    # The create request's data_source_config ({"type": "custom", "item_schema", "include_sample_schema"}).
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    testing_criteria: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_evals_org_created", "org_id", "created_at", "id"),)


class EvalRun(Base):
    """A run of an eval over one data source, executed by the inference role's eval runner under a lease; its
    counts are added up as graded items are recorded."""

    __tablename__ = "eval_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"))
    org_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256))
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # queued | in_progress | completed | canceled | failed
    status: Mapped[str] = mapped_column(String(16))
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    item_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    passed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    errored: Mapped[int] = mapped_column(Integer, default=0)
    # OpenAI's per_testing_criteria_results and per_model_usage, as they add up.
    per_criteria: Mapped[list[Any]] = mapped_column(JSON)
    per_model_usage: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Which inference process runs it and until when its claim holds without a renewal.
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        Index("ix_eval_runs_eval_created", "eval_id", "created_at", "id"),
        Index("ix_eval_runs_status", "status"),
    )


class EvalOutputItem(Base):
    """A graded item of a run: one row per (run, data source item), so an item is recorded once, whatever restarts."""

    __tablename__ = "eval_output_items"

    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), primary_key=True)
    datasource_item_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    # pass | fail | error
    status: Mapped[str] = mapped_column(String(8))
    # {"datasource_item", "results", "sample"}: the output item's parts as OpenAI returns them.
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_eval_output_items_run_created", "run_id", "created_at", "id"),)
