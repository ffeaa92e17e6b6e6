"""The epoch/step loop of one job, whatever its method (training/methods): a metrics event per step, a
checkpoint per epoch, a resume point on pause, then the final adapter; every DB write goes through the
job's training store."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel

from ftserve.core.ids import fine_tuned_model_name, now
from ftserve.core.storage import Storage
from ftserve.training import faults, publish, resume
from ftserve.training.batching import step_groups
from ftserve.training.config import TrainingConfig
from ftserve.training.hyperparams import Resolved
from ftserve.training.methods.base import StepAbandoned, StepOutcome, TrainingMethod
from ftserve.training.ports import JobSpec, JobStopped, JobStore
from ftserve.training.rank import SINGLE, Gang
from ftserve.training.trainer import LoraTrainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """One job's run: what it is, how it trains, and where its progress and files go."""

    spec: JobSpec
    config: TrainingConfig
    hp: Resolved
    store: JobStore
    storage: Storage
    fault_injection: dict[str, Any] | list[dict[str, Any]] | None = None
    gang: Gang = SINGLE  # in a torchrun gang only rank 0 writes (store, files); all ranks train alike
    sharded: bool = False  # the base is sharded over the gang (FSDP): ranks run forwards in lockstep


# What rank 0 tells the others after a step of its own (a check, a checkpoint, the final publish).
_GO, _STOP, _AGAIN = 0, 1, 2


def _trainer(run: Run, model: PeftModel, device: torch.device, total: int) -> LoraTrainer:
    return LoraTrainer(
        model,
        device,
        lr=run.config.learning_rate(run.hp),
        total_steps=total,
        warmup_ratio=run.config.warmup_ratio,
        scheduler=run.config.lr_scheduler,
        gradient_checkpointing=run.config.gradient_checkpointing,
        gang=run.gang,
        lockstep=run.sharded,
    )


def _on_main(run: Run, action: Callable[[], object], *, again_on_pause: bool = False) -> int:
    """Run action on rank 0 alone and tell every rank how it went: _GO, or it raised JobStopped; then rank 0
    re-raises it and the others raise their own (_STOP), unless a pause says try again (_AGAIN)."""
    stop: JobStopped | None = None
    word = _GO
    if run.gang.main:
        try:
            action()
        except JobStopped as exc:
            stop, word = exc, (_AGAIN if again_on_pause and exc.paused else _STOP)
    word = run.gang.word_from_main(word)
    if word == _STOP:
        raise stop or JobStopped(None, "stopped (rank 0)")
    return word


def _check_or_pause(run: Run, trainer: LoraTrainer, model: PeftModel, here: resume.Progress) -> None:
    """Raise JobStopped (on every rank) if the job is no longer ours, as rank 0 finds it."""
    _on_main(run, lambda: _check_or_pause_main(run, trainer, model, here))


def _check_or_pause_main(run: Run, trainer: LoraTrainer, model: PeftModel, here: resume.Progress) -> None:
    """Raise JobStopped if the job is no longer ours; a paused job first saves where it stands, and goes on
    training if it was resumed meanwhile (still under this worker's lease)."""
    try:
        run.store.check()
    except JobStopped as stop:
        if not stop.paused:
            raise
        state = resume.trainer_state(trainer, here)
        with trainer.full_precision():
            if publish.pause_point(run.store, run.storage, run.spec, model, here.step, state):
                return
        raise


def _train_step(
    run: Run,
    trainer: LoraTrainer,
    model: PeftModel,
    method: TrainingMethod,
    group: list[int],
    step: int,
    before: resume.Progress,
) -> StepOutcome:
    """The job's step `step`, after the check before it. A method that finds the job stopped mid-step
    (reinforcement, while it samples) abandons the step before its optimizer step, so the same check runs again
    where the step began: a cancel ends the run, a pause saves its resume point `before` the step (which runs
    again on resume), and a pause resumed meanwhile (or a stop that was not one after all) runs the step again."""
    while True:
        _check_or_pause(run, trainer, model, before)
        faults.maybe_inject(run.fault_injection, run.spec.suffix, step, run.spec.attempt)
        try:
            return method.train_step(trainer, group, step)
        except StepAbandoned as why:
            log.info("job %s: step %d abandoned before its optimizer step: %s", run.spec.id, step, why)


