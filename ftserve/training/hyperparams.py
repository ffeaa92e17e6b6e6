"""Resolve "auto" hyperparameters from the dataset size (rules documented in docs/training.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ftserve.core.schemas.jobs import DpoHyperparameters, Hyperparameters

# DPO's beta when "auto": OpenAI's and TRL's default (the DPO paper's 0.1).
AUTO_BETA = 0.1
# Total example visits an "auto" job aims for: small files get more epochs, large ones fewer.
TARGET_EXAMPLE_VISITS = 100
MAX_AUTO_EPOCHS = 25
MAX_AUTO_STEPS_VISITS = 50_000


@dataclass(frozen=True)
class Resolved:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None = None  # DPO jobs only

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }
        if self.beta is not None:
            out["beta"] = self.beta
        return out


def auto_epochs(n: int) -> int:
    """3 epochs by default; more for tiny files (≥100 example visits), fewer for huge ones."""
    epochs = max(3, math.ceil(TARGET_EXAMPLE_VISITS / max(n, 1)))
    epochs = min(epochs, MAX_AUTO_EPOCHS)
    while epochs > 1 and epochs * n > MAX_AUTO_STEPS_VISITS:
        epochs -= 1
    return epochs


def auto_batch_size(n: int) -> int:
    """About 0.2% of the examples, as a power of two between 1 and 32."""
    target = max(1.0, n * 0.002)
    return int(min(32, 2 ** round(math.log2(target))))


def resolve(
    requested: Hyperparameters, n_examples: int, auto_multiplier: float = 1.0, min_auto_batch: int = 1
) -> Resolved:
    """The job's hyperparameters with every "auto" (or unset) one resolved for a dataset of n examples
    (n preference pairs for a DPO job, whose beta is resolved too); the method's own "auto" rules
    (its MethodSpec's) give the learning_rate_multiplier and the smallest batch_size."""

    def pick(key: str, auto: Any) -> Any:
        value = getattr(requested, key)
        return auto if value in (None, "auto") else value

    batch = int(pick("batch_size", max(auto_batch_size(n_examples), min_auto_batch)))
    return Resolved(
        n_epochs=int(pick("n_epochs", auto_epochs(n_examples))),
        batch_size=min(batch, max(n_examples, 1)),
        learning_rate_multiplier=float(pick("learning_rate_multiplier", auto_multiplier)),
        beta=float(pick("beta", AUTO_BETA)) if isinstance(requested, DpoHyperparameters) else None,
    )
