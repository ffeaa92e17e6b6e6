"""OpenAI's `dpo` method: preference pairs, the shared hyperparameters plus beta."""

from __future__ import annotations

from ftserve.core.datasets.preference import parse_preference
from ftserve.core.methods.base import MethodSpec
from ftserve.core.schemas.jobs import DpoHyperparameters

DPO = MethodSpec(
    name="dpo",
    formats={"preference": parse_preference},
    format_hint="DPO trains on preference pairs (input, preferred_output, non_preferred_output)",
    hyperparameters=DpoHyperparameters,
    refused_extensions={
        "prompt_loss_weight": "prompt_loss_weight is for supervised jobs: DPO trains on the two replies only",
        "max_completion_tokens": "max_completion_tokens is for reinforcement jobs: it bounds a sampled answer",
    },
    packing="pairs",  # each pair's prompt is packed once for both replies (ftserve/training/methods/dpo_rows)
    # DPO's loss is a mean over pairs with a reference pass per pair; it is not split across ranks yet.
    runs_on_gang=False,
    # Measured (bench/dpo_defaults.py, docs/training.md#dpos-auto-hyperparameters-measured): at the base's own
    # learning rate, one pair per step, DPO from an SFT model moves it until its outputs break.
    auto_learning_rate_multiplier=0.3,
    auto_min_batch_size=4,
)
