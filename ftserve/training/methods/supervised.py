"""Supervised fine-tuning: token-weighted cross-entropy on padded or packed micro-batches (planner.Layout)."""

from __future__ import annotations

from ftserve.training.export import RESULT_COLUMNS
from ftserve.training.methods.base import Metrics, StepOutcome
from ftserve.training.planner import Layout
from ftserve.training.rank import Gang
from ftserve.training.tokenize import TokenizedExample
from ftserve.training.trainer import LoraTrainer


class Supervised:
    """OpenAI's `supervised` method on tokenized examples."""

    csv_columns = RESULT_COLUMNS

    def __init__(
        self, train: list[TokenizedExample], valid: list[TokenizedExample], layout: Layout, gang: Gang = Gang()
    ) -> None:
        self.train, self.valid, self.layout, self.gang = train, valid, layout, gang
        self.n_train, self.n_valid = len(train), len(valid)

    def prepare(self, trainer: LoraTrainer, resumed: bool) -> str | None:
        """Nothing to prepare: the loss needs no reference."""
        return None

    def train_step(self, trainer: LoraTrainer, indices: list[int]) -> StepOutcome:
        # In a gang each rank trains its share; the trainer normalises by the whole step's weight.
        result = trainer.step(self.layout.plan_share([self.train[j] for j in indices], self.gang.rank, self.gang.size))
        return StepOutcome({"train_loss": result.loss, "train_mean_token_accuracy": result.accuracy}, result.tokens)

    def evaluate(self, trainer: LoraTrainer, indices: list[int] | None, prefix: str) -> Metrics:
        examples = self.valid if indices is None else [self.valid[j] for j in indices]
        loss, accuracy = trainer.evaluate(self.layout.plan_share(examples, self.gang.rank, self.gang.size))
        return {f"{prefix}_loss": loss, f"{prefix}_mean_token_accuracy": accuracy}

    def step_message(self, metrics: Metrics) -> str:
        return f"training loss={metrics['train_loss']:.4f}"
