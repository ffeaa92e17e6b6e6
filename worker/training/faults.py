"""Fault injection for reliability tests: active only when FTSERVE_FAULT_INJECTION is set."""

from __future__ import annotations

import torch

from app.config import Settings


def maybe_inject(settings: Settings, suffix: str | None, step: int) -> None:
    """Raise the configured fault before `step` of a job whose suffix matches (e.g. a real OOM's exception)."""
    fault = settings.fault_injection
    if not fault or suffix != fault.get("suffix") or step != int(fault.get("at_step", 1)):
        return
    if fault.get("kind") == "oom":
        raise torch.OutOfMemoryError(f"injected out-of-memory at step {step}")
    raise RuntimeError(f"injected fault at step {step}")
