"""run_job: claim the job's lease, then load → tokenize → train LoRA → checkpoint → export → succeed."""

from __future__ import annotations

import gc
import logging
import shutil

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.config import Settings
from app.errors import TrainingError
from app.services.training_store import JobSpec, JobStopped, TrainingStore
from app.storage import Storage
from models.bases import load_base, pick_device, training_attention
from models.families import choose_target_modules
from training import publish, resume
from training.config import TrainingConfig
from training.dataset import load_tokenized
from training.errors import classify
from training.loop import Run, fit
from training.tokenize import TokenizedExample

log = logging.getLogger(__name__)

# The worker keeps the last base it trained on: jobs on the same base skip the load.
_BASES: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}


def _base(
    settings: Settings, config: TrainingConfig, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if config.base not in _BASES:
        _BASES.clear()
        gc.collect()
        attention = training_attention(config.attn_implementation, device)
        _BASES[config.base] = load_base(settings, config.base, device, attn_implementation=attention)
    return _BASES[config.base]


def run_job(job_id: str, settings: Settings) -> None:
    """Train one job end to end; a job that is not queued (a duplicate delivery) is left alone."""
    store = TrainingStore(settings, job_id)
    spec = store.claim()
    if spec is None:
        log.info("job %s is not queued; nothing to do", job_id)
        return
    store.start_heartbeat()
    try:
        _train(spec, settings, store)
    except JobStopped as stop:
        log.info("job %s stopped: %s", job_id, stop)
    except BaseException as exc:
        failure = classify(exc)
        log.exception("job %s failed: %s", job_id, failure.code)
        try:
            store.fail(failure.code, failure.message, failure.param)
        except JobStopped as stop:  # the database stayed unreachable: the reaper requeues the job later
            log.warning("job %s: could not record the failure: %s", job_id, stop)
        if not isinstance(exc, Exception):
            raise
    finally:
        store.stop_heartbeat()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _lora_config(config: TrainingConfig, base: PreTrainedModel, store: TrainingStore) -> LoraConfig:
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
    storage: Storage, spec: JobSpec, config: TrainingConfig, base: PreTrainedModel, store: TrainingStore
) -> PeftModel:
    torch.manual_seed(spec.seed)  # LoRA's A matrices are initialised from this seed
    if spec.start_adapter is None:
        return get_peft_model(base, _lora_config(config, base, store))  # type: ignore[return-value]
    path = storage.adapter_dir(spec.start_adapter.job_id, spec.start_adapter.step)
    return PeftModel.from_pretrained(base, str(path), is_trainable=True)


def _check_disk(settings: Settings) -> None:
    free = shutil.disk_usage(settings.resolved_data_dir()).free
    if free < settings.min_free_disk_bytes:
        raise TrainingError(
            "insufficient_disk",
            f"Only {free // 2**20} MiB free in the data dir; training needs at least "
            f"{settings.min_free_disk_bytes // 2**20} MiB for checkpoints and the adapter",
        )


def _tokenize(
    settings: Settings, spec: JobSpec, config: TrainingConfig, tok: PreTrainedTokenizerBase, store: TrainingStore
) -> tuple[list[TokenizedExample], list[TokenizedExample]]:
    """The training and validation examples as tokens, the truncation report in an event."""
    plw, max_len = config.prompt_loss_weight, config.max_seq_len
    train, stats = load_tokenized(settings, spec.training_file, tok, plw, max_len)
    if not train:
        raise TrainingError(
            "invalid_training_file", "No example has a completion token left after truncation", "training_file"
        )
    store.event(
        f"Tokenized {stats.examples} examples ({stats.tokens} tokens): {stats.truncated} truncated to "
        f"{max_len} tokens, {stats.dropped} dropped with no completion token left",
        data={
            "examples": stats.examples,
            "tokens": stats.tokens,
            "truncated": stats.truncated,
            "dropped": stats.dropped,
            "dropped_lines": stats.dropped_lines[:100],
            "boundary_adjusted": stats.boundary_fixed,
        },
    )
    valid: list[TokenizedExample] = []
    if spec.validation_file:
        valid, _ = load_tokenized(settings, spec.validation_file, tok, plw, max_len)
    return train, valid


def _train(spec: JobSpec, settings: Settings, store: TrainingStore) -> None:
    """Load the base, tokenize the files, resolve hyperparameters, attach LoRA (or resume), fit."""
    _check_disk(settings)
    config = TrainingConfig.resolve(spec, settings)
    storage = Storage(settings)
    device = pick_device()
    store.event(f"Loading base model {spec.base} on {device.type}")
    base, tok = _base(settings, config, device)
    train, valid = _tokenize(settings, spec, config, tok, store)
    hp = config.hyperparameters(len(train))
    described = {**hp.as_dict(), **config.options()}
    store.resolved_hyperparameters(hp.as_dict(), f"Hyperparameters: {described}", described)
    publish.register_found_checkpoints(store, storage, spec)
    point = resume.latest(storage, spec.id)
    if point is None:
        model = _attach_adapter(storage, spec, config, base, store)
    else:
        store.event(f"Resuming from step {point.progress.step} ({point.path.name})", data={"step": point.progress.step})
        model = PeftModel.from_pretrained(base, str(point.path), is_trainable=True)
    try:
        run = Run(spec, config, hp, store, storage, settings.fault_injection)
        fit(run, model, tok, train, valid, device, point)
    finally:
        # Take the LoRA layers out again so the cached base serves the next job unchanged.
        _BASES[spec.base] = (model.unload(), tok)  # type: ignore[operator]
