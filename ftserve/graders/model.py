"""score_model and label_model: the grader's `input` messages, rendered over the item and the sample, go to a
judge model ftserve serves (judge.Judge) with a JSON schema its reply must follow (structured outputs), so any
model, a tiny random one included, answers in a shape that parses:

- score_model: OpenAI's `{"steps": [{"description", "conclusion"}], "result": number}`, the result within
  `range` (default [0, 1]); the reward is the result.
- label_model: `{"result": one of labels}`; the reward is 1 when that label is one of `passing_labels`, else 0.

A judge that cannot be reached or fails is a reward of 0 with `model_grader_server_error` (and its details); a
reply that does not parse or breaks the schema (cut by the token budget, say) is `model_grader_parse_error`. A
request the serving path refuses for a reason in the grader (no such model for this caller, a budget past the
model's context) is a 400 naming the grader's field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ftserve.core.errors import bad_request
from ftserve.core.schemas.graders import GraderMessage, LabelModelGrader, SamplingParams, ScoreModelGrader
from ftserve.graders import templates
from ftserve.graders.base import GradeResult, Sample
from ftserve.graders.judge import JudgeConfig, JudgeRejected, JudgeUnavailable

DEFAULT_RANGE = (0.0, 1.0)
# The longest reply is bounded so that it fits the token budget at one character per token, so a judge
# finishes its JSON whatever its weights. (A byte-level tokenizer may spend up to four tokens on a character
# outside ASCII; a reply of such characters could still be cut, which is a parse error.) Without a
# max_completions_tokens the bound assumes this many; the serving path allows up to the model's context.
DEFAULT_BUDGET_TOKENS = 768
MAX_STEPS = 4
_RESULT_CHARS = 64  # '{"steps": [], "result": ' + '}' and room for the number's digits
_STEP_CHARS = 40  # '{"description": "", "conclusion": ""}, ' around a step's two texts


def steps_bound(budget: int) -> tuple[int, int]:
    """(most steps, most characters per step text) whose longest reply fits `budget` characters: as many steps
    as leave each text 64 characters, else one shorter step, else none."""
    for steps in range(MAX_STEPS, 0, -1):
        chars = ((budget - _RESULT_CHARS) // steps - _STEP_CHARS) // 2
        if chars >= 64 or (steps == 1 and chars >= 1):
            return steps, min(chars, 4096)
    return 0, 0


def score_schema(low: float, high: float, budget: int) -> dict[str, Any]:
    """OpenAI's score_model reply: reasoning steps first (so the score comes after them), then the result."""
    steps, chars = steps_bound(budget)
    text = {"type": "string", "maxLength": chars}
    step = {
        "type": "object",
        "properties": {"description": text, "conclusion": text},
        "required": ["description", "conclusion"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": step, "maxItems": steps},
            "result": {"type": "number", "minimum": low, "maximum": high},
        },
        "required": ["steps", "result"],
        "additionalProperties": False,
    }


def label_schema(labels: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"result": {"type": "string", "enum": list(dict.fromkeys(labels))}},
        "required": ["result"],
        "additionalProperties": False,
    }


def _check_messages(messages: list[GraderMessage], param: str) -> None:
    """Templates parse; only text parts (a judge reads text: images and audio are refused by name)."""
    for i, message in enumerate(messages):
        parts = message.content if isinstance(message.content, list) else [message.content]
        for j, part in enumerate(parts):
            where = f"{param}.input.{i}.content" + (f".{j}" if isinstance(message.content, list) else "")
            if isinstance(part, str):
                templates.check(part, where)
            elif part.type in ("input_text", "output_text"):
                templates.check(part.text, where)
            else:
                raise bad_request(
                    f"{part.type} content is not supported: ftserve's judge models read text only",
                    param=f"{where}.type",
                    code="unsupported_content",
                )


def render_messages(messages: list[GraderMessage], namespaces: dict[str, Any]) -> list[dict[str, str]]:
    """Chat messages for the judge: each message's text parts rendered and joined (TemplateError if a variable
    is missing)."""
    rendered = []
    for message in messages:
        parts = message.content if isinstance(message.content, list) else [message.content]
        texts = [templates.render(p if isinstance(p, str) else getattr(p, "text", ""), namespaces) for p in parts]
        rendered.append({"role": message.role, "content": "".join(texts)})
    return rendered


def _parsed_result(text: str) -> Any:
    """The reply's `result`, or None when the reply is not a JSON object holding one."""
    try:
        reply = json.loads(text)
    except ValueError:
        return None
    return reply.get("result") if isinstance(reply, dict) else None


