"""/v1/completions and /v1/chat/completions for base models and every fine-tuned adapter of the caller's org."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import OrgDep, SessionDep, SettingsDep
from app.errors import APIError, bad_request
from app.ids import new_id, now
from app.schemas.completions import (
    ChatChoice,
    ChatChoiceMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
)
from app.schemas.errors import ERROR_RESPONSES
from app.services import models as model_service
from app.services.models import ResolvedModel
from worker.inference.engine import InferenceEngine
from worker.inference.generation import Row
from worker.inference.logprobs import StreamCursor, chat_logprobs, completion_logprobs
from worker.inference.sampling import Sampling
from worker.training.tokenize import render_chat

router = APIRouter(tags=["inference"], responses=ERROR_RESPONSES)


def _engine(request: Request) -> InferenceEngine:
    engine: InferenceEngine = request.app.state.engine
    return engine


def _sampling(
    req: CompletionRequest | ChatCompletionRequest, max_tokens: int, logprobs: int | None, choice: int, vocab: int
) -> Sampling:
    stops = req.stop_list()
    if len(stops) > 4:
        raise bad_request("At most 4 stop sequences are allowed", param="stop")
    bias = tuple(sorted((int(k), float(v)) for k, v in (req.logit_bias or {}).items()))
    unknown = [t for t, _ in bias if t >= vocab]
    if unknown:
        raise bad_request(f"logit_bias names token ids outside the model's vocabulary: {unknown}", param="logit_bias")
    seed = None if req.seed is None else req.seed + choice
    return Sampling(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=tuple(stops),
        seed=seed,
        logprobs=logprobs,
        logit_bias=bias,
        frequency_penalty=req.frequency_penalty or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
    )


def _check_length(prompt_len: int, max_tokens: int, limit: int) -> None:
    if prompt_len + max_tokens > limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens; the prompt has {prompt_len} tokens and "
            f"max_tokens is {max_tokens}",
            param="max_tokens",
            code="context_length_exceeded",
        )


async def _run(engine: InferenceEngine, resolved: ResolvedModel, rows: list[Row]) -> None:
    await engine.generate(resolved, rows)


_DONE = object()


async def _stream(
    engine: InferenceEngine, resolved: ResolvedModel, rows: list[Row], chunk: Any, final: Any
) -> EventSourceResponse:
    """Submit the rows and relay each row's text deltas as SSE chunks as they are produced, then [DONE].

    The response starts only once the first token (or the request's error) is known, so an adapter
    that fails to load is still an HTTP error with the envelope, not a broken stream.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    disconnected = threading.Event()
    for i, row in enumerate(rows):
        row.on_text = partial(_relay, loop, queue, i)
        row.on_finish = partial(_relay, loop, queue, i, None)  # text None: choice i has finished
        row.cancelled = disconnected.is_set

    def done(error: BaseException | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (_DONE, error))

    await run_in_threadpool(engine.submit, resolved, rows, done)
    first = await queue.get()
    if first[0] is _DONE and first[1] is not None:
        disconnected.set()
        raise first[1]

    async def events() -> AsyncIterator[str]:
        item = first
        try:
            while item[0] is not _DONE:
                i, text = item
                # Each choice's finish_reason chunk goes out when that choice ends, as OpenAI's streams do.
                yield json.dumps(chunk(i, "", rows[i].finish_reason) if text is None else chunk(i, text, None))
                item = await queue.get()
            if item[1] is not None:  # a failed forward pass after the stream began
                yield json.dumps(_error_body(item[1]))
                return
            tail = final()
            if tail is not None:
                yield json.dumps(tail)
            yield "[DONE]"
        finally:
            # A client that went away stops its rows at the next decode step.
            disconnected.set()

    return EventSourceResponse(events(), ping=15)


def _error_body(error: BaseException) -> dict[str, Any]:
    if isinstance(error, APIError):
        return error.body()
    return {"error": {"message": str(error), "type": "server_error", "param": None, "code": None}}


def _relay(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any], i: int, text: str | None) -> None:
    loop.call_soon_threadsafe(queue.put_nowait, (i, text))


def _usage(prompt_tokens: list[int], rows: list[Row]) -> Usage:
    p = sum(prompt_tokens)
    c = sum(len(r.token_ids) for r in rows)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


def _usage_chunk(
    req: CompletionRequest | ChatCompletionRequest, envelope: dict[str, Any], prompt_tokens: list[int], rows: list[Row]
) -> dict[str, Any] | None:
    """The stream's last chunk when stream_options.include_usage asks for it: no choices, the usage."""
    if not (req.stream_options and req.stream_options.include_usage):
        return None
    return {**envelope, "choices": [], "usage": _usage(prompt_tokens, rows).model_dump()}


