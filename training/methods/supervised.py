"""Supervised fine-tuning: token-weighted cross-entropy on padded or packed micro-batches (planner.Layout)."""

from __future__ import annotations

from training.export import RESULT_COLUMNS
from training.methods.base import Metrics, StepOutcome
from training.planner import Layout
from training.tokenize import TokenizedExample
from training.trainer import LoraTrainer


class Supervised:
    """OpenAI's `supervised` method on tokenized examples."""

    csv_columns = RESULT_COLUMNS

    def __init__(self, train: list[TokenizedExample], valid: list[TokenizedExample], layout: Layout) -> None:
        self.train, self.valid, self.layout = train, valid, layout
        self.n_train, self.n_valid = len(train), len(valid)

    def prepare(self, trainer: LoraTrainer, resumed: bool) -> str | None:
        """Nothing to prepare: the loss needs no reference."""
        return None

    def train_step(self, trainer: LoraTrainer, indices: list[int]) -> StepOutcome:
        result = trainer.step(self.layout.plan([self.train[j] for j in indices]))
        return StepOutcome({"train_loss": result.loss, "train_mean_token_accuracy": result.accuracy}, result.tokens)

    def evaluate(self, trainer: LoraTrainer, indices: list[int] | None, prefix: str) -> Metrics:
        examples = self.valid if indices is None else [self.valid[j] for j in indices]
        loss, accuracy = trainer.evaluate(self.layout.plan(examples))
        return {f"{prefix}_loss": loss, f"{prefix}_mean_token_accuracy": accuracy}

    def step_message(self, metrics: Metrics) -> str:
        return f"training loss={metrics['train_loss']:.4f}"
