"""Every training failure becomes a job error with a stable code, here and only here."""

from __future__ import annotations

from dataclasses import dataclass

from ftserve.core.datasets.formats import DatasetError
from ftserve.core.errors import TrainingError
from ftserve.core.storage import StorageUnavailable
from ftserve.models.bases import BaseModelUnavailable

__all__ = ["JobFailure", "TrainingError", "classify"]


@dataclass(frozen=True)
class JobFailure:
    code: str
    message: str
    param: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "param": self.param}


def classify(exc: BaseException) -> JobFailure:
    """Map an exception raised while training to the job's error object."""
    if isinstance(exc, TrainingError):
        return JobFailure(exc.code, exc.message, exc.param)
    if isinstance(exc, DatasetError):
        return JobFailure("invalid_training_file", f"Training file is invalid: {exc.describe()}", "training_file")
    if isinstance(exc, StorageUnavailable):
        # Retried with backoff already; the store keeps the last complete checkpoint for a rerun.
        return JobFailure("storage_unavailable", f"{exc}; the job can be run again from its last checkpoint")
    if isinstance(exc, BaseModelUnavailable):
        return JobFailure("model_not_found", f"Base model unavailable: {exc}", "model")
    if _is_oom(exc):
        return JobFailure(
            "out_of_memory",
            "Training ran out of memory; lower batch_size or the batch token budget, or use a larger GPU",
        )
    return JobFailure("internal_error", f"Training failed: {type(exc).__name__}: {exc}")


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    # CUDA says "out of memory"; the CPU allocator says "can't allocate memory".
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
