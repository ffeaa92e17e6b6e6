"""Direct Preference Optimization (Rafailov et al., 2023) on LoRA: the sigmoid loss over summed reply
log-probs, against reference log-probs computed once from the starting model."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.methods.dpo import DPO
from ftserve.core.storage import Storage
from ftserve.training.batching import step_groups
from ftserve.training.config import TrainingConfig
from ftserve.training.export import RESULT_COLUMNS
from ftserve.training.methods import dpo_reference
from ftserve.training.methods.base import MethodJob, Metrics, StepOutcome, StepWarning
from ftserve.training.methods.dpo_health import CollapseWatch
from ftserve.training.methods.dpo_rows import DpoRow, build_rows, row_logps
from ftserve.training.planner import packed_row_cap
from ftserve.training.preference import PreferencePair, load_pairs
from ftserve.training.tokenize import TokenizeStats
from ftserve.training.trainer import LoraTrainer

DPO_COLUMNS = [
    "train_reward_margin",
    "train_reward_accuracy",
    "train_chosen_reward",
    "train_rejected_reward",
    "valid_reward_margin",
    "valid_reward_accuracy",
]


@dataclass
class _Sums:
    """A step's (or an evaluation's) totals over its pairs."""

    loss: float = 0.0
    chosen_reward: float = 0.0
    rejected_reward: float = 0.0
    wins: int = 0
    pairs: int = 0
    correct: int = 0
    chosen_tokens: int = 0
    tokens: int = 0

    def metrics(self, prefix: str) -> Metrics:
        n = max(self.pairs, 1)
        return {
            f"{prefix}_loss": self.loss / n,
            f"{prefix}_mean_token_accuracy": self.correct / self.chosen_tokens if self.chosen_tokens else None,
            f"{prefix}_chosen_reward": self.chosen_reward / n,
            f"{prefix}_rejected_reward": self.rejected_reward / n,
            f"{prefix}_reward_accuracy": self.wins / n,
            f"{prefix}_reward_margin": (self.chosen_reward - self.rejected_reward) / n,
        }


class Dpo:
    """OpenAI's `dpo` method: preference pairs, packed so each prompt runs once for both replies."""

    csv_columns = RESULT_COLUMNS + DPO_COLUMNS

    def __init__(
        self,
        model: PeftModel,
        train: list[PreferencePair],
        valid: list[PreferencePair],
        beta: float,
        row_cap: int,
        device: torch.device,
        reference_file: Path,
        start_adapter: Path | None,
        first_groups: tuple[list[list[int]], list[list[int]]] | None = None,
        publish_reference: Callable[[Path], None] | None = None,
    ) -> None:
        self.model, self.train, self.valid, self.beta = model, train, valid, beta
        self.n_train, self.n_valid = len(train), len(valid)
        self.row_cap, self.device = row_cap, device
        self.reference_file, self.start_adapter = reference_file, start_adapter
        self.publish_reference = publish_reference
        # The first epoch's training and validation step groups: the reference runs in the same rows.
        self.first_groups = first_groups or (None, None)
        self.ref_train = torch.zeros((0, 2))
        self.ref_valid = torch.zeros((0, 2))
        self.watch = CollapseWatch(beta)

    def prepare(self, trainer: LoraTrainer, resumed: bool) -> str | None:
        """The reference log-probs of every pair: saved ones, or computed from the starting model once."""
        key = dpo_reference.fingerprint(self.train, self.valid)
        saved = dpo_reference.load(self.reference_file, key)
        if saved is not None:
            self.ref_train, self.ref_valid = saved
            return "Reusing the reference log-probs computed when the job started"
        began = time.monotonic()
        # A fresh run's model is the starting model (new LoRA weights add nothing yet); a resumed one has
        # trained, so the starting model is restored for the computation.
        start: AbstractContextManager[None] = nullcontext()
        if resumed:
            start = dpo_reference.starting_model(self.model, self.start_adapter)
        with start:
            train_groups, valid_groups = self.first_groups
            self.ref_train = dpo_reference.compute(self.model, self.train, self.row_cap, self.device, train_groups)
            self.ref_valid = dpo_reference.compute(self.model, self.valid, self.row_cap, self.device, valid_groups)
        dpo_reference.save(self.reference_file, key, self.ref_train, self.ref_valid)
        if self.publish_reference is not None:
            self.publish_reference(self.reference_file)
        return (
            f"Computed reference log-probs of {self.n_train + self.n_valid} preference pairs from the starting model "
            f"in {time.monotonic() - began:.1f} s (once; every epoch reuses them)"
        )

    def train_step(self, trainer: LoraTrainer, indices: list[int], step: int) -> StepOutcome:
        """One optimizer step: mean sigmoid DPO loss over the step's pairs, accumulated row by row."""
        trainer.begin_step()
        sums = _Sums()
        for row in build_rows(self.train, indices, self.row_cap):
            loss = self._row(row, self.ref_train, sums)
            trainer.backward(loss / len(indices))
        trainer.finish_step()
        return StepOutcome(sums.metrics("train"), sums.tokens)

    @torch.no_grad()
    def evaluate(self, trainer: LoraTrainer, indices: list[int] | None, prefix: str, step: int) -> Metrics:
        self.model.eval()
        sums = _Sums()
        for row in build_rows(self.valid, list(range(self.n_valid)) if indices is None else indices, self.row_cap):
            self._row(row, self.ref_valid, sums)
        return sums.metrics(prefix)

    def step_message(self, metrics: Metrics) -> str:
        return f"training loss={metrics['train_loss']:.4f}, reward margin={metrics['train_reward_margin']:.4f}"

    def health(self, metrics: dict[str, Any]) -> StepWarning | None:
        """A warning once the step metrics show the model collapsing (ftserve/training/methods/dpo_health)."""
        return self.watch.observe(metrics)

    def close(self) -> None:
        """Nothing to release."""

    def _row(self, row: DpoRow, reference: torch.Tensor, sums: _Sums) -> torch.Tensor:
        """The summed DPO loss of one row's pairs (for backward), its metrics added to sums."""
        logps = row_logps(self.model, row, self.device)
        ref = reference[row.pairs].to(self.device)
        chosen = self.beta * (logps.chosen - ref[:, 0])  # the implicit rewards
        rejected = self.beta * (logps.rejected - ref[:, 1])
        losses = -F.logsigmoid(chosen - rejected)
        sums.loss += float(losses.detach().sum())
        sums.chosen_reward += float(chosen.detach().sum())
        sums.rejected_reward += float(rejected.detach().sum())
        sums.wins += int((chosen > rejected).sum())
        sums.pairs += len(row.pairs)
        sums.correct += logps.correct
        sums.chosen_tokens += logps.chosen_tokens
        sums.tokens += row.tokens
        return losses.sum()


