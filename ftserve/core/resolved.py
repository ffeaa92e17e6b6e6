"""ResolvedModel: what a model name means once the catalog has read it (a base, plus an adapter when fine-tuned);
the control plane produces it, training and serving consume it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResolvedModel:
    """What serving or training a model name means: a base, plus an adapter when fine-tuned."""

    name: str
    base: str
    job_id: str | None = None
    step: int | None = None

    @property
    def is_base(self) -> bool:
        return self.job_id is None
