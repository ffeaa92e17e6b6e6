"""python: the grader's `source` defines `grade(sample, item) -> float`, run in the sandbox (sandbox.py).

Its failures are rewards of 0 with OpenAI's flags: an exception, a missing `grade` or a non-number is
`python_grader_runtime_error` (with the exception's last line as details); the wall-time limit is
`unresponsive_reward_error` with `python_grader_server_error` of type `timeout`; a process killed by a limit
or a sandbox that failed is `python_grader_server_error` with its type.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from ftserve.core.errors import bad_request
from ftserve.core.schemas.graders import PythonGrader
from ftserve.graders import sandbox
from ftserve.graders.base import GradeResult, Sample


def _defines_grade(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "grade" for n in tree.body)


@dataclass
class Python:
    spec: PythonGrader
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)

    def check(self, param: str) -> None:
        """Parsed here (never run): a syntax error or no top-level `grade` is a 400; no sandbox, a 400 too."""
        try:
            tree = ast.parse(self.spec.source)
        except (SyntaxError, ValueError) as exc:
            raise bad_request(
                f"source does not parse: {exc}", param=f"{param}.source", code="invalid_python_grader"
            ) from None
        if not _defines_grade(tree):
            raise bad_request(
                "source must define grade(sample, item) at top level",
                param=f"{param}.source",
                code="invalid_python_grader",
            )
        if not sandbox.available():
            raise bad_request(
                "python graders are not available on this server: its sandbox (bubblewrap with unprivileged user "
                "namespaces) cannot run here, and ftserve never runs grader code unsandboxed",
                param=f"{param}.type",
                code="python_grader_unavailable",
            )

    def grade(self, sample: Sample, item: Any) -> GradeResult:
        outcome = sandbox.run(self.spec.source, sample.namespace(), item, self.limits)
        if outcome.reward is not None:
            return GradeResult(reward=outcome.reward)
        if outcome.runtime_error is not None:
            return GradeResult.failed(
                python_grader_runtime_error=True, python_grader_runtime_error_details=outcome.runtime_error
            )
        if outcome.server_error == "output_too_large":
            return GradeResult.failed(truncated_observation_error=True)
        return GradeResult.failed(
            python_grader_server_error=True,
            python_grader_server_error_type=outcome.server_error,
            unresponsive_reward_error=outcome.server_error == "timeout",
        )
