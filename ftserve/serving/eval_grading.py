"""An eval's testing criteria applied to one sample: each criterion is a grader (ftserve/graders, the same code and
sandbox as reinforcement fine-tuning and the grader endpoints) with OpenAI's pass rule; the item passes when every
criterion passes, fails when one fails, and errors when one could not grade (its other criteria still count)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from ftserve import graders
from ftserve.core.evals.records import GradedItem, ModelUsage
from ftserve.core.schemas.evals import TestingCriterion

log = logging.getLogger(__name__)
_CRITERION: TypeAdapter[Any] = TypeAdapter(TestingCriterion)
# Graders whose reward is 1 or 0, passing on 1; the others pass at pass_threshold.
_BINARY = ("string_check", "label_model")
# Without a pass_threshold (optional for these): the middle of the reward's range.
_DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Criterion:
    spec: Any  # one of core/schemas/evals.TestingCriterion
    grader: graders.Grader

    def passes(self, reward: float) -> bool:
        if self.spec.type in _BINARY:
            return reward >= 1.0
        threshold = getattr(self.spec, "pass_threshold", None)
        if threshold is None:
            low, high = getattr(self.spec, "range", None) or (0.0, 1.0)
            threshold = low + (high - low) * _DEFAULT_THRESHOLD
        return reward >= float(threshold)


def criteria(stored: list[dict[str, Any]], limits: graders.Limits, judging: graders.JudgeConfig) -> list[Criterion]:
    """The eval's criteria (as stored at creation, checked then) with their graders."""
    specs = [_CRITERION.validate_python(c) for c in stored]
    return [Criterion(spec, graders.build(spec, limits, judging)) for spec in specs]


def uses_a_judge(stored: list[dict[str, Any]]) -> bool:
    """Whether a criterion (or a multi's sub-grader) asks a judge model."""

    def judged(spec: Any) -> bool:
        if spec.get("type") == "multi":
            subs = spec.get("graders") or {}
            return any(judged(s) for s in (subs.values() if "type" not in subs else [subs]))
        return spec.get("type") in ("score_model", "label_model")

    return any(judged(c) for c in stored)


def _error(result: graders.GradeResult) -> dict[str, str] | None:
    """The grader's failure as {code, message}: its first raised flag and that flag's details."""
    flags = result.errors.model_dump()
    for name, value in flags.items():
        if value is True:
            details = flags.get(f"{name}_details") or flags.get(f"{name}_type")
            return {"code": name, "message": str(details or name.replace("_", " "))}
    return None


def grade(
    found: list[Criterion],
    index: int,
    item: dict[str, Any],
    sample: graders.Sample,
    sample_record: dict[str, Any],
    usage: tuple[ModelUsage, ...],
) -> GradedItem:
    """The item's output item: each criterion's result, its outcome and the judges' usage added to the sample's."""
    results: list[dict[str, Any]] = []
    outcomes: list[bool | None] = []
    used = list(usage)
    for c in found:
        try:
            r = c.grader.grade(sample, item)
            error = _error(r)
        except Exception as exc:  # a grader bug must cost this criterion of this item, nothing more
            log.exception("grader %s failed", c.spec.name)
            r = graders.GradeResult.failed(other_error=True)
            error = {"code": "other_error", "message": f"{type(exc).__name__}: {exc}"}
        passed = None if error else c.passes(r.reward)
        result: dict[str, Any] = {
            "name": c.spec.name,
            "type": c.spec.type,
            "score": r.reward,
            "passed": bool(passed),
            "sample": None,
        }
        if r.sub_rewards:
            result["sub_rewards"] = r.sub_rewards
        if error:
            result["error"] = error
        results.append(result)
        outcomes.append(passed)
        used += [ModelUsage(model, u.prompt_tokens, u.completion_tokens) for model, u in r.usage.items()]
    status = "error" if None in outcomes else "pass" if all(outcomes) else "fail"
    return GradedItem(index, status, item, results, sample_record, tuple(outcomes), tuple(used))


def errored(index: int, item: dict[str, Any], sample_record: dict[str, Any], code: str, message: str) -> GradedItem:
    """An item that could not be sampled or graded at all (it fails the item_schema, its request was refused)."""
    return GradedItem(index, "error", item, [], {**sample_record, "error": {"code": code, "message": message}})
