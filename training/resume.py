"""Resume points: the trainer state saved beside an adapter, and finding the newest complete one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.storage import Storage, is_complete
from training.export import STATE_FILE
from training.trainer import LoraTrainer

PAUSE_DIR = "resume"


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


def latest(storage: Storage, job_id: str) -> ResumePoint | None:
    """The complete resume point with the most steps (epoch checkpoint or pause point), if any."""
    folder = storage.job_dir(job_id)
    if not folder.is_dir():
        return None
    candidates = [
        p for p in folder.iterdir() if p.is_dir() and (p.name.startswith("ckpt-step-") or p.name == PAUSE_DIR)
    ]
    points = [point for p in candidates if (point := _read(p)) is not None]
    return max(points, key=lambda r: r.progress.step, default=None)


def pause_dir(storage: Storage, job_id: str) -> Path:
    return storage.job_dir(job_id) / PAUSE_DIR
