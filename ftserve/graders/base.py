"""What every grader shares: the sample it grades, what it returns, and the protocol it follows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from ftserve.core.schemas.graders import GraderErrors


@dataclass(frozen=True)
class Sample:
    """The model's output as templates and python graders see it (OpenAI's `sample` namespace)."""

    output_text: str
    output_json: Any = None
    output_tools: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_text(cls, text: str, tool_calls: list[dict[str, Any]] | None = None) -> Sample:
        """`output_json` is the text parsed as JSON when it parses (else None, as OpenAI leaves it)."""
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        return cls(output_text=text, output_json=parsed, output_tools=list(tool_calls or []))

    def namespace(self) -> dict[str, Any]:
        return {"output_text": self.output_text, "output_json": self.output_json, "output_tools": self.output_tools}


@dataclass(frozen=True)
class TokenUsage:
    """Tokens a judge model read and wrote for one grade (summed over its calls)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass
class GradeResult:
    """A grade: the reward (0 for a grader that failed), each sub-grader's reward, and what went wrong; for model
    graders, the tokens each judge model used and the name of the model that answered."""

    reward: float
    sub_rewards: dict[str, float] = field(default_factory=dict)
    errors: GraderErrors = field(default_factory=GraderErrors)
    scores: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, TokenUsage] = field(default_factory=dict)
    sampled_model_name: str | None = None

    @classmethod
    def failed(cls, **flags: Any) -> GradeResult:
        return cls(reward=0.0, errors=GraderErrors(**flags))


class Grader(Protocol):
    """One kind of grader, built from its wire model; `check` raises InvalidRequest naming the field at fault."""

    def check(self, param: str) -> None: ...

    def grade(self, sample: Sample, item: Any) -> GradeResult: ...
