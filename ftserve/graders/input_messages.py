"""An eval run's `input_messages`: a template of chat messages over `{{item.*}}` (the graders' template language),
or an item reference (`item.conversation`) whose value is the messages; checked at run creation, rendered per
item by the eval runner into the chat messages the sampled model answers."""

from __future__ import annotations

import re
from typing import Any

from ftserve.core.errors import bad_request
from ftserve.core.schemas.evals import ItemReferenceInput, TemplateInput, TemplateMessage
from ftserve.core.schemas.graders import InputText, OutputText
from ftserve.graders import templates

_REFERENCE = re.compile(r"^\s*(?:\{\{\s*)?(item(?:\.[A-Za-z0-9_\-]+)+)(?:\s*\}\})?\s*$")


class ItemMismatch(Exception):
    """The item lacks what the input messages read, or its referenced value is not messages: the item errors."""


def _texts(content: Any) -> list[str]:
    parts = content if isinstance(content, list) else [content]
    return [p if isinstance(p, str) else p.text for p in parts if isinstance(p, str | InputText | OutputText)]


def _reference_path(reference: str) -> str | None:
    match = _REFERENCE.match(reference)
    return match.group(1) if match else None


def check(messages: TemplateInput | ItemReferenceInput, param: str) -> None:
    """InvalidRequest naming the field when a template reads anything but `item.*`, or a reference is no item path."""
    if isinstance(messages, ItemReferenceInput):
        if _reference_path(messages.item_reference) is None:
            raise bad_request(
                "item_reference must name a field of the item, such as 'item.messages'; "
                f"got {messages.item_reference!r}",
                param=f"{param}.item_reference",
                code="invalid_item_reference",
            )
        return
    for i, message in enumerate(messages.template):
        where = f"{param}.template[{i}].content"
        for text in _texts(message.content):
            templates.check(text, where)
            if any(p.split(".")[0] == "sample" for p in templates.paths(text)):
                raise bad_request(
                    "input_messages are rendered before the model samples: they may read {{item.*}}, not {{sample.*}}",
                    param=where,
                    code="invalid_template",
                )


def render(messages: TemplateInput | ItemReferenceInput, item: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages for this item ({role, content} each); ItemMismatch when the item cannot supply them."""
    namespaces = {"item": item}
    if isinstance(messages, TemplateInput):
        try:
            return [_rendered(m, namespaces) for m in messages.template]
        except templates.TemplateError as exc:
            raise ItemMismatch(
                f"the input_messages template reads {{{{{exc}}}}}, which the item does not have"
            ) from None
    path = _reference_path(messages.item_reference) or ""
    try:
        value = templates.lookup(path, namespaces)
    except templates.TemplateError:
        raise ItemMismatch(f"input_messages.item_reference names {path}, which the item does not have") from None
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value):
        return [{"role": str(m["role"]), "content": _joined(m.get("content"))} for m in value]
    raise ItemMismatch(f"{path} must be a string or a list of chat messages ({{role, content}}) to sample from")


def _rendered(message: TemplateMessage, namespaces: dict[str, Any]) -> dict[str, str]:
    return {"role": message.role, "content": "".join(templates.render(t, namespaces) for t in _texts(message.content))}


def _joined(content: Any) -> str:
    """A referenced message's content as text: a string, or its text parts in order."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)
