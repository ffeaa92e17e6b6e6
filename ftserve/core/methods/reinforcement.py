"""OpenAI's `reinforcement` method: prompts (lines ending with the user's turn) and a grader that scores each
sampled answer; the shared hyperparameters plus compute_multiplier, eval_interval, eval_samples and
reasoning_effort."""

from __future__ import annotations

from ftserve.core.datasets.prompts import parse_prompt
from ftserve.core.methods.base import MethodSpec
from ftserve.core.schemas.jobs import ReinforcementHyperparameters

REINFORCEMENT = MethodSpec(
    name="reinforcement",
    formats={"prompts": parse_prompt},
    format_hint=(
        "reinforcement jobs train on prompts: lines whose messages end with the user's turn, with the keys the "
        "grader reads (item.*)"
    ),
    hyperparameters=ReinforcementHyperparameters,
    refused_extensions={
        "prompt_loss_weight": "prompt_loss_weight is for supervised jobs: reinforcement trains on sampled answers"
    },
    packing="rollouts",  # a step's rows are its sampled answers, one row each (ftserve/training/methods/rft)
    # Each rank samples its share of a step's prompts with its own engine (ftserve/training/methods/reinforcement).
    runs_on_gang=True,
    unsharded_because=(
        "its sampling engine runs on the base's whole weights, which a sharded rank does not hold, and the ranks' "
        "loss passes differ in number where FSDP needs them in step"
    ),
    auto_min_batch_size=4,  # 4 prompts × their group of samples per step
    config_fields=("grader",),
)
