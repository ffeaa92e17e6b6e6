"""Tools at serving time: a request's `tools`, `tool_choice` and `parallel_tool_calls` checked and turned into
what rendering and decoding need (a ToolPlan), and each choice's output turned into content and `tool_calls`,
whole or as OpenAI's stream deltas; both paths read the output with the same functions, so they agree.

Semantics (docs/tools.md): `none` never returns calls; `auto` lets the model choose and parses its output;
`required` and a named function force calls in ftserve's format with a grammar over the parameter schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftserve.core.errors import bad_request
from ftserve.core.ids import new_id
from ftserve.core.schemas.completions import (
    ChatCompletionRequest,
    ChatDelta,
    DeltaFunctionCall,
    DeltaToolCall,
    ReplyFunctionCall,
    ReplyToolCall,
)
from ftserve.engine.constraint import Constraint
from ftserve.engine.errors import InvalidConstraint
from ftserve.engine.generation import Row
from ftserve.engine.grammar import strict_schema
from ftserve.models.tools import ToolCall, parse_tool_calls, read_forced_calls, tool_call_lark
from ftserve.serving.backends.base import Backend


@dataclass(frozen=True)
class ToolPlan:
    """The request's tools as rendering takes them, and how the reply may use them."""

    tools: list[dict[str, Any]]
    names: frozenset[str]
    choice: str  # "none" | "auto" | "required" | "named"
    parallel: bool
    named: str | None = None  # the function a named tool_choice forces
    constraint: Constraint | None = None  # forced calls (required, named)

    @property
    def forced(self) -> bool:
        return self.constraint is not None

    def param(self) -> str:
        """What a grammar that cannot be compiled is blamed on: the named tool's parameters, else tool_choice."""
        if self.named is not None:
            at = next(i for i, t in enumerate(self.tools) if t["function"]["name"] == self.named)
            return f"tools[{at}].function.parameters"
        return "tool_choice"


def tool_plan(req: ChatCompletionRequest) -> ToolPlan | None:
    """The request's tool settings, or None when it has no tools; 400s naming the parameter for what cannot be."""
    choice = req.tool_choice
    named = None if choice is None or isinstance(choice, str) else choice.function.name
    if not req.tools:
        if named is not None or choice == "required":
            raise bad_request(
                "tool_choice requires tools: the request declares none", param="tool_choice", code="invalid_tool_choice"
            )
        return None  # "none" and "auto" without tools change nothing
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    seen: set[str] = set()
    for i, t in enumerate(tools):
        name = t["function"]["name"]
        if name in seen:
            raise bad_request(
                f"tools[{i}]: a function named '{name}' is declared twice",
                param=f"tools[{i}].function.name",
                code="duplicate_tool_name",
            )
        seen.add(name)
    if named is not None and named not in seen:
        raise bad_request(
            f"tool_choice names the function '{named}', which is not among the request's tools",
            param="tool_choice",
            code="unknown_tool",
        )
    kind = "named" if named is not None else str(choice or "auto")
    parallel = req.parallel_tool_calls is not False
    constraint = None
    if kind in ("required", "named"):
        constraint = Constraint("lark", tool_call_lark(_constrained(tools), named, parallel))
    return ToolPlan(tools, frozenset(seen), kind, parallel, named, constraint)