def fit(
    run: Run,
    model: PeftModel,
    method: TrainingMethod,
    device: torch.device,
    point: resume.ResumePoint | None = None,
) -> None:
    """Train every step of every epoch (from the resume point, if any), then publish the final adapter."""
    spec, hp = run.spec, run.hp
    steps_per_epoch = len(step_groups(method.n_train, hp.batch_size, spec.seed, 0))
    total = steps_per_epoch * hp.n_epochs
    final_name = fine_tuned_model_name(spec.base, spec.org, spec.suffix, spec.id)
    at = point.progress if point else resume.Progress()
    rows, step, trained_tokens, first = at.rows, at.step, at.trained_tokens, at.step
    valid_groups = step_groups(method.n_valid, hp.batch_size, spec.seed, 0) if method.n_valid else []
    trainer: LoraTrainer | None = None
    try:  # from here on the method is closed whatever happens (reinforcement's sampler thread, grader pool)
        trainer = _trainer(run, model, device, total)
        if point is not None:
            trainer.optimizer.load_state_dict(point.optimizer)
            trainer.scheduler.load_state_dict(point.scheduler)
        for earlier in rows:  # a resumed job's watch starts where it stood (a warning given stays given)
            method.health(earlier)
        note = method.prepare(trainer, resumed=point is not None)
        if note:
            run.store.event(note)
        started = time.monotonic()
        for epoch in range(at.epoch, hp.n_epochs):
            for i, group in enumerate(step_groups(method.n_train, hp.batch_size, spec.seed, epoch)):
                if epoch == at.epoch and i < at.index:
                    continue  # done before the resume point
                before = resume.Progress(step, epoch, i, trained_tokens, rows)
                step += 1  # the job's step number, counted from the resume point's
                result = _train_step(run, trainer, model, method, group, step, before)
                trained_tokens += result.tokens
                metrics: dict[str, Any] = {"step": step, **result.metrics}
                if valid_groups:
                    metrics.update(method.evaluate(trainer, valid_groups[step % len(valid_groups)], "valid", step))
                if method.n_valid and i == steps_per_epoch - 1:
                    metrics.update(method.evaluate(trainer, None, "full_valid", step))
                rows.append({**metrics, "train_accuracy": metrics.get("train_mean_token_accuracy")})
                warning = method.health(metrics)
                if not run.gang.main:
                    continue
                if warning is not None:
                    run.store.event(warning.message, level="warn", data=warning.data)
                eta = now() + int((time.monotonic() - started) / (step - first) * (total - step))
                run.store.step(
                    f"Step {step}/{total}: {method.step_message(metrics)}",
                    {**metrics, "total_steps": total, "epoch": epoch + 1},
                    estimated_finish=eta,
                    trained_tokens=trained_tokens,
                )
            state = resume.trainer_state(trainer, resume.Progress(step, epoch + 1, 0, trained_tokens, rows))

            def save(step: int = step, state: dict[str, Any] = state) -> None:
                with trainer.full_precision():
                    publish.checkpoint(run.store, run.storage, spec, model, final_name, step, rows[-1], state)

            _on_main(run, save)
        end = resume.Progress(step, hp.n_epochs, 0, trained_tokens, rows)

        def finish() -> None:
            with trainer.full_precision():
                columns = method.csv_columns
                publish.finish(run.store, run.storage, spec, model, final_name, trained_tokens, rows, columns)

        while True:  # a pause between the last check and the final transition saves a resume point too
            _check_or_pause(run, trainer, model, end)
            if _on_main(run, finish, again_on_pause=True) == _GO:
                break
        if run.gang.main:
            resume.drop_pause_point(run.storage, spec.id)
    finally:
        try:
            if trainer is not None:
                trainer.close()
        finally:
            method.close()
