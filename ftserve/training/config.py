"""TrainingConfig: everything one job trains with, resolved once from the job, its method and the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ftserve.core import methods
from ftserve.core.config import Settings
from ftserve.core.schemas.jobs import Hyperparameters
from ftserve.training import hyperparams
from ftserve.training.ports import JobSpec

Packing = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class LoraOptions:
    rank: int
    alpha: float
    dropout: float
    target_modules: list[str] | None  # None: the architecture's table row (models/families.py)


@dataclass(frozen=True)
class TrainingConfig:
    """A job's training settings: its extensions over the worker's settings, and its base's registry entry.

    The OpenAI hyperparameters stay as requested ("auto" kept) until the dataset's size is known:
    `hyperparameters(n_examples)` resolves them.
    """

    base: str
    seed: int
    method: str  # a registered method's name (ftserve/core/methods)
    requested: Hyperparameters
    base_learning_rate: float
    max_seq_len: int
    prompt_loss_weight: float
    lora: LoraOptions
    warmup_ratio: float
    lr_scheduler: Literal["linear", "cosine", "constant"]
    packing: Packing
    packed_row_tokens: int | None
    batch_token_budget: int
    gradient_checkpointing: bool
    attn_implementation: str
    max_completion_tokens: int  # reinforcement: the longest sampled answer

    @classmethod
    def resolve(cls, spec: JobSpec, settings: Settings) -> TrainingConfig:
        ext = spec.extensions
        registry = settings.base_models[spec.base]

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return cls(
            base=spec.base,
            seed=spec.seed,
            method=spec.method,
            requested=spec.hyperparameters,
            base_learning_rate=registry.base_learning_rate,
            max_seq_len=registry.max_seq_len,
            prompt_loss_weight=float(pick(ext.prompt_loss_weight, settings.default_prompt_loss_weight)),
            lora=LoraOptions(
                rank=int(pick(ext.lora_rank, settings.lora_rank)),
                alpha=pick(ext.lora_alpha, settings.lora_alpha),
                dropout=float(pick(ext.lora_dropout, settings.lora_dropout)),
                target_modules=ext.target_modules,
            ),
            warmup_ratio=float(pick(ext.warmup_ratio, settings.warmup_ratio)),
            lr_scheduler=pick(ext.lr_scheduler, settings.lr_scheduler),
            packing=settings.packing,
            packed_row_tokens=settings.packed_row_tokens,
            batch_token_budget=settings.batch_token_budget,
            gradient_checkpointing=settings.gradient_checkpointing,
            attn_implementation=settings.train_attn_implementation,
            max_completion_tokens=int(pick(ext.max_completion_tokens, settings.rft_max_completion_tokens)),
        )

    def hyperparameters(self, n_examples: int) -> hyperparams.Resolved:
        """n_epochs, batch_size and learning_rate_multiplier for a dataset of n examples ("auto" resolved)."""
        method = methods.get(self.method)
        return hyperparams.resolve(
            self.requested, n_examples, method.auto_learning_rate_multiplier, method.auto_min_batch_size
        )

    def learning_rate(self, resolved: hyperparams.Resolved) -> float:
        return self.base_learning_rate * resolved.learning_rate_multiplier

    def options(self, lora: LoraOptions | None = None) -> dict[str, Any]:
        """The job's ftserve-specific training options, as its events report them (`lora`: the shape of the
        adapter a job continues, which replaces the configured one)."""
        lora = lora or self.lora
        out: dict[str, Any] = {
            "prompt_loss_weight": self.prompt_loss_weight,
            "lora_rank": lora.rank,
            "lora_alpha": float(lora.alpha),
            "lora_dropout": lora.dropout,
            "target_modules": lora.target_modules or "all-linear",
            "warmup_ratio": self.warmup_ratio,
            "lr_scheduler": self.lr_scheduler,
            "packing": self.packing,
            "gradient_checkpointing": self.gradient_checkpointing,
            "max_completion_tokens": self.max_completion_tokens,
        }
        # A method reports only the options it trains with: an extension it refuses would change nothing, and
        # one that lays out its rows its own way (DPO packs each pair's prompt once) says how.
        method = methods.get(self.method)
        for name in method.refused_extensions:
            out.pop(name, None)
        if method.packing is not None:
            out["packing"] = method.packing
        return out
