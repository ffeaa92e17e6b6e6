"""multi: named sub-graders, combined by `calculate_output`, a formula over their names evaluated by
simpleeval (never eval): + - * / ^ (power, as OpenAI defines it), parentheses, numbers, and min, max, abs,
floor, ceil, exp, sqrt, log."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ftserve.core.errors import bad_request
from ftserve.core.schemas.graders import GraderErrors, MultiGrader
from ftserve.graders.base import Grader, GradeResult, Sample, TokenUsage

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}


def _operators() -> dict[type, Any]:
    from simpleeval import DEFAULT_OPERATORS, safe_power

    ops = dict(DEFAULT_OPERATORS)
    ops[ast.BitXor] = safe_power  # OpenAI's ^ is a power
    # Only arithmetic: no comparisons, boolean or bitwise tricks, no string operations.
    allowed = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.BitXor, ast.USub, ast.UAdd, ast.Mod, ast.FloorDiv)
    return {k: v for k, v in ops.items() if k in allowed} | {ast.USub: operator.neg, ast.UAdd: operator.pos}


_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.Name, ast.Constant, ast.Load, ast.operator, ast.unaryop)


def _refused(node: ast.AST, graders: dict[str, Any]) -> str | None:
    """Why a formula's node is not allowed (None if it is): arithmetic over grader names, numbers and FUNCTIONS."""
    if not isinstance(node, _NODES):
        return f"{type(node).__name__} is not allowed (only + - * / ^, numbers, grader names and {sorted(FUNCTIONS)})"
    if isinstance(node, ast.Constant) and (isinstance(node.value, bool) or not isinstance(node.value, int | float)):
        return f"{node.value!r} is not a number"
    if isinstance(node, ast.Call) and (
        node.keywords or not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS
    ):
        return f"only these functions may be called, without keywords: {sorted(FUNCTIONS)}"
    if isinstance(node, ast.Name) and node.id not in graders and node.id not in FUNCTIONS:
        return f"'{node.id}' is neither a grader ({sorted(graders)}) nor a function ({sorted(FUNCTIONS)})"
    return None


def evaluate(formula: str, names: dict[str, float]) -> float:
    """The formula's value (simpleeval); raises on anything it does not allow or cannot compute."""
    from simpleeval import SimpleEval

    evaluator = SimpleEval(operators=_operators(), functions=FUNCTIONS, names=names)
    value = evaluator.eval(formula)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"calculate_output gave {value!r}, not a finite number")
    return float(value)


@dataclass
class Multi:
    spec: MultiGrader
    graders: dict[str, Grader]

    def check(self, param: str) -> None:
        for name, grader in self.graders.items():
            grader.check(f"{param}.graders.{name}" if isinstance(self.spec.graders, dict) else f"{param}.graders")
        where = f"{param}.calculate_output"
        try:
            tree = ast.parse(self.spec.calculate_output, mode="eval")
        except SyntaxError as exc:
            raise bad_request(
                f"calculate_output does not parse: {exc.msg}", param=where, code="invalid_formula"
            ) from None
        for node in ast.walk(tree):
            problem = _refused(node, self.graders)
            if problem:
                raise bad_request(f"calculate_output: {problem}", param=where, code="invalid_formula")
        try:
            evaluate(self.spec.calculate_output, dict.fromkeys(self.graders, 0.5))
        except (ArithmeticError, ValueError):
            pass  # a value-dependent failure (log(0), say) is a formula_parse_error when it happens
        except Exception as exc:
            raise bad_request(
                f"calculate_output is not a supported formula: {exc}", param=where, code="invalid_formula"
            ) from None

    def grade(self, sample: Sample, item: Any) -> GradeResult:
        """Each sub-grader's reward (0 for a failed one, its flags carried up), then the formula over them; the
        judges' token usage summed per model, and the first judge model that answered."""
        results = {name: grader.grade(sample, item) for name, grader in self.graders.items()}
        sub_rewards = {name: r.reward for name, r in results.items()}
        errors = merge([r.errors for r in results.values()])
        try:
            reward = evaluate(self.spec.calculate_output, sub_rewards)
        except Exception:
            reward, errors = 0.0, errors.model_copy(update={"formula_parse_error": True})
        usage: dict[str, TokenUsage] = {}
        for r in results.values():
            for model, used in r.usage.items():
                usage[model] = usage.get(model, TokenUsage()) + used
        sampled = next((r.sampled_model_name for r in results.values() if r.sampled_model_name), None)
        return GradeResult(
            reward=reward,
            sub_rewards=sub_rewards,
            errors=errors,
            scores=dict(sub_rewards),
            usage=usage,
            sampled_model_name=sampled,
        )


def merge(all_errors: list[GraderErrors]) -> GraderErrors:
    """Every flag any sub-grader raised, and the first details of each kind."""
    merged: dict[str, Any] = {}
    for errors in all_errors:
        for key, value in errors.model_dump().items():
            if value and not merged.get(key):
                merged[key] = value
    return GraderErrors(**merged)
