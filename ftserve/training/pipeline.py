"""run_job: claim the job's lease, then load → tokenize → train LoRA → checkpoint → export → succeed."""

from __future__ import annotations

import gc
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.errors import TrainingError
from ftserve.core.storage import Storage
from ftserve.models.bases import load_base, pick_device, training_attention
from ftserve.models.families import choose_target_modules
from ftserve.training import publish, resume
from ftserve.training.config import LoraOptions, TrainingConfig
from ftserve.training.errors import classify
from ftserve.training.loop import Run, fit
from ftserve.training.methods.base import MethodJob, MethodTraining
from ftserve.training.methods.registry import training_for
from ftserve.training.ports import ClaimingStore, JobSpec, JobStopped, JobStore
from ftserve.training.rank import Gang, is_gang_fault
from ftserve.training.sharding import shard_base
from ftserve.training.threads import use_training_threads
from ftserve.training.tokenize import TokenizeStats

log = logging.getLogger(__name__)

# The worker keeps the last base it trained on: jobs on the same base skip the load.
_BASES: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}

# The store run_job is handed: the supervisor's train callback gets the same store type back.
S = TypeVar("S", bound=ClaimingStore)


def _base(
    settings: Settings, config: TrainingConfig, device: torch.device, *, sharded: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The job's base on device; one to be sharded (FSDP) stays in CPU memory, whence each rank takes its shard."""
    if config.base not in _BASES:
        _BASES.clear()
        gc.collect()
        attention = training_attention(config.attn_implementation, device)
        _BASES[config.base] = load_base(settings, config.base, device, attn_implementation=attention, move=not sharded)
    return _BASES[config.base]


def run_job(store: S, settings: Settings, train: Callable[[JobSpec, Settings, S], object] | None = None) -> None:
    """Claim the store's job and train it while its lease is renewed: here (`run_claimed`), or as `train` does it
    (the gang supervisor's); a job that is not queued (a duplicate delivery) is left alone."""
    spec = store.claim()
    if spec is None:
        log.info("job is not queued; nothing to do (%s)", store.owner)
        return
    log.info("job %s claimed by %s (attempt %d, base %s)", spec.id, store.owner, spec.attempt, spec.base)
    store.start_heartbeat()
    try:
        (train or run_claimed)(spec, settings, store)
    finally:
        store.stop_heartbeat()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_claimed(spec: JobSpec, settings: Settings, store: JobStore, gang: Gang = Gang()) -> bool:
    """Train a claimed job on this process (one rank of `gang`); False if it failed. Rank 0 records a
    failure (its code from training/errors) through the store; an error of another rank, or of a collective
    (a peer died), is raised instead: it fails the gang, whose supervisor hands the job back to be resumed."""
    try:
        _train(spec, settings, store if gang.main else FollowerStore(store), gang)
    except JobStopped as stop:
        log.info("job %s stopped: %s", spec.id, stop)
    except BaseException as exc:
        if not gang.main or (gang.size > 1 and is_gang_fault(exc)):
            raise
        failure = classify(exc)
        log.exception("job %s failed: %s", spec.id, failure.code)
        try:
            store.fail(failure.code, failure.message, failure.param)
        except JobStopped as stop:  # the database stayed unreachable: the reaper requeues the job later
            log.warning("job %s: could not record the failure: %s", spec.id, stop)
        if not isinstance(exc, Exception):
            raise
        return False
    return True


class FollowerStore:
    """The store of a gang's rank other than 0: what it would report is rank 0's to write, so it writes
    nothing (the loop keeps checks, metrics and files on rank 0; training/loop); the rest is the rank's store."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def check(self) -> None:
        self._store.check()

    def event(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        return None

    def resolved_hyperparameters(self, hyperparameters: dict[str, Any], message: str, data: dict[str, Any]) -> None:
        return None

    def step(self, message: str, data: dict[str, Any], *, estimated_finish: int, trained_tokens: int) -> None:
        self._store.step(message, data, estimated_finish=estimated_finish, trained_tokens=trained_tokens)

    def pause_point_saved(self, step: int, place: Callable[[], None]) -> bool:
        return self._store.pause_point_saved(step, place)

    def checkpoint(
        self,
        org: str,
        base: str,
        final_name: str,
        step: int,
        metrics: dict[str, Any],
        place: Callable[[], None],
        *,
        found: bool = False,
    ) -> str | None:
        return self._store.checkpoint(org, base, final_name, step, metrics, place, found=found)

    def finish(
        self, org: str, base: str, name: str, trained_tokens: int, result_csv: bytes, place: Callable[[], None]
    ) -> None:
        self._store.finish(org, base, name, trained_tokens, result_csv, place)

    def fail(self, code: str, message: str, param: str | None) -> bool:
        return self._store.fail(code, message, param)

    def judge_authorization(self) -> str | None:
        return self._store.judge_authorization()

    def revoke_judge_authorization(self) -> None:
        self._store.revoke_judge_authorization()


def _lora_config(config: TrainingConfig, base: PreTrainedModel, store: JobStore) -> LoraConfig:
    # The architecture's attention + MLP linear layers (models/families), never the LM head.
    targets = choose_target_modules(base, config.lora.target_modules)
    level = "warn" if targets.fallback else "info"
    store.event(targets.message, level=level, data={"target_modules": targets.modules})
    return LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,  # type: ignore[arg-type]
        lora_dropout=config.lora.dropout,
        target_modules=targets.modules,
        fan_in_fan_out=targets.fan_in_fan_out,
        task_type="CAUSAL_LM",
    )


def _attach_adapter(
    storage: Storage, spec: JobSpec, config: TrainingConfig, base: PreTrainedModel, store: JobStore
) -> PeftModel:
    torch.manual_seed(spec.seed)  # LoRA's A matrices are initialised from this seed
    if spec.start_adapter is None:
        return get_peft_model(base, _lora_config(config, base, store))  # type: ignore[return-value]
    return PeftModel.from_pretrained(base, str(_start_dir(storage, spec)), is_trainable=True)


def _start_dir(storage: Storage, spec: JobSpec) -> Path:
    """The complete adapter directory of the fine-tuned model the job starts from."""
    assert spec.start_adapter is not None
    path = storage.adapter_if_complete(spec.start_adapter.job_id, spec.start_adapter.step)
    if path is None:
        raise TrainingError(
            "model_not_found",
            f"The adapter files of {spec.model}, the model this job starts from, are gone (deleted, or a "
            "checkpoint rotated out)",
            "model",
        )
    return path


def _adapter_shape(model: PeftModel) -> LoraOptions:
    """The LoRA shape of the adapter being trained (a continued model's own, not the configured one)."""
    cfg: Any = model.peft_config["default"]  # a LoraConfig
    return LoraOptions(
        rank=int(cfg.r),
        alpha=float(cfg.lora_alpha),
        dropout=float(cfg.lora_dropout),
        target_modules=sorted(cfg.target_modules) if cfg.target_modules else None,
    )


def _check_disk(settings: Settings) -> None:
    free = shutil.disk_usage(settings.resolved_data_dir()).free
    if free < settings.min_free_disk_bytes:
        raise TrainingError(
            "insufficient_disk",
            f"Only {free // 2**20} MiB free in the data dir; training needs at least "
            f"{settings.min_free_disk_bytes // 2**20} MiB for checkpoints and the adapter",
        )


def _tokenize(
    settings: Settings,
    spec: JobSpec,
    config: TrainingConfig,
    tok: PreTrainedTokenizerBase,
    store: JobStore,
    training: MethodTraining,
) -> tuple[list[Any], list[Any]]:
    """The training and validation items (examples, or the method's own: DPO's preference pairs) as tokens, the
    truncation report in an event."""
    train, stats = training.tokenize(settings, spec.training_file, tok, config)
    _report(stats, config.max_seq_len, training.unit, training.dropped_why, bool(train), store)
    valid: list[Any] = []
    if spec.validation_file:
        valid, _ = training.tokenize(settings, spec.validation_file, tok, config)
    return train, valid


def _report(stats: TokenizeStats, max_len: int, what: str, why: str, any_left: bool, store: JobStore) -> None:
    if not any_left:
        raise TrainingError("invalid_training_file", f"No example is left after truncation ({why})", "training_file")
    store.event(
        f"Tokenized {stats.examples} {what} ({stats.tokens} tokens): {stats.truncated} truncated to "
        f"{max_len} tokens, {stats.dropped} dropped {why}",
        data={
            "examples": stats.examples,
            "tokens": stats.tokens,
            "truncated": stats.truncated,
            "dropped": stats.dropped,
            "dropped_lines": stats.dropped_lines[:100],
            "boundary_adjusted": stats.boundary_fixed,
        },
    )


def _train(spec: JobSpec, settings: Settings, store: JobStore, gang: Gang) -> None:
    """Load the base, tokenize the files, attach LoRA (or resume), resolve hyperparameters, fit."""
    _check_disk(settings)
    config = TrainingConfig.resolve(spec, settings)
    storage = Storage(settings)
    device = gang.device() if gang.size > 1 else pick_device()
    # A gang trains only the methods that run on one (worker/gang.py); FSDP shards its base when the setting asks.
    sharded = gang.size > 1 and settings.gang_sharding == "fsdp"
    how = f", sharded over {gang.size} processes (FSDP)" if sharded else ""
    # On CPU, every core this process owns (its share of the worker's; training/threads).
    threads = {"threads": use_training_threads()} if device.type == "cpu" else None
    store.event(f"Loading base model {spec.base} on {device.type}{how}", data=threads)
    base, tok = _base(settings, config, device, sharded=sharded)
    training = training_for(config.method)
    train, valid = _tokenize(settings, spec, config, tok, store, training)
    hp = config.hyperparameters(len(train))
    if gang.main:
        publish.register_found_checkpoints(store, storage, spec)
    point = resume.latest(storage, spec.id)
    if point is None:
        model = _attach_adapter(storage, spec, config, base, store)
    else:
        store.event(f"Resuming from step {point.progress.step} ({point.path.name})", data={"step": point.progress.step})
        model = PeftModel.from_pretrained(base, str(point.path), is_trainable=True)
    attention = base.config._attn_implementation
    try:
        shape = _adapter_shape(model) if spec.start_adapter or point else None
        described = {**hp.as_dict(), **config.options(shape)}
        store.resolved_hyperparameters(hp.as_dict(), f"Hyperparameters: {described}", described)
        if training.block_mask and attention == "flash_attention_2":
            # Flash-attention's varlen kernel cannot take the 4-D block mask this method's rows need.
            base.set_attn_implementation("sdpa")
        if sharded:
            held = shard_base(model, gang, device)
            store.event(
                f"Sharded the base over {gang.size} processes (FSDP): each holds {held:.0%} of its weights",
                data={"sharded_share": round(held, 4)},
            )
        job = MethodJob(settings, spec, config, model, tok, hp, device, gang, store)
        method = training.build(job, train, valid)
        run = Run(spec, config, hp, store, storage, settings.fault_injection, gang, sharded)
        fit(run, model, method, device, point)
    finally:
        if sharded:  # FSDP changed the base in place; the rank's process ends with this job anyway
            _BASES.pop(spec.base, None)
        else:
            # Take the LoRA layers out again so the cached base serves the next job unchanged.
            unloaded = model.unload()  # type: ignore[operator]
            if unloaded.config._attn_implementation != attention:
                unloaded.set_attn_implementation(attention)
            _BASES[spec.base] = (unloaded, tok)
