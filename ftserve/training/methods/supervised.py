"""Supervised fine-tuning: token-weighted cross-entropy on padded or packed micro-batches (planner.Layout)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.methods.supervised import SUPERVISED
from ftserve.training.config import TrainingConfig
from ftserve.training.dataset import load_tokenized
from ftserve.training.export import RESULT_COLUMNS
from ftserve.training.methods.base import MethodJob, Metrics, StepOutcome, StepWarning
from ftserve.training.planner import Layout
from ftserve.training.rank import Gang
from ftserve.training.tokenize import TokenizedExample, TokenizeStats
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

    def train_step(self, trainer: LoraTrainer, indices: list[int], step: int) -> StepOutcome:
        # In a gang each rank trains its share; the trainer normalises by the whole step's weight.
        result = trainer.step(self.layout.plan_share([self.train[j] for j in indices], self.gang.rank, self.gang.size))
        return StepOutcome({"train_loss": result.loss, "train_mean_token_accuracy": result.accuracy}, result.tokens)

    def evaluate(self, trainer: LoraTrainer, indices: list[int] | None, prefix: str, step: int) -> Metrics:
        examples = self.valid if indices is None else [self.valid[j] for j in indices]
        loss, accuracy = trainer.evaluate(self.layout.plan_share(examples, self.gang.rank, self.gang.size))
        return {f"{prefix}_loss": loss, f"{prefix}_mean_token_accuracy": accuracy}

    def step_message(self, metrics: Metrics) -> str:
        return f"training loss={metrics['train_loss']:.4f}"

    def health(self, metrics: dict[str, Any]) -> StepWarning | None:
        """No watch: a supervised job's loss is the thing it is taught to lower."""
        return None

    def close(self) -> None:
        """Nothing to release."""


class SupervisedTraining:
    """The supervised method's training side: examples tokenized with their prompt loss weight, then Supervised."""

    method = SUPERVISED
    unit = "examples"
    dropped_why = "with no completion token left"
    block_mask = False

    def tokenize(
        self, settings: Settings, file_id: str, tok: PreTrainedTokenizerBase, config: TrainingConfig
    ) -> tuple[list[Any], TokenizeStats]:
        """The file's examples as tokens and weights (prompt tokens weighted by prompt_loss_weight)."""
        return load_tokenized(settings, file_id, tok, config.prompt_loss_weight, config.max_seq_len)

    def build(self, job: MethodJob, train: list[Any], valid: list[Any]) -> Supervised:
        """Supervised on the job's examples, laid out per step by the planner."""
        tok = job.tok
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        return Supervised(train, valid, Layout.for_run(job.config, job.model, pad, job.device), job.gang)
