"""What the shared loop asks of a training method (one optimizer step on some examples, and metrics on others),
and what the pipeline asks of a registered method's training side (its data as tokens, its step object)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.methods import MethodSpec
from ftserve.training.config import TrainingConfig
from ftserve.training.hyperparams import Resolved
from ftserve.training.ports import JobSpec, JobStore
from ftserve.training.rank import Gang
from ftserve.training.tokenize import TokenizeStats
from ftserve.training.trainer import LoraTrainer

Metrics = dict[str, float | None]


@dataclass(frozen=True)
class StepOutcome:
    """One optimizer step: its `train_*` metrics (train_loss first) and the tokens it processed."""

    metrics: Metrics
    tokens: int


class StepAbandoned(Exception):
    """A method gave up its step before the optimizer step (reinforcement, while it samples) because the job
    stopped being ours mid-step (cancelled, paused, deleted, its lease lost): the model and optimizer are as the
    step found them, so the loop checks the job again as before the step, and the step runs again if it goes on.
    Only a method that trains in one process abandons a step (a gang's ranks would leave its lockstep)."""


@dataclass(frozen=True)
class StepWarning:
    """A `warn` event a method asks the loop to record: its message and data."""

    message: str
    data: dict[str, Any]


class TrainingMethod(Protocol):
    """A method trains on `n_train` examples and evaluates on `n_valid`, by index into its own lists."""

    n_train: int
    n_valid: int
    csv_columns: list[str]  # the result file's columns (OpenAI's first)

    def prepare(self, trainer: LoraTrainer, resumed: bool) -> str | None:
        """Run once before the first step of this run (DPO: its reference log-probs); what to report, if anything."""
        ...

    def train_step(self, trainer: LoraTrainer, indices: list[int], step: int) -> StepOutcome:
        """One optimizer step on these training examples; `step` is its number in the job (1-based), counted
        across pauses and restarts (a resumed run goes on from the resume point's step). It may raise
        StepAbandoned before its optimizer step when the job stopped meanwhile."""
        ...

    def evaluate(self, trainer: LoraTrainer, indices: list[int] | None, prefix: str, step: int) -> Metrics:
        """Metrics on these validation examples (None: all of them) after the job's step `step`, keys prefixed
        `valid_` or `full_valid_`."""
        ...

    def step_message(self, metrics: Metrics) -> str:
        """What the step's event says after `Step i/n: `."""
        ...

    def health(self, metrics: dict[str, Any]) -> StepWarning | None:
        """Fed each step's metrics in order (a resumed job's earlier steps first): a warning to record when they
        show the model breaking (once), else None."""
        ...

    def close(self) -> None:
        """Release what the method holds beyond the model (reinforcement: its sampling engine and grader pool)."""
        ...


@dataclass(frozen=True)
class MethodJob:
    """What a method's step object is built from: the job, the worker's settings, the model and its place."""

    settings: Settings
    spec: JobSpec
    config: TrainingConfig
    model: PeftModel
    tok: PreTrainedTokenizerBase
    hp: Resolved  # "auto" resolved
    device: torch.device
    gang: Gang
    store: JobStore  # the job's store (reinforcement asks it for its model graders' credentials)


class MethodTraining(Protocol):
    """A registered method's training side (ftserve/training/methods/registry.py); `method` is its torch-free
    description (ftserve/core/methods), registered under the same name."""

    method: MethodSpec
    unit: str  # what the tokenize event calls its items ("examples", "preference pairs")
    dropped_why: str  # why truncation drops an item ("with no completion token left")
    block_mask: bool  # its rows need a 4-D attention mask, which flash-attention's varlen kernel cannot take

    def tokenize(
        self, settings: Settings, file_id: str, tok: PreTrainedTokenizerBase, config: TrainingConfig
    ) -> tuple[list[Any], TokenizeStats]:
        """A training or validation file's items as tokens, over-long ones truncated or dropped (counted)."""
        ...

    def build(self, job: MethodJob, train: list[Any], valid: list[Any]) -> TrainingMethod:
        """The step object the loop drives, on the job's tokenized training and validation items."""
        ...