def _constrained(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools as the grammar takes them: every function's objects take no undeclared properties unless their
    schema opts in (`additionalProperties: true` or a schema, `patternProperties`), `strict` or not.

    A forced call's arguments go to `fn(**args)`: a key the function does not declare breaks the call, and
    LangChain and most callers send non-strict schemas that leave `additionalProperties` out (JSON Schema's
    default: open). xgrammar, vLLM's default backend, closes such objects; so does ftserve, as for
    response_format. The schema is rewritten here rather than through a compiler option: llguidance's JSON
    options (separators, whitespace, coerce_one_of, lenient) have none for it, and a rewritten schema travels
    in the Constraint, so the builtin engine and a vLLM backend's structured_outputs enforce the same one."""
    out = []
    for t in tools:
        fn = t["function"]
        if isinstance(fn.get("parameters"), dict):
            t = {**t, "function": {**fn, "parameters": strict_schema(fn["parameters"])}}
        out.append(t)
    return out


def _reply_call(name: str, arguments: str, call_id: str | None = None) -> ReplyToolCall:
    return ReplyToolCall(id=call_id or new_id("call_"), function=ReplyFunctionCall(name=name, arguments=arguments))


def read_reply(plan: ToolPlan | None, text: str, finish: str | None) -> tuple[str | None, list[ToolCall], str | None]:
    """(content, calls, finish_reason) of one finished choice."""
    if plan is None or plan.choice == "none":
        return text, [], finish
    if plan.forced:
        # Everything the grammar let through is calls; a call cut by max_tokens keeps its partial arguments.
        calls = [ToolCall(name, args) for name, args, _ in read_forced_calls(text, final=True)]
        content = None
    else:
        content, calls = parse_tool_calls(text, set(plan.names))
        calls = calls if plan.parallel else calls[:1]
    return content, calls, ("tool_calls" if calls and finish == "stop" else finish)


def reply_message(plan: ToolPlan | None, row: Row) -> tuple[str | None, list[ReplyToolCall] | None, str | None]:
    """A finished choice as OpenAI's message fields: content, tool_calls (ids `call_…`), finish_reason."""
    content, calls, finish = read_reply(plan, row.text, row.finish_reason)
    return content, [_reply_call(c.name, c.arguments) for c in calls] or None, finish


@dataclass
class ChoiceStream:
    """One choice's stream: text deltas in, OpenAI's chat deltas out (content, or tool_calls with an index: the
    first with id, type and function.name, then argument pieces), ending with what `read_reply` returns."""

    plan: ToolPlan | None
    text: str = ""
    content_sent: int = 0
    held: bool = False  # auto: a call may have started; the rest waits for the end
    calls: list[tuple[str, int]] = field(default_factory=list)  # per call sent: (id, argument chars sent)

    @property
    def plain(self) -> bool:
        return self.plan is None or self.plan.choice == "none"

    def feed(self, delta: str) -> list[ChatDelta]:
        if self.plain:
            return [ChatDelta(content=delta)]
        self.text += delta
        if self.plan is not None and self.plan.forced:
            return self._calls([(n, a) for n, a, _ in read_forced_calls(self.text, final=False)])
        return self._auto_content()

    def finish(self, finish: str | None) -> tuple[list[ChatDelta], str | None]:
        if self.plain:
            return [], finish
        content, calls, reason = read_reply(self.plan, self.text, finish)
        out = []
        if content is not None and len(content) > self.content_sent:
            out.append(ChatDelta(content=content[self.content_sent :]))
        out += self._calls([(c.name, c.arguments) for c in calls])
        return out, reason

    def _auto_content(self) -> list[ChatDelta]:
        """Content as it comes, up to where a call may start (held until the end, when parsing decides)."""
        if self.held:
            return []
        text = self.text.lstrip()
        if text.startswith(("{", "[", "<|python_tag|>")):  # a bare JSON call (Llama 3.1's style) may follow
            self.held = True
            return []
        at = text.find("<tool_call>")
        if at != -1:
            self.held, text = True, text[:at]
        else:  # hold a tail that may be the start of "<tool_call>"
            text = text[: len(text) - next((n for n in range(11, 0, -1) if text.endswith("<tool_call>"[:n])), 0)]
        # Whitespace before a call is not content (the whole reply's content is stripped).
        text = text.rstrip()
        if len(text) <= self.content_sent:
            return []
        piece, self.content_sent = text[self.content_sent :], len(text)
        return [ChatDelta(content=piece)]

    def _calls(self, calls: list[tuple[str, str]]) -> list[ChatDelta]:
        """Deltas that bring the sent calls up to these (each a prefix-extension of what was sent)."""
        out: list[ChatDelta] = []
        for index, (name, args) in enumerate(calls):
            if index == len(self.calls):
                call_id = new_id("call_")
                self.calls.append((call_id, 0))
                function = DeltaFunctionCall(name=name, arguments="")
                out.append(
                    ChatDelta(tool_calls=[DeltaToolCall(index=index, id=call_id, type="function", function=function)])
                )
            call_id, sent = self.calls[index]
            if len(args) > sent:
                function = DeltaFunctionCall(arguments=args[sent:])
                out.append(ChatDelta(tool_calls=[DeltaToolCall(index=index, function=function)]))
                self.calls[index] = (call_id, len(args))
        return out


def check_grammar(engine: Backend, base: str, plan: ToolPlan) -> None:
    """Compile the forced-call grammar now (cached by the engine): a 400 naming the tool whose parameter schema
    the grammar library cannot take (tried one by one when several tools share the grammar)."""
    if plan.constraint is None:
        return
    try:
        engine.check_constraint(base, plan.constraint)
    except InvalidConstraint as exc:
        exc.param = plan.param()
        if plan.named is None:
            for i, tool in enumerate(_constrained(plan.tools)):
                try:
                    engine.check_constraint(base, Constraint("lark", tool_call_lark([tool], None, False)))
                except InvalidConstraint:
                    exc.param = f"tools[{i}].function.parameters"
                    break
        exc.message = f"{exc.param}: the grammar for forced tool calls cannot be built: {exc.message}"
        raise
