"""OpenAI's template strings: `{{item.field}}`, `{{sample.output_text}}`, `{{sample.output_json.key}}`,
`{{sample.output_tools}}`; a dotted path into the item or the sample, nothing else (no expressions)."""

from __future__ import annotations

import json
import re
from typing import Any

from ftserve.core.errors import bad_request

_TAG = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PATH = re.compile(r"^(item|sample)(\.[A-Za-z0-9_\-]+)*$")
SAMPLE_FIELDS = frozenset({"output_text", "output_json", "output_tools"})


class TemplateError(Exception):
    """A template names a variable the item or sample does not have."""


def check(template: str, param: str) -> None:
    """InvalidRequest naming `param` if a tag is not a path under `item` or `sample`'s fields."""
    for match in _TAG.finditer(template):
        path = match.group(1)
        parts = path.split(".")
        if not _PATH.match(path) or (parts[0] == "sample" and len(parts) > 1 and parts[1] not in SAMPLE_FIELDS):
            raise bad_request(
                f"Template variable {{{{{path}}}}} is not supported: use item.<field> or "
                f"sample.output_text / sample.output_json.<key> / sample.output_tools",
                param=param,
                code="invalid_template",
            )


def paths(template: str) -> list[str]:
    """Every path a template's tags read, in order."""
    return [m.group(1) for m in _TAG.finditer(template)]


def item_paths(template: str) -> list[str]:
    """The `item.*` paths a (checked) template reads, in order, each once."""
    paths = [m.group(1) for m in _TAG.finditer(template) if m.group(1).split(".")[0] == "item"]
    return list(dict.fromkeys(paths))


def lookup(path: str, namespaces: dict[str, Any]) -> Any:
    """The value at a dotted path (list elements by index); TemplateError if any step is missing."""
    head, *rest = path.split(".")
    value = namespaces[head]
    for part in rest:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(path)
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(template: str, namespaces: dict[str, Any]) -> str:
    """The template with every tag replaced by its value (strings as they are, anything else as JSON)."""
    return _TAG.sub(lambda m: _text(lookup(m.group(1), namespaces)), template)


def check_pair(input_template: str, reference_template: str, param: str) -> None:
    """A comparing grader's two templates (`input`, `reference`) checked, each 400 naming its field."""
    check(input_template, f"{param}.input")
    check(reference_template, f"{param}.reference")


def render_pair(input_template: str, reference_template: str, namespaces: dict[str, Any]) -> tuple[str, str] | None:
    """A comparing grader's input and reference for this sample and item; None when a template names what the
    item lacks (the grader then scores 0 with invalid_variable_error)."""
    try:
        return render(input_template, namespaces), render(reference_template, namespaces)
    except TemplateError:
        return None
