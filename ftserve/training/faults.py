"""Fault injection for reliability tests: active only when FTSERVE_FAULT_INJECTION is set."""

from __future__ import annotations

import time
from typing import Any

import torch


def maybe_inject(
    faults: dict[str, Any] | list[dict[str, Any]] | None, suffix: str | None, step: int, attempt: int = 1
) -> None:
    """Act out each configured fault for `step` of a job whose suffix matches (and, if the fault names an
    `attempt`, only on that claim of the job): raise a real OOM's exception ("oom"), hold the step for `seconds`
    ("sleep": a slow step, to race a pause, cancel or kill against it), or raise another error."""
    for fault in [faults] if isinstance(faults, dict) else faults or []:
        if suffix != fault.get("suffix") or step != int(fault.get("at_step", 1)):
            continue
        if "attempt" in fault and attempt != int(fault["attempt"]):
            continue
        if fault.get("kind") == "oom":
            raise torch.OutOfMemoryError(f"injected out-of-memory at step {step}")
        if fault.get("kind") == "sleep":
            time.sleep(float(fault.get("seconds", 1)))
            continue
        raise RuntimeError(f"injected fault at step {step}")
