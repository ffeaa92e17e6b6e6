"""OpenAI's `supervised` method: prompt/completion or chat examples, the three shared hyperparameters."""

from __future__ import annotations

from ftserve.core.datasets.chat import parse_chat
from ftserve.core.datasets.formats import parse_prompt_completion
from ftserve.core.methods.base import MethodSpec
from ftserve.core.schemas.jobs import Hyperparameters

SUPERVISED = MethodSpec(
    name="supervised",
    formats={"prompt_completion": parse_prompt_completion, "chat": parse_chat},
    format_hint=(
        "supervised jobs train on prompt/completion or chat examples (with an assistant answer); preference pairs "
        "need method.type 'dpo', prompts without answers method.type 'reinforcement'"
    ),
    hyperparameters=Hyperparameters,
    refused_extensions={
        "max_completion_tokens": "max_completion_tokens is for reinforcement jobs: it bounds a sampled answer",
    },
    runs_on_gang=True,
)
