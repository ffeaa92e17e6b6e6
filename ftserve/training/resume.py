"""Resume points: the trainer state saved beside an adapter, and finding the newest complete one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ftserve.core.storage import RESUME, Storage, is_complete
from ftserve.training.export import STATE_FILE
from ftserve.training.trainer import LoraTrainer


@dataclass
class Progress:
    """Where training stands: steps done, and the next step group to run (epoch, index within it)."""

    step: int = 0
    epoch: int = 0
    index: int = 0
    trained_tokens: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ResumePoint:
    path: Path
    progress: Progress
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]


def trainer_state(trainer: LoraTrainer, progress: Progress) -> dict[str, Any]:
    """What must be saved beside the adapter to continue exactly: optimizer, schedule and progress."""
    return {
        "progress": asdict(progress),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
    }


def _read(path: Path) -> ResumePoint | None:
    state_file = path / STATE_FILE
    if not is_complete(path) or not state_file.exists():
        return None  # half-written (no completion marker) or an adapter without trainer state
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled objects.
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        progress = Progress(**state["progress"])
    except Exception:
        return None
    return ResumePoint(path, progress, state["optimizer"], state["scheduler"])


def _points(storage: Storage, job_id: str, *, pause: bool) -> list[ResumePoint]:
    kinds = ("checkpoint", RESUME) if pause else ("checkpoint",)
    entries = [e for e in storage.job_entries(job_id) if e.complete and e.kind in kinds]
    points = []
    for entry in entries:
        # A checkpoint never changes once complete; the resume point is rewritten at every pause.
        local = storage.directory(f"{storage.job_key(job_id)}/{entry.name}", fresh=entry.kind == RESUME)
        if local is not None and (point := _read(local)) is not None:
            points.append(point)
    return points


def latest(storage: Storage, job_id: str) -> ResumePoint | None:
    """The complete resume point with the most steps (epoch checkpoint or pause point), if any."""
    return max(_points(storage, job_id, pause=True), key=lambda r: r.progress.step, default=None)


def checkpoints(storage: Storage, job_id: str) -> list[ResumePoint]:
    """The job's complete epoch checkpoints on disk (registered or not), oldest first."""
    return sorted(_points(storage, job_id, pause=False), key=lambda r: r.progress.step)


def drop_pause_point(storage: Storage, job_id: str) -> None:
    """Delete a finished job's resume point (its checkpoints and final adapter stay)."""
    storage.delete_dir(storage.resume_key(job_id))