@dataclass
class _Asking:
    """What both model graders share: checks on the model and messages, and one question to the judge."""

    judging: JudgeConfig
    # Where the grader sits in the request (recorded by check), so a refusal at grade time names the same field.
    param: str = "grader"

    def check(self, spec: ScoreModelGrader | LabelModelGrader, param: str) -> None:
        self.param = param
        _check_messages(spec.input, param)
        self.judging.served_model(spec.model, f"{param}.model")

    def ask(
        self,
        spec: ScoreModelGrader | LabelModelGrader,
        sampling: SamplingParams | None,
        schema: dict[str, Any],
        sample: Sample,
        item: Any,
    ) -> tuple[Any, GradeResult]:
        """The reply's `result` (None if it does not parse) and a result carrying the usage; or (None, a failed
        result) when the messages cannot be rendered or the judge cannot answer."""
        judge = self.judging.judge
        if judge is None:
            raise bad_request(
                "model graders need ftserve's serving path: this api process serves no inference and has no "
                "FTSERVE_INFERENCE_URL to reach it",
                param=f"{self.param}.model",
                code="model_grader_unavailable",
            )
        try:
            messages = render_messages(spec.input, {"item": item, "sample": sample.namespace()})
        except templates.TemplateError:
            return None, GradeResult.failed(invalid_variable_error=True)
        model = self.judging.served_model(spec.model, f"{self.param}.model")
        try:
            reply = judge.complete(model, messages, sampling, schema)
        except JudgeUnavailable as exc:
            return None, GradeResult.failed(model_grader_server_error=True, model_grader_server_error_details=str(exc))
        except JudgeRejected as exc:
            where = f"{self.param}.{exc.field}" if exc.field else self.param
            raise bad_request(exc.message, param=where, code=exc.code) from None
        result = GradeResult(reward=0.0, usage={reply.model: reply.usage}, sampled_model_name=reply.model)
        return (None if reply.truncated else _parsed_result(reply.text)), result


def _parse_failed(result: GradeResult) -> GradeResult:
    result.reward = 0.0
    result.errors = result.errors.model_copy(update={"model_grader_parse_error": True})
    return result


@dataclass
class ScoreModel:
    spec: ScoreModelGrader
    judging: JudgeConfig = field(default_factory=JudgeConfig)

    def __post_init__(self) -> None:
        self._asking = _Asking(self.judging)

    def range(self) -> tuple[float, float]:
        return (self.spec.range[0], self.spec.range[1]) if self.spec.range is not None else DEFAULT_RANGE

    def check(self, param: str) -> None:
        self._asking.check(self.spec, param)
        if self.spec.range is not None and not self.spec.range[0] < self.spec.range[1]:
            raise bad_request("range must be [low, high] with low < high", param=f"{param}.range")
        _check_sampling(self.spec.sampling_params, param)

    def grade(self, sample: Sample, item: Any) -> GradeResult:
        """The judge's score; outside `range` (a judge not held to the schema) it is a parse error, never clamped."""
        low, high = self.range()
        sampling = self.spec.sampling_params
        budget = sampling.max_completions_tokens if sampling and sampling.max_completions_tokens else None
        schema = score_schema(low, high, budget or DEFAULT_BUDGET_TOKENS)
        value, result = self._asking.ask(self.spec, sampling, schema, sample, item)
        if result.errors.model_grader_server_error or result.errors.invalid_variable_error:
            return result
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return _parse_failed(result)
        if not low <= value <= high:
            return _parse_failed(result)
        result.reward = float(value)
        return result


@dataclass
class LabelModel:
    spec: LabelModelGrader
    judging: JudgeConfig = field(default_factory=JudgeConfig)

    def __post_init__(self) -> None:
        self._asking = _Asking(self.judging)

    def check(self, param: str) -> None:
        self._asking.check(self.spec, param)
        unknown = [label for label in self.spec.passing_labels if label not in self.spec.labels]
        if unknown:
            raise bad_request(
                f"passing_labels must be a subset of labels; not in labels: {unknown[:5]}",
                param=f"{param}.passing_labels",
            )

    def grade(self, sample: Sample, item: Any) -> GradeResult:
        """1 when the judge's label passes, 0 when it does not; a label outside `labels` is a parse error."""
        label, result = self._asking.ask(self.spec, None, label_schema(self.spec.labels), sample, item)
        if result.errors.model_grader_server_error or result.errors.invalid_variable_error:
            return result
        if not isinstance(label, str) or label not in self.spec.labels:
            return _parse_failed(result)
        result.reward = 1.0 if label in self.spec.passing_labels else 0.0
        return result


def _check_sampling(sampling: SamplingParams | None, param: str) -> None:
    """`reasoning_effort` only where it changes nothing: the served models do not reason, so "none" is accepted."""
    if sampling is not None and sampling.reasoning_effort not in (None, "none"):
        raise bad_request(
            f"reasoning_effort {sampling.reasoning_effort!r} is not supported: the models ftserve serves do not "
            "reason (only 'none' is accepted)",
            param=f"{param}.sampling_params.reasoning_effort",
            code="unsupported_parameter",
        )
