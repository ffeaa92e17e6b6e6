"""Which `item.*` fields a grader's templates read, and where: so a job can refuse a file whose line lacks one
before it spends a run on it (a python grader's source is code, read at run time: not listed)."""

from __future__ import annotations

from typing import Any

from ftserve.core.schemas import graders as wire
from ftserve.graders import templates


def item_references(spec: Any, param: str = "grader") -> list[tuple[str, str]]:
    """(the field holding the template, the item path it reads) for every `{{item.*}}` in the grader."""
    found: list[tuple[str, str]] = []

    def add(template: str, where: str) -> None:
        found.extend((where, path) for path in templates.item_paths(template))

    if isinstance(spec, wire.StringCheckGrader | wire.TextSimilarityGrader):
        add(spec.input, f"{param}.input")
        add(spec.reference, f"{param}.reference")
    elif isinstance(spec, wire.ScoreModelGrader | wire.LabelModelGrader):
        for i, message in enumerate(spec.input):
            parts = message.content if isinstance(message.content, list) else [message.content]
            for j, part in enumerate(parts):
                text = part if isinstance(part, str) else getattr(part, "text", None)
                if text is not None:
                    suffix = f".{j}" if isinstance(message.content, list) else ""
                    add(text, f"{param}.input.{i}.content{suffix}")
    elif isinstance(spec, wire.MultiGrader):
        named = spec.graders if isinstance(spec.graders, dict) else {spec.graders.name: spec.graders}
        for name, sub in named.items():
            found.extend(item_references(sub, f"{param}.graders.{name}"))
    return found


def missing(item: dict[str, Any], path: str) -> bool:
    """Whether the item lacks what `path` (item.a.b) names."""
    try:
        templates.lookup(path, {"item": item})
    except templates.TemplateError:
        return True
    return False
