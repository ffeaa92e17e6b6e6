"""Fault injection for reliability tests: active only when FTSERVE_FAULT_INJECTION is set."""

from __future__ import annotations

import time
from typing import Any

import torch


def maybe_inject(faults: dict[str, Any] | list[dict[str, Any]] | None, suffix: str | None, step: int) -> None:
    """Act out each configured fault for `step` of a job whose suffix matches: raise a real OOM's exception
    ("oom"), hold the step for `seconds` ("sleep": a slow step, to race a pause or cancel against it), or
    raise another error."""
    for fault in [faults] if isinstance(faults, dict) else faults or []:
        if suffix != fault.get("suffix") or step != int(fault.get("at_step", 1)):
            continue
        if fault.get("kind") == "oom":
            raise torch.OutOfMemoryError(f"injected out-of-memory at step {step}")
        if fault.get("kind") == "sleep":
            time.sleep(float(fault.get("seconds", 1)))
            continue
        raise RuntimeError(f"injected fault at step {step}")
