"""What the eval runner (serving) and its store (the control plane's SqlEvalStore) exchange: the claimed run, each
graded item, and how graded items add up into a run's counts. Torch-free and DB-free, so both sides (and the
serving port that names them) stand on core alone."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class EvalRunLost(Exception):
    """The run is no longer this runner's to write: canceled, deleted, or its lease taken over by another runner."""


@dataclass(frozen=True)
class ClaimedEvalRun:
    """A run a runner holds the lease on, with what it needs of its eval."""

    id: str
    eval_id: str
    org: str
    status: str
    data_source: dict[str, Any]
    item_schema: dict[str, Any]
    testing_criteria: list[dict[str, Any]]


@dataclass(frozen=True)
class ModelUsage:
    """Tokens one call of a model used: the sampled model's generation, or a model grader's judge."""

    model: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class GradedItem:
    """One finished item: its status (pass, fail, error), the output item's parts, each criterion's outcome in the
    eval's order (True passed, False failed, None errored or not graded) and the model calls it made."""

    index: int
    status: str
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]
    sample: dict[str, Any]
    criteria: tuple[bool | None, ...] = ()
    usage: tuple[ModelUsage, ...] = field(default=())


def tally(
    per_criteria: list[dict[str, Any]], per_model: list[dict[str, Any]], items: Iterable[GradedItem]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's per-criterion pass/fail counts and per-model usage (OpenAI's shapes) with `items` added."""
    criteria = [dict(c) for c in per_criteria]
    models = {u["model_name"]: dict(u) for u in per_model}
    for item in items:
        for counts, outcome in zip(criteria, item.criteria, strict=False):
            if outcome is not None:
                counts["passed" if outcome else "failed"] += 1
        for use in item.usage:
            u = models.setdefault(
                use.model,
                {
                    "model_name": use.model,
                    "invocation_count": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "total_tokens": 0,
                    "cached_tokens": 0,
                },
            )
            u["invocation_count"] += 1
            u["prompt_tokens"] += use.prompt_tokens
            u["completion_tokens"] += use.completion_tokens
            u["total_tokens"] += use.prompt_tokens + use.completion_tokens
    return criteria, list(models.values())
