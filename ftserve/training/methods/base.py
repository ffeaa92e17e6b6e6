"""What the shared loop asks of a training method: one optimizer step on some examples, and metrics on others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ftserve.training.trainer import LoraTrainer

Metrics = dict[str, float | None]


@dataclass(frozen=True)
class StepOutcome:
    """One optimizer step: its `train_*` metrics (train_loss first) and the tokens it processed."""

    metrics: Metrics
    tokens: int


class TrainingMethod(Protocol):
    """A method trains on `n_train` examples and evaluates on `n_valid`, by index into its own lists."""

    n_train: int
    n_valid: int
    csv_columns: list[str]  # the result file's columns (OpenAI's first)

    def prepare(self, trainer: LoraTrainer, resumed: bool) -> str | None:
        """Run once before the first step of this run (DPO: its reference log-probs); what to report, if anything."""
        ...

    def train_step(self, trainer: LoraTrainer, indices: list[int]) -> StepOutcome:
        """One optimizer step on these training examples."""
        ...

    def evaluate(self, trainer: LoraTrainer, indices: list[int] | None, prefix: str) -> Metrics:
        """Metrics on these validation examples (None: all of them), keys prefixed `valid_` or `full_valid_`."""
        ...

    def step_message(self, metrics: Metrics) -> str:
        """What the step's event says after `Step i/n: `."""
        ...
