"""string_check: eq, ne, like (input contains reference), ilike (the same, case-insensitive); 1 or 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftserve.core.schemas.graders import StringCheckGrader
from ftserve.graders import templates
from ftserve.graders.base import GradeResult, Sample

_OPS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "like": lambda a, b: b in a,
    "ilike": lambda a, b: b.lower() in a.lower(),
}


@dataclass
class StringCheck:
    spec: StringCheckGrader

    def check(self, param: str) -> None:
        templates.check_pair(self.spec.input, self.spec.reference, param)

    def grade(self, sample: Sample, item: Any) -> GradeResult:
        pair = templates.render_pair(self.spec.input, self.spec.reference, {"item": item, "sample": sample.namespace()})
        if pair is None:
            return GradeResult.failed(invalid_variable_error=True)
        given, reference = pair
        return GradeResult(reward=1.0 if _OPS[self.spec.operation](given, reference) else 0.0)
