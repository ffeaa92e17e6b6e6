"""Server-sent events for streamed completions: each row's text deltas as chunks as they are produced,
an error after the stream began as the one envelope, then [DONE]."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from ftserve.core.envelope import envelope
from ftserve.core.schemas.completions import ChatCompletionRequest, CompletionRequest
from ftserve.core.schemas.responses import ResponseEvent
from ftserve.engine.engine import ModelRef
from ftserve.engine.generation import Row, RowEvent, TextDelta
from ftserve.serving.backends.base import Backend
from ftserve.serving.protocol import usage

# A choice's text delta (or its finish) as one chunk, or several (a tool call's name, then its arguments): the
# endpoint's typed stream chunks (core/endpoints: CompletionChunk, ChatCompletionChunk).
Chunk = Callable[[int, str, str | None], Sequence[BaseModel]]


@dataclass(frozen=True)
class ChunkHead:
    """What every chunk of one stream repeats."""

    id: str
    object: str
    created: int
    model: str

    def fields(self) -> dict[str, Any]:
        return asdict(self)


def sse(chunk: BaseModel) -> str | dict[str, str]:
    """A chunk as its event's data: only the fields it carries (OpenAI's chunks leave the others out). A Responses
    API event is named (`event: response.output_text.delta`) and carries every field, as OpenAI's do."""
    if isinstance(chunk, ResponseEvent):
        return {"event": chunk.type, "data": chunk.model_dump_json()}
    return chunk.model_dump_json(exclude_unset=True)


@dataclass(frozen=True)
class _Done:
    """The request's rows have all finished; `error`: what failed it."""

    error: BaseException | None


async def stream(
    engine: Backend,
    ref: ModelRef,
    rows: list[Row],
    chunk: Chunk,
    final: Callable[[], Any],
    failed: Callable[[BaseException], Sequence[BaseModel]] | None = None,
) -> EventSourceResponse:
    """Submit the rows and relay each row's text deltas as SSE chunks as they are produced, then [DONE].

    `final` gives the last chunk (or None, or a list of them; it may be a coroutine function: the Responses API
    stores the response there, off the token path); `failed` the events that say a stream failed (else the envelope).

    The response starts only once the first token (or the request's error) is known, so an adapter
    that fails to load is still an HTTP error with the envelope, not a broken stream.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[RowEvent | _Done] = asyncio.Queue()
    disconnected = threading.Event()

    def listen(event: RowEvent) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    def done(error: BaseException | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, _Done(error))

    await run_in_threadpool(engine.submit, ref, rows, done, listen, disconnected.is_set)
    first = await queue.get()
    if isinstance(first, _Done) and first.error is not None:
        disconnected.set()
        raise first.error

    async def events() -> AsyncIterator[str | dict[str, str]]:
        item = first
        try:
            while not isinstance(item, _Done):
                # Each choice's finish_reason chunk goes out when that choice ends, as OpenAI's streams do.
                if isinstance(item, TextDelta):
                    out = chunk(item.index, item.text, None)
                else:
                    out = chunk(item.index, "", item.reason)
                for event in out:
                    yield sse(event)
                item = await queue.get()
            if item.error is not None:  # a failed forward pass after the stream began
                if failed is not None:
                    for event in failed(item.error):
                        yield sse(event)
                else:
                    yield json.dumps(envelope(item.error)[1])
                return
            tail = final()
            if inspect.isawaitable(tail):
                tail = await tail
            for last in tail if isinstance(tail, list) else [] if tail is None else [tail]:
                yield sse(last)
            yield "[DONE]"
        finally:
            # A client that went away stops its rows at the next decode step.
            disconnected.set()

    return EventSourceResponse(events(), ping=15)


def usage_chunk(
    req: CompletionRequest | ChatCompletionRequest,
    chunk_type: type[BaseModel],
    head: ChunkHead,
    prompt_tokens: list[int],
    rows: list[Row],
) -> BaseModel | None:
    """The stream's last chunk when stream_options.include_usage asks for it: no choices, the usage."""
    if not (req.stream_options and req.stream_options.include_usage):
        return None
    return chunk_type(**head.fields(), choices=[], usage=usage(prompt_tokens, rows))
