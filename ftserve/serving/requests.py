"""One request, from its validated body to the engine's rows and back to OpenAI's response body; the HTTP
routes and the batch runner share it, so a batch line is answered exactly as the same request over HTTP."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.errors import bad_request
from ftserve.core.schemas.completions import (
    ChatChoice,
    ChatChoiceMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
)
from ftserve.engine.errors import InvalidConstraint
from ftserve.engine.generation import Row
from ftserve.models.chat import render_chat
from ftserve.serving.backends.base import Backend
from ftserve.serving.logprobs import chat_logprobs, choice_logprobs
from ftserve.serving.protocol import (
    best,
    chat_messages,
    check_best_of,
    check_length,
    check_max_tokens,
    check_prompt_ids,
    check_supported,
    response_constraint,
    sampling,
    usage,
)
from ftserve.serving.tools import ToolPlan, reply_message, tool_plan


@dataclass
class CompletionPlan:
    """A /v1/completions request as rows: best_of candidates per prompt, prompt by prompt."""

    req: CompletionRequest
    prompt_texts: list[str]  # as echoed: the prompt sent, or its token ids decoded
    prompt_lens: list[int]  # tokens per prompt
    rows: list[Row]
    best_of: int


@dataclass
class ChatPlan:
    """A /v1/chat/completions request as rows: one per choice."""

    req: ChatCompletionRequest
    prompt_len: int
    rows: list[Row]
    top: int | None  # top_logprobs when logprobs are asked for
    tools: ToolPlan | None = None


def plan_completion(
    req: CompletionRequest, tok: PreTrainedTokenizerBase, settings: Settings, base: str
) -> CompletionPlan:
    """Validate what the engine cannot serve (400s naming the parameter) and build the rows."""
    check_supported(req)
    best_of = check_best_of(req)
    check_max_tokens(req.max_tokens, settings.max_new_tokens_limit)
    max_tokens = 16 if req.max_tokens is None else req.max_tokens
    limit = settings.base_models[base].max_seq_len
    # Ranking candidates needs each sampled token's logprob, whether or not the client asked for them.
    scored = req.logprobs if req.logprobs is not None or best_of == req.n else 0
    # echo + logprobs: the prompt's own tokens are scored too (what eval harnesses ask for).
    prompt_scores = req.echo and req.logprobs is not None
    plan = CompletionPlan(req, [], [], [], best_of)
    constraint = response_constraint(req)
    for index, prompt in enumerate(req.prompt_list()):
        if isinstance(prompt, str):
            ids, text = tok(prompt, add_special_tokens=True)["input_ids"], prompt
        else:
            check_prompt_ids(prompt, len(tok), index)
            ids, text = list(prompt), str(tok.decode(prompt))
        if not ids:
            raise bad_request("The prompt is empty", param="prompt")
        check_length(len(ids), max_tokens, limit)
        plan.prompt_texts.append(text)
        plan.prompt_lens.append(len(ids))
        for c in range(best_of):
            s = sampling(req, max_tokens, scored, c, len(tok), prompt_logprobs=prompt_scores, constraint=constraint)
            plan.rows.append(Row(list(ids), s))
    return plan


def completion_body(plan: CompletionPlan, tok: PreTrainedTokenizerBase, cid: str, created: int) -> Completion:
    """The finished rows as OpenAI's Completion: the n best candidates per prompt, echo, logprobs, usage."""
    req = plan.req
    choices = []
    for i, row in enumerate(best(plan.rows, plan.best_of, req.n)):
        prompt = plan.prompt_texts[i // req.n]
        lp = None if req.logprobs is None else choice_logprobs(tok, row, prompt, req.echo)
        text = prompt + row.text if req.echo else row.text
        choices.append(CompletionChoice(index=i, text=text, logprobs=lp, finish_reason=row.finish_reason))  # type: ignore[arg-type]
    # Every candidate counts.
    prompt_tokens = [plan.prompt_lens[i // plan.best_of] for i in range(len(plan.rows))]
    return Completion(id=cid, created=created, model=req.model, choices=choices, usage=usage(prompt_tokens, plan.rows))


def plan_chat(req: ChatCompletionRequest, tok: PreTrainedTokenizerBase, settings: Settings, base: str) -> ChatPlan:
    """Render the messages with the base's chat template and build one row per choice; 400s as for completions."""
    check_supported(req)
    if not tok.chat_template:
        raise bad_request(
            f"Model '{req.model}' has no chat template; use /v1/completions", param="model", code="chat_not_supported"
        )
    tools = tool_plan(req)
    text = render_chat(tok, chat_messages(req), add_generation_prompt=True, tools=tools.tools if tools else None)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    limit = settings.base_models[base].max_seq_len
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    sent = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    check_max_tokens(sent, settings.max_new_tokens_limit, param)
    max_tokens = sent if sent is not None else min(limit - len(ids), settings.max_new_tokens_limit)
    check_length(len(ids), max_tokens, limit, param)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", param="top_logprobs")
    top = (req.top_logprobs or 0) if req.logprobs else None
    constraint = response_constraint(req)
    if tools is not None and tools.constraint is not None:
        if constraint is not None:
            raise bad_request(
                "response_format cannot be combined with a tool_choice that forces tool calls",
                param="response_format",
            )
        constraint = tools.constraint
    rows = [Row(list(ids), sampling(req, max_tokens, top, c, len(tok), constraint=constraint)) for c in range(req.n)]
    return ChatPlan(req, len(ids), rows, top, tools)


def chat_body(plan: ChatPlan, tok: PreTrainedTokenizerBase, cid: str, created: int) -> ChatCompletion:
    """The finished rows as OpenAI's ChatCompletion."""
    choices = []
    for i, r in enumerate(plan.rows):
        content, calls, finish = reply_message(plan.tools, r)
        choices.append(
            ChatChoice(
                index=i,
                message=ChatChoiceMessage(content=content, tool_calls=calls),
                finish_reason=finish,  # type: ignore[arg-type]
                logprobs=chat_logprobs(tok, r, plan.top) if plan.top is not None else None,
            )
        )
    n = len(plan.rows)
    return ChatCompletion(
        id=cid, created=created, model=plan.req.model, choices=choices, usage=usage([plan.prompt_len] * n, plan.rows)
    )


def check_constraints(engine: Backend, base: str, rows: list[Row], param: str = "response_format") -> None:
    """Compile the rows' constraints before they are submitted (cached per base; blocking: call it off the event
    loop); a constraint the grammar library refuses is a 400 naming `param`."""
    for constraint in {r.sampling.constraint for r in rows if r.sampling.constraint is not None}:
        try:
            engine.check_constraint(base, constraint)
        except InvalidConstraint as exc:
            raise bad_request(f"Invalid {param}: {exc.message}", param=param, code=exc.code) from None


def has_constraints(rows: list[Row]) -> bool:
    return any(r.sampling.constraint is not None for r in rows)
