"""Random OpenAI-style ids (file-…, ftjob-…) and fine-tuned model names."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now() -> int:
    """Unix seconds, the timestamp unit of OpenAI's objects."""
    return int(time.time())


def fine_tuned_model_name(base: str, org: str, suffix: str | None, job_id: str) -> str:
    """`ft:{base}:{org}:{suffix}:{id}` as OpenAI names fine-tuned models (empty suffix allowed)."""
    return f"ft:{base}:{org}:{suffix or ''}:{job_id.removeprefix('ftjob-')}"


def checkpoint_model_name(model: str, step: int) -> str:
    return f"{model}:ckpt-step-{step}"
