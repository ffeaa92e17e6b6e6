"""/v1/completions and /v1/chat/completions for base models and every fine-tuned adapter of the caller's org."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from ftserve.core.config import Settings
from ftserve.core.ids import new_id, now
from ftserve.core.schemas.completions import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionRequest,
)
from ftserve.core.schemas.errors import ERROR_RESPONSES
from ftserve.core.storage import Storage
from ftserve.engine.engine import ModelRef
from ftserve.serving.backends.base import Backend
from ftserve.serving.handlers import CHAT_HANDLER, COMPLETION_HANDLER
from ftserve.serving.logprobs import StreamCursor
from ftserve.serving.ports import ModelCatalog
from ftserve.serving.refs import model_ref
from ftserve.serving.streaming import ChunkHead, stream, usage_chunk
from ftserve.serving.tools import ChoiceStream

router = APIRouter(tags=["inference"], responses=ERROR_RESPONSES)


def _engine(request: Request) -> Backend:
    engine: Backend = request.app.state.engine
    return engine


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _catalog(request: Request) -> ModelCatalog:
    catalog: ModelCatalog = request.app.state.catalog
    return catalog


def _org(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's org (a sync dependency: FastAPI runs it in the threadpool, as the catalog reads the DB)."""
    return _catalog(request).org_for(authorization)


SettingsDep = Annotated[Settings, Depends(_settings)]
OrgDep = Annotated[str, Depends(_org)]


def _resolve(request: Request, org: str, model: str) -> ModelRef:
    """The org's model name as the engine's reference (the catalog holds no DB connection once it answers)."""
    settings = _settings(request)
    return model_ref(_catalog(request).resolve(org, model), Storage(settings))


@router.post(COMPLETION_HANDLER.endpoint.path, response_model=COMPLETION_HANDLER.endpoint.response)
async def completions(req: CompletionRequest, request: Request, settings: SettingsDep, org: OrgDep) -> Any:
    ref = await run_in_threadpool(_resolve, request, org, req.model)
    engine = _engine(request)
    tok = await run_in_threadpool(engine.tokenizer, ref.base)
    plan = COMPLETION_HANDLER.plan(req, tok, settings, ref.base)
    rows = plan.rows
    await run_in_threadpool(COMPLETION_HANDLER.check, engine, ref.base, plan)
    cid, created = new_id(COMPLETION_HANDLER.endpoint.id_prefix), now()
    if req.stream:
        echoed: set[int] = set()
        prompt_of = [plan.prompt_texts[i // req.n] for i in range(len(rows))]
        cursor = StreamCursor(rows, [len(p) for p in prompt_of])
        head = ChunkHead(id=cid, object="text_completion", created=created, model=req.model)

        def chunk(i: int, text: str, finish: str | None) -> list[CompletionChunk]:
            if req.echo and i not in echoed:
                echoed.add(i)
                text = prompt_of[i] + text
            lp = None if req.logprobs is None else cursor.completion(tok, i, req.echo).model_dump()
            choice = CompletionChunkChoice(index=i, text=text, logprobs=lp, finish_reason=finish)  # type: ignore[arg-type]
            return [CompletionChunk(**head.fields(), choices=[choice])]

        prompt_tokens = [plan.prompt_lens[i // req.n] for i in range(len(rows))]
        final = partial(usage_chunk, req, CompletionChunk, head, prompt_tokens, rows)
        return await stream(engine, ref, rows, chunk, final)
    await engine.generate(ref, rows)
    return COMPLETION_HANDLER.body(plan, tok, cid, created)


@router.post(CHAT_HANDLER.endpoint.path, response_model=CHAT_HANDLER.endpoint.response)
async def chat_completions(req: ChatCompletionRequest, request: Request, settings: SettingsDep, org: OrgDep) -> Any:
    ref = await run_in_threadpool(_resolve, request, org, req.model)
    engine = _engine(request)
    tok = await run_in_threadpool(engine.tokenizer, ref.base)
    plan = CHAT_HANDLER.plan(req, tok, settings, ref.base)
    await run_in_threadpool(CHAT_HANDLER.check, engine, ref.base, plan)
    rows, top = plan.rows, plan.top
    cid, created = new_id(CHAT_HANDLER.endpoint.id_prefix), now()
    if req.stream:
        started: set[int] = set()
        cursor = StreamCursor(rows)
        head = ChunkHead(id=cid, object="chat.completion.chunk", created=created, model=req.model)
        choices = [ChoiceStream(plan.tools) for _ in rows]
        # Tool calls' first chunk has content null, as OpenAI's; a text reply's has "".
        empty = None if plan.tools is not None and plan.tools.choice != "none" else ""

        def chunk(i: int, text: str, finish: str | None) -> list[ChatCompletionChunk]:
            deltas, reason = (choices[i].feed(text), None) if finish is None else choices[i].finish(finish)
            if finish is not None:
                deltas.append(ChatDelta())  # the finish_reason goes in a chunk of its own
            events = []
            for n, delta in enumerate(deltas):
                if i not in started:  # every choice's first chunk names the role, even one that ends at once
                    delta = ChatDelta(**{"role": "assistant", "content": empty, **delta.model_dump(exclude_unset=True)})
                    started.add(i)
                # Logprobs of the tokens generated since the last chunk (held text sends none until it goes).
                lp = None if top is None else cursor.chat(tok, i, top).model_dump()
                last = reason if n == len(deltas) - 1 else None
                choice = ChatChunkChoice(index=i, delta=delta, logprobs=lp, finish_reason=last)  # type: ignore[arg-type]
                events.append(ChatCompletionChunk(**head.fields(), choices=[choice]))
            return events

        final = partial(usage_chunk, req, ChatCompletionChunk, head, [plan.prompt_len] * req.n, rows)
        return await stream(engine, ref, rows, chunk, final)
    await engine.generate(ref, rows)
    return CHAT_HANDLER.body(plan, tok, cid, created)