class DpoTraining:
    """The DPO method's training side: preference pairs as tokens, then Dpo with its reference log-probs' files."""

    method = DPO
    unit = "preference pairs"
    dropped_why = "with no room left for a reply"
    block_mask = True  # a row packs [prompt, chosen, rejected]: the replies must not see each other

    def tokenize(
        self, settings: Settings, file_id: str, tok: PreTrainedTokenizerBase, config: TrainingConfig
    ) -> tuple[list[Any], TokenizeStats]:
        """The file's preference pairs as tokens."""
        return load_pairs(settings, file_id, tok, config.max_seq_len)

    def build(self, job: MethodJob, train: list[Any], valid: list[Any]) -> Dpo:
        """Dpo on the job's pairs, its reference log-probs kept beside the job's checkpoints."""
        spec, hp = job.spec, job.hp
        assert hp.beta is not None
        storage = Storage(job.settings)
        start = None
        if spec.start_adapter is not None:
            key = storage.adapter_key(spec.start_adapter.job_id, spec.start_adapter.step)
            # Read only if the saved reference log-probs are lost (a resumed job); a missing one fails then.
            start = storage.directory(key) or Path(key)
        reference = storage.job_file(spec.id, dpo_reference.REFERENCE_FILE)
        first = (
            step_groups(len(train), hp.batch_size, spec.seed, 0),
            step_groups(len(valid), hp.batch_size, spec.seed, 0),
        )
        cap = packed_row_cap(job.config, job.device)

        def publish(path: Path) -> None:
            storage.publish_job_file(spec.id, dpo_reference.REFERENCE_FILE, path)

        return Dpo(job.model, train, valid, hp.beta, cap, job.device, reference, start, first, publish)