@router.post("/v1/completions", response_model=Completion)
async def completions(
    req: CompletionRequest, request: Request, session: SessionDep, settings: SettingsDep, org: OrgDep
) -> Any:
    resolved = model_service.resolve(session, settings, org, req.model)
    session.close()  # generation can take a while; hold no DB connection meanwhile
    engine = _engine(request)
    tok = await run_in_threadpool(engine.tokenizer, resolved.base)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    limit = settings.base_models[resolved.base].max_seq_len
    max_tokens = min(req.max_tokens or 16, settings.max_new_tokens_limit)
    best_of = _check_best_of(req)
    # Ranking candidates needs each sampled token's logprob, whether or not the client asked for them.
    scored = req.logprobs if req.logprobs is not None or best_of == req.n else 0
    rows: list[Row] = []
    prompt_lens: list[int] = []
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=True)["input_ids"]
        if not ids:
            raise bad_request("The prompt is empty", param="prompt")
        _check_length(len(ids), max_tokens, limit)
        prompt_lens.append(len(ids))
        for c in range(best_of):
            rows.append(Row(list(ids), None, _sampling(req, max_tokens, scored, c, len(tok))))
    cid, created = new_id("cmpl-"), now()

    def choice_text(i: int, text: str) -> str:
        return (prompts[i // req.n] + text) if req.echo else text

    if req.stream:
        echoed: set[int] = set()
        cursor = StreamCursor(rows)
        envelope = {"id": cid, "object": "text_completion", "created": created, "model": req.model}

        def chunk(i: int, text: str, finish: str | None) -> dict[str, Any]:
            if req.echo and i not in echoed:
                echoed.add(i)
                text = prompts[i // req.n] + text
            lp = None if req.logprobs is None else cursor.completion(tok, i).model_dump()
            return {**envelope, "choices": [{"index": i, "text": text, "logprobs": lp, "finish_reason": finish}]}

        final = partial(_usage_chunk, req, envelope, prompt_lens * req.n, rows)
        return await _stream(engine, resolved, rows, chunk, final)
    await _run(engine, resolved, rows)
    choices = []
    for i, row in enumerate(_best(rows, best_of, req.n)):
        lp = None
        if req.logprobs is not None:
            lp = completion_logprobs(tok, row)
        choices.append(
            CompletionChoice(
                index=i,
                text=choice_text(i, row.text),
                logprobs=lp,
                finish_reason=row.finish_reason,  # type: ignore[arg-type]
            )
        )  # type: ignore[arg-type]
    return Completion(
        id=cid,
        created=created,
        model=req.model,
        choices=choices,
        usage=_usage([prompt_lens[i // best_of] for i in range(len(rows))], rows),  # every candidate counts
    )


def _check_best_of(req: CompletionRequest) -> int:
    """How many candidates to generate per prompt (best_of, default n); 400 for what cannot be served."""
    if req.suffix:
        raise bad_request("suffix (text insertion) is not supported by these models", param="suffix")
    best_of = req.best_of or req.n
    if best_of < req.n:
        raise bad_request(f"best_of ({best_of}) must be at least n ({req.n})", param="best_of")
    if req.stream and best_of > req.n:
        raise bad_request("best_of larger than n cannot be streamed", param="best_of")
    return best_of


def _best(rows: list[Row], best_of: int, n: int) -> list[Row]:
    """Per prompt, the n candidates with the highest mean logprob per sampled token (OpenAI's best_of)."""
    if best_of == n:
        return rows

    def score(row: Row) -> float:
        # Every sampled token counts, the end-of-text one included.
        sampled = row.token_logprobs + ([] if row.stop_logprob is None else [row.stop_logprob])
        return sum(sampled) / max(len(sampled), 1)

    groups = [rows[i : i + best_of] for i in range(0, len(rows), best_of)]
    return [row for group in groups for row in sorted(group, key=score, reverse=True)[:n]]


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    req: ChatCompletionRequest, request: Request, session: SessionDep, settings: SettingsDep, org: OrgDep
) -> Any:
    resolved = model_service.resolve(session, settings, org, req.model)
    session.close()
    engine = _engine(request)
    tok = await run_in_threadpool(engine.tokenizer, resolved.base)
    if not tok.chat_template:
        raise bad_request(
            f"Model '{req.model}' has no chat template; use /v1/completions", param="model", code="chat_not_supported"
        )
    msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    text = render_chat(tok, msgs, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    limit = settings.base_models[resolved.base].max_seq_len
    max_tokens = min(req.max_completion_tokens or req.max_tokens or (limit - len(ids)), settings.max_new_tokens_limit)
    _check_length(len(ids), max_tokens, limit)
    top = (req.top_logprobs or 0) if req.logprobs else None
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", param="top_logprobs")
    rows = [Row(list(ids), None, _sampling(req, max_tokens, top, c, len(tok))) for c in range(req.n)]
    cid, created = new_id("chatcmpl-"), now()
    if req.stream:
        started: set[int] = set()
        cursor = StreamCursor(rows)
        envelope = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model}

        def chunk(i: int, text: str, finish: str | None) -> dict[str, Any]:
            delta: dict[str, Any] = {} if finish else {"content": text}
            if i not in started:  # every choice's first chunk names the role, even one that ends at once
                delta = {"role": "assistant", "content": text}
                started.add(i)
            lp = None if top is None else cursor.chat(tok, i, top).model_dump()
            return {**envelope, "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

        final = partial(_usage_chunk, req, envelope, [len(ids)] * req.n, rows)
        return await _stream(engine, resolved, rows, chunk, final)
    await _run(engine, resolved, rows)
    choices = [
        ChatChoice(
            index=i,
            message=ChatChoiceMessage(content=r.text),
            finish_reason=r.finish_reason,  # type: ignore[arg-type]
            logprobs=chat_logprobs(tok, r, top) if top is not None else None,
        )
        for i, r in enumerate(rows)
    ]
    return ChatCompletion(
        id=cid, created=created, model=req.model, choices=choices, usage=_usage([len(ids)] * req.n, rows)
    )
