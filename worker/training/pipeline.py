"""run_job: claim the job's lease, then load → tokenize → train LoRA → checkpoint → export → succeed."""

from __future__ import annotations

import gc
import logging
import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.config import Settings, get_settings
from app.db.models import Job
from app.db.session import session_scope
from app.ids import fine_tuned_model_name, now
from app.services import job_state
from app.services import models as model_service
from app.storage import Storage
from worker.models.bases import load_base, pick_device, training_attention
from worker.models.families import choose_target_modules
from worker.training import faults, hyperparams, publish, resume
from worker.training.batching import step_groups
from worker.training.dataset import load_tokenized
from worker.training.errors import TrainingError, classify
from worker.training.export import save_adapter
from worker.training.planner import Layout
from worker.training.reporter import JobStopped, Reporter, lease_seconds, worker_id
from worker.training.tokenize import TokenizedExample
from worker.training.trainer import LoraTrainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    """What the pipeline needs of the job row, read once when the job is claimed."""

    id: str
    org: str
    model: str
    base: str
    start_adapter: tuple[str, int | None] | None
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    hyperparameters: dict[str, Any]
    extensions: dict[str, Any]


# The worker keeps the last base it trained on: jobs on the same base skip the load.
_BASES: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}


def _base(settings: Settings, name: str, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if name not in _BASES:
        _BASES.clear()
        gc.collect()
        attention = training_attention(settings.train_attn_implementation, device)
        _BASES[name] = load_base(settings, name, device, attn_implementation=attention)
    return _BASES[name]


def claim(job_id: str, owner: str) -> JobSpec | None:
    """Move queued → running under this worker's lease; None if the job is not ours to run."""
    settings = get_settings()
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None:
            return None
        ok = job_state.transition(
            s,
            job_id,
            "running",
            "Fine-tuning job started",
            only_from={"queued"},
            lease_owner=owner,
            lease_expires_at=time.time() + lease_seconds(),
            attempts=Job.attempts + 1,
            started_at=now(),
        )
        if not ok:
            return None
        resolved = model_service.resolve(s, settings, job.org_id, job.model)
        return JobSpec(
            id=job.id,
            org=job.org_id,
            model=job.model,
            base=resolved.base,
            start_adapter=None if resolved.job_id is None else (resolved.job_id, resolved.step),
            training_file=job.training_file,
            validation_file=job.validation_file,
            suffix=job.suffix,
            seed=job.seed,
            hyperparameters=dict(job.hyperparameters),
            extensions=dict(job.extensions or {}),
        )


def run_job(job_id: str) -> None:
    """Train one job end to end; a job that is not queued (a duplicate delivery) is left alone."""
    owner = worker_id()
    spec = claim(job_id, owner)
    if spec is None:
        log.info("job %s is not queued; nothing to do", job_id)
        return
    reporter = Reporter(job_id, owner)
    reporter.start_heartbeat()
    try:
        _train(spec, get_settings(), reporter)
    except JobStopped as stop:
        log.info("job %s stopped: %s", job_id, stop)
    except BaseException as exc:
        failure = classify(exc)
        log.exception("job %s failed: %s", job_id, failure.code)
        with session_scope() as s:
            job_state.transition(
                s,
                job_id,
                "failed",
                f"Fine-tuning job failed: {failure.message}",
                level="error",
                only_from={"running"},
                error=failure.as_dict(),
            )
        if not isinstance(exc, Exception):
            raise
    finally:
        reporter.stop_heartbeat()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _lora_config(settings: Settings, ext: dict[str, Any], base: PreTrainedModel, rep: Reporter) -> LoraConfig:
    # The architecture's attention + MLP linear layers (worker/models/families), never the LM head.
    targets = choose_target_modules(base, ext.get("target_modules"))
    rep.event(targets.message, level="warn" if targets.fallback else "info", data={"target_modules": targets.modules})
    return LoraConfig(
        r=int(ext.get("lora_rank", settings.lora_rank)),
        lora_alpha=ext.get("lora_alpha", settings.lora_alpha),
        lora_dropout=float(ext.get("lora_dropout", settings.lora_dropout)),
        target_modules=targets.modules,
        fan_in_fan_out=targets.fan_in_fan_out,
        task_type="CAUSAL_LM",
    )


def _attach_adapter(settings: Settings, spec: JobSpec, base: PreTrainedModel, rep: Reporter) -> PeftModel:
    torch.manual_seed(spec.seed)  # LoRA's A matrices are initialised from this seed
    if spec.start_adapter is None:
        return get_peft_model(base, _lora_config(settings, spec.extensions, base, rep))  # type: ignore[return-value]
    path = Storage(settings).adapter_dir(*spec.start_adapter)
    return PeftModel.from_pretrained(base, str(path), is_trainable=True)


def _check_disk(settings: Settings) -> None:
    free = shutil.disk_usage(settings.resolved_data_dir()).free
    if free < settings.min_free_disk_bytes:
        raise TrainingError(
            "insufficient_disk",
            f"Only {free // 2**20} MiB free in the data dir; training needs at least "
            f"{settings.min_free_disk_bytes // 2**20} MiB for checkpoints and the adapter",
        )


def _train(spec: JobSpec, settings: Settings, rep: Reporter) -> None:
    """Load the base, tokenize the files (reporting truncation), resolve hyperparameters, attach LoRA, fit."""
    _check_disk(settings)
    device = pick_device()
    rep.event(f"Loading base model {spec.base} on {device.type}")
    base, tok = _base(settings, spec.base, device)
    plw = float(spec.extensions.get("prompt_loss_weight", settings.default_prompt_loss_weight))
    max_len = settings.base_models[spec.base].max_seq_len
    train, stats = load_tokenized(settings, spec.training_file, tok, plw, max_len)
    if not train:
        raise TrainingError(
            "invalid_training_file", "No example has a completion token left after truncation", "training_file"
        )
    rep.event(
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
    hp = hyperparams.resolve(spec.hyperparameters, len(train))
    opts = hyperparams.options(settings, spec.extensions, plw)
    described = {**hp.as_dict(), **opts}
    rep.event(f"Hyperparameters: {described}", data=described, hyperparameters=hp.as_dict())
    point = resume.latest(Storage(settings), spec.id)
    if point is None:
        model = _attach_adapter(settings, spec, base, rep)
    else:
        rep.event(f"Resuming from step {point.progress.step} ({point.path.name})", data={"step": point.progress.step})
        model = PeftModel.from_pretrained(base, str(point.path), is_trainable=True)
    try:
        _fit(spec, settings, rep, model, tok, train, valid, hp, device, point)
    finally:
        # Take the LoRA layers out again so the cached base serves the next job unchanged.
        _BASES[spec.base] = (model.unload(), tok)  # type: ignore[operator]


def _fit(
    spec: JobSpec,
    settings: Settings,
    rep: Reporter,
    model: PeftModel,
    tok: PreTrainedTokenizerBase,
    train: list[TokenizedExample],
    valid: list[TokenizedExample],
    hp: hyperparams.Resolved,
    device: torch.device,
    point: resume.ResumePoint | None = None,
) -> None:
    """The epoch/step loop: a metrics event per step, a checkpoint per epoch, then the final outputs."""
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    layout = Layout.for_run(settings, model, pad, device)
    steps_per_epoch = len(step_groups(len(train), hp.batch_size, spec.seed, 0))
    total = steps_per_epoch * hp.n_epochs
    lr = settings.base_models[spec.base].base_learning_rate * hp.learning_rate_multiplier
    trainer = LoraTrainer(
        model,
        device,
        lr=lr,
        total_steps=total,
        warmup_ratio=float(spec.extensions.get("warmup_ratio", settings.warmup_ratio)),
        scheduler=str(spec.extensions.get("lr_scheduler", settings.lr_scheduler)),
        gradient_checkpointing=settings.gradient_checkpointing,
    )
    final_name = fine_tuned_model_name(spec.base, spec.org, spec.suffix, spec.id)
    at = point.progress if point else resume.Progress()
    if point is not None:
        trainer.optimizer.load_state_dict(point.optimizer)
        trainer.scheduler.load_state_dict(point.scheduler)
    rows, step, trained_tokens, first = at.rows, at.step, at.trained_tokens, at.step
    started = time.monotonic()
    valid_groups = step_groups(len(valid), hp.batch_size, spec.seed, 0) if valid else []
    try:
        for epoch in range(at.epoch, hp.n_epochs):
            for i, group in enumerate(step_groups(len(train), hp.batch_size, spec.seed, epoch)):
                if epoch == at.epoch and i < at.index:
                    continue  # done before the resume point
                try:
                    rep.check()
                except JobStopped as stop:
                    if str(stop) == "paused":
                        here = resume.Progress(step, epoch, i, trained_tokens, rows)
                        state = resume.trainer_state(trainer, here)
                        with trainer.full_precision():
                            save_adapter(model, resume.pause_dir(Storage(settings), spec.id), state)
                    raise
                faults.maybe_inject(settings, spec.suffix, step + 1)
                result = trainer.step(layout.plan([train[j] for j in group]))
                step += 1
                trained_tokens += result.tokens
                metrics: dict[str, Any] = {
                    "step": step,
                    "train_loss": result.loss,
                    "train_mean_token_accuracy": result.accuracy,
                }
                if valid_groups:
                    vb = layout.plan([valid[j] for j in valid_groups[step % len(valid_groups)]])
                    metrics["valid_loss"], metrics["valid_mean_token_accuracy"] = trainer.evaluate(vb)
                if valid and i == steps_per_epoch - 1:
                    full = trainer.evaluate(layout.plan(valid))
                    metrics["full_valid_loss"], metrics["full_valid_mean_token_accuracy"] = full
                rows.append({**metrics, "train_accuracy": result.accuracy})
                eta = now() + int((time.monotonic() - started) / (step - first) * (total - step))
                rep.event(
                    f"Step {step}/{total}: training loss={result.loss:.4f}",
                    type="metrics",
                    data={**metrics, "total_steps": total, "epoch": epoch + 1},
                    estimated_finish=eta,
                    trained_tokens=trained_tokens,
                )
            state = resume.trainer_state(trainer, resume.Progress(step, epoch + 1, 0, trained_tokens, rows))
            with trainer.full_precision():
                publish.checkpoint(spec.id, spec.org, spec.base, settings, model, final_name, step, rows[-1], state)
        rep.check()
        with trainer.full_precision():
            publish.finish(spec.id, spec.org, spec.base, settings, model, final_name, trained_tokens, rows)
        shutil.rmtree(resume.pause_dir(Storage(settings), spec.id), ignore_errors=True)
    finally:
        trainer.close()
