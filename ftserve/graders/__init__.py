"""OpenAI's graders, torch-free (imports only core): a registry from each wire model's `type` to the module
that grades it; `build` makes a grader from its wire model, `check` raises a 400 naming the field at fault,
`run` grades one sample (docs/graders.md). Model graders ask a judge (`judge.Judge`, reached over HTTP by
`http_judge.HttpJudge`) handed in with `JudgeConfig`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ftserve.core.schemas import graders as wire
from ftserve.graders.base import Grader, GradeResult, Sample, TokenUsage
from ftserve.graders.judge import Judge, JudgeConfig, JudgeRejected, JudgeReply, JudgeUnavailable
from ftserve.graders.model import LabelModel, ScoreModel
from ftserve.graders.multi import Multi
from ftserve.graders.python import Python
from ftserve.graders.sandbox import Limits
from ftserve.graders.string_check import StringCheck
from ftserve.graders.text_similarity import TextSimilarity

__all__ = [
    "GradeResult",
    "Grader",
    "Judge",
    "JudgeConfig",
    "JudgeRejected",
    "JudgeReply",
    "JudgeUnavailable",
    "Limits",
    "Sample",
    "TokenUsage",
    "build",
    "check",
    "limits_for",
    "run",
]

# type → how to build that kind of grader from its wire model (multi builds its sub-graders through this).
REGISTRY: dict[str, Callable[[Any, Limits, JudgeConfig], Grader]] = {
    "string_check": lambda spec, _limits, _judging: StringCheck(spec),
    "text_similarity": lambda spec, _limits, _judging: TextSimilarity(spec),
    "python": lambda spec, limits, _judging: Python(spec, limits),
    "score_model": lambda spec, _limits, judging: ScoreModel(spec, judging),
    "label_model": lambda spec, _limits, judging: LabelModel(spec, judging),
    "multi": lambda spec, limits, judging: Multi(spec, _sub_graders(spec, limits, judging)),
}


def _sub_graders(spec: wire.MultiGrader, limits: Limits, judging: JudgeConfig) -> dict[str, Grader]:
    named = spec.graders if isinstance(spec.graders, dict) else {spec.graders.name: spec.graders}
    return {name: build(sub, limits, judging) for name, sub in named.items()}


def build(spec: Any, limits: Limits | None = None, judging: JudgeConfig | None = None) -> Grader:
    """The grader for a wire model (any of core/schemas/graders); model graders judge with `judging`'s judge."""
    return REGISTRY[spec.type](spec, limits or Limits(), judging or JudgeConfig())


def limits_for(timeout_seconds: float, memory_bytes: int) -> Limits:
    """A python grader's sandbox limits: wall time, CPU time (rounded up), address space."""
    return Limits(
        wall_seconds=timeout_seconds, cpu_seconds=max(1, math.ceil(timeout_seconds)), memory_bytes=memory_bytes
    )


def check(spec: Any, param: str = "grader", limits: Limits | None = None, judging: JudgeConfig | None = None) -> Grader:
    """The grader, once everything a schema cannot say is checked (InvalidRequest naming the field if not)."""
    grader = build(spec, limits, judging)
    grader.check(param)
    return grader


def run(
    spec: Any, model_sample: str, item: Any, limits: Limits | None = None, judging: JudgeConfig | None = None
) -> wire.GraderRunResponse:
    """Grade one sample: OpenAI's run response, with the judges' token usage (InvalidRequest for a grader that
    cannot run as sent, naming its field)."""
    grader = check(spec, limits=limits, judging=judging)
    sample = Sample.from_text(model_sample)
    start = time.monotonic()
    result = grader.grade(sample, item)
    metadata = wire.GraderRunMetadata(
        name=spec.name,
        type=spec.type,
        errors=result.errors,
        execution_time=time.monotonic() - start,
        scores=result.scores,
        token_usage=sum(u.total_tokens for u in result.usage.values()) if result.usage else None,
        sampled_model_name=result.sampled_model_name,
    )
    per_model = {
        model: {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
            "cached_tokens": 0,  # no prompt cache
        }
        for model, u in result.usage.items()
    }
    return wire.GraderRunResponse(
        reward=result.reward,
        sub_rewards=result.sub_rewards,
        metadata=metadata,
        model_grader_token_usage_per_model=per_model,
    )
