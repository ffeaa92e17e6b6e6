"""score_model and label_model: accepted and validated; running them needs ftserve's inference path (the
judge model served through serving), which comes in a later step, so `grade` says so by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftserve.core.errors import bad_request
from ftserve.core.schemas.graders import GraderMessage, LabelModelGrader, ScoreModelGrader
from ftserve.graders import templates
from ftserve.graders.base import GradeResult, Sample


class NotSupportedYet(Exception):
    """This grader validates but cannot be run by this server yet."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"Running a {kind} grader is not supported yet: it needs a judge model served by ftserve")
        self.kind = kind


def _check_messages(messages: list[GraderMessage], param: str) -> None:
    for i, message in enumerate(messages):
        parts = message.content if isinstance(message.content, list) else [message.content]
        for j, part in enumerate(parts):
            where = f"{param}.input.{i}.content" + (f".{j}" if isinstance(message.content, list) else "")
            text = part if isinstance(part, str) else getattr(part, "text", None)
            if text is not None:
                templates.check(text, where)


@dataclass
class ScoreModel:
    spec: ScoreModelGrader

    def check(self, param: str) -> None:
        _check_messages(self.spec.input, param)
        if self.spec.range is not None and not self.spec.range[0] < self.spec.range[1]:
            raise bad_request("range must be [low, high] with low < high", param=f"{param}.range")

    def grade(self, sample: Sample, item: Any) -> GradeResult:
        raise NotSupportedYet("score_model")


@dataclass
class LabelModel:
    spec: LabelModelGrader

    def check(self, param: str) -> None:
        _check_messages(self.spec.input, param)
        unknown = [label for label in self.spec.passing_labels if label not in self.spec.labels]
        if unknown:
            raise bad_request(
                f"passing_labels must be a subset of labels; not in labels: {unknown[:5]}",
                param=f"{param}.passing_labels",
            )

    def grade(self, sample: Sample, item: Any) -> GradeResult:
        raise NotSupportedYet("label_model")
