"""What a row's output must match (structured outputs, forced tool calls): a grammar named by its source text.

The engine compiles each distinct (base, kind, source) once and caches it; the mask is applied per row, so
constrained rows share a batch with free ones and with rows of other adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ConstraintKind = Literal["json_object", "json_schema", "lark"]


@dataclass(frozen=True)
class Constraint:
    """`json_object`: any JSON object (source unused, ""); `json_schema`: the schema as JSON text;
    `lark`: a grammar in llguidance's Lark syntax, which may embed JSON schemas (`%json { ... }`), e.g. a tool
    call's fixed text around its arguments."""

    kind: ConstraintKind
    source: str = ""
