"""/v1/completions and /v1/chat/completions for base models and every fine-tuned adapter of the caller's org."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import OrgDep, SessionDep, SettingsDep
from app.config import Settings
from app.errors import bad_request
from app.ids import new_id, now
from app.schemas.completions import (
    ChatChoice,
    ChatChoiceMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
)
from app.schemas.errors import ERROR_RESPONSES
from app.services import catalog
from app.storage import Storage
from engine.engine import InferenceEngine, ModelRef
from engine.generation import Row
from models.chat import render_chat
from serving.logprobs import StreamCursor, chat_logprobs, completion_logprobs
from serving.protocol import best, check_best_of, check_length, sampling, usage
from serving.refs import model_ref
from serving.streaming import stream, usage_chunk

router = APIRouter(tags=["inference"], responses=ERROR_RESPONSES)


def _engine(request: Request) -> InferenceEngine:
    engine: InferenceEngine = request.app.state.engine
    return engine


def _resolve(session: Session, settings: Settings, org: str, model: str) -> ModelRef:
    """The org's model name as the engine's reference; the DB session is closed before generation starts."""
    ref = model_ref(catalog.resolve(session, settings, org, model), Storage(settings))
    session.close()  # generation can take a while; hold no DB connection meanwhile
    return ref


@router.post("/v1/completions", response_model=Completion)
async def completions(
    req: CompletionRequest, request: Request, session: SessionDep, settings: SettingsDep, org: OrgDep
) -> Any:
    ref = _resolve(session, settings, org, req.model)
    engine = _engine(request)
    tok = await run_in_threadpool(engine.tokenizer, ref.base)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    limit = settings.base_models[ref.base].max_seq_len
    max_tokens = min(req.max_tokens or 16, settings.max_new_tokens_limit)
    best_of = check_best_of(req)
    # Ranking candidates needs each sampled token's logprob, whether or not the client asked for them.
    scored = req.logprobs if req.logprobs is not None or best_of == req.n else 0
    rows: list[Row] = []
    prompt_lens: list[int] = []
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=True)["input_ids"]
        if not ids:
            raise bad_request("The prompt is empty", param="prompt")
        check_length(len(ids), max_tokens, limit)
        prompt_lens.append(len(ids))
        for c in range(best_of):
            rows.append(Row(list(ids), None, sampling(req, max_tokens, scored, c, len(tok))))
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

        final = partial(usage_chunk, req, envelope, prompt_lens * req.n, rows)
        return await stream(engine, ref, rows, chunk, final)
    await engine.generate(ref, rows)
    choices = []
    for i, row in enumerate(best(rows, best_of, req.n)):
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
        usage=usage([prompt_lens[i // best_of] for i in range(len(rows))], rows),  # every candidate counts
    )


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    req: ChatCompletionRequest, request: Request, session: SessionDep, settings: SettingsDep, org: OrgDep
) -> Any:
    ref = _resolve(session, settings, org, req.model)
    engine = _engine(request)
    tok = await run_in_threadpool(engine.tokenizer, ref.base)
    if not tok.chat_template:
        raise bad_request(
            f"Model '{req.model}' has no chat template; use /v1/completions", param="model", code="chat_not_supported"
        )
    msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    text = render_chat(tok, msgs, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    limit = settings.base_models[ref.base].max_seq_len
    max_tokens = min(req.max_completion_tokens or req.max_tokens or (limit - len(ids)), settings.max_new_tokens_limit)
    check_length(len(ids), max_tokens, limit)
    top = (req.top_logprobs or 0) if req.logprobs else None
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", param="top_logprobs")
    rows = [Row(list(ids), None, sampling(req, max_tokens, top, c, len(tok))) for c in range(req.n)]
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

        final = partial(usage_chunk, req, envelope, [len(ids)] * req.n, rows)
        return await stream(engine, ref, rows, chunk, final)
    await engine.generate(ref, rows)
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
        id=cid, created=created, model=req.model, choices=choices, usage=usage([len(ids)] * req.n, rows)
    )
