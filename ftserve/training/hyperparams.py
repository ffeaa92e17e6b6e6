"""Resolve "auto" hyperparameters from the dataset size (rules documented in docs/training.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ftserve.core.schemas.jobs import DpoHyperparameters, Hyperparameters, ReinforcementHyperparameters

# DPO's beta when "auto": OpenAI's and TRL's default (the DPO paper's 0.1).
AUTO_BETA = 0.1
# Total example visits an "auto" job aims for: small files get more epochs, large ones fewer.
TARGET_EXAMPLE_VISITS = 100
MAX_AUTO_EPOCHS = 25
MAX_AUTO_STEPS_VISITS = 50_000
# Reinforcement: completions sampled per prompt at compute_multiplier 1 (TRL's GRPO default is 8; a CPU affords
# fewer), the evaluations an "auto" eval_interval spreads over a job, and the prompts an "auto" evaluation scores.
GROUP_PER_COMPUTE = 4
MAX_GROUP = 64
AUTO_EVALUATIONS = 10
AUTO_EVAL_SAMPLES = 16


@dataclass(frozen=True)
class Resolved:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None = None  # DPO jobs only
    reinforcement: ReinforcementResolved | None = None  # reinforcement jobs only

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }
        if self.beta is not None:
            out["beta"] = self.beta
        if self.reinforcement is not None:
            r = self.reinforcement
            out.update(
                compute_multiplier=r.compute_multiplier,
                eval_interval=r.eval_interval,
                eval_samples=r.eval_samples,
                reasoning_effort=r.reasoning_effort,
            )
        return out


@dataclass(frozen=True)
class ReinforcementResolved:
    """A reinforcement job's own hyperparameters, resolved; `group_size` is what compute_multiplier means here."""

    compute_multiplier: float
    eval_interval: int
    eval_samples: int
    reasoning_effort: str

    @property
    def group_size(self) -> int:
        """Completions sampled per prompt: 4 × compute_multiplier, at least 2 (a group needs a spread), at most 64."""
        return min(MAX_GROUP, max(2, round(GROUP_PER_COMPUTE * self.compute_multiplier)))


def resolve_reinforcement(requested: ReinforcementHyperparameters, total_steps: int) -> ReinforcementResolved:
    """compute_multiplier 1, an evaluation about every tenth of the job, 16 prompts per evaluation when "auto"."""

    def pick(key: str, auto: Any) -> Any:
        value = getattr(requested, key)
        return auto if value in (None, "auto") else value

    return ReinforcementResolved(
        compute_multiplier=float(pick("compute_multiplier", 1.0)),
        eval_interval=int(pick("eval_interval", max(1, total_steps // AUTO_EVALUATIONS))),
        eval_samples=int(pick("eval_samples", AUTO_EVAL_SAMPLES)),
        reasoning_effort=str(pick("reasoning_effort", "default")),
    )


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

    batch = min(int(pick("batch_size", max(auto_batch_size(n_examples), min_auto_batch))), max(n_examples, 1))
    epochs = int(pick("n_epochs", auto_epochs(n_examples)))
    reinforcement = None
    if isinstance(requested, ReinforcementHyperparameters):
        reinforcement = resolve_reinforcement(requested, math.ceil(n_examples / batch) * epochs)
    return Resolved(
        n_epochs=epochs,
        batch_size=batch,
        learning_rate_multiplier=float(pick("learning_rate_multiplier", auto_multiplier)),
        beta=float(pick("beta", AUTO_BETA)) if isinstance(requested, DpoHyperparameters) else None,
        reinforcement=reinforcement,
    )
