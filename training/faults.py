"""Fault injection for reliability tests: active only when FTSERVE_FAULT_INJECTION is set."""

from __future__ import annotations

from typing import Any

import torch


def maybe_inject(fault: dict[str, Any] | None, suffix: str | None, step: int) -> None:
    """Raise the configured fault before `step` of a job whose suffix matches (e.g. a real OOM's exception)."""
    if not fault or suffix != fault.get("suffix") or step != int(fault.get("at_step", 1)):
        return
    if fault.get("kind") == "oom":
        raise torch.OutOfMemoryError(f"injected out-of-memory at step {step}")
    raise RuntimeError(f"injected fault at step {step}")
