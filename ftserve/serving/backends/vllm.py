"""The vllm backend: a base's requests go to its vLLM OpenAI servers as token ids (ftserve renders and
tokenizes the prompt itself, so both backends see the same prompt) and come back as token ids, which the
builtin engine's own `accept` turns into text, stops and finish reasons. Adapters are loaded into a replica
at runtime (`/v1/load_lora_adapter`) from a copy the server can read, each adapter routed to the replica
that holds it; a replica that fails is skipped and its rows continue on another one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
from transformers import PreTrainedTokenizerBase

from ftserve.core import metrics
from ftserve.core.config import BaseModelSpec, Settings
from ftserve.core.errors import InvalidRequest, ServiceError, Unavailable, bad_request
from ftserve.engine.constraint import Constraint
from ftserve.engine.engine import ModelRef, generate_via, run_via
from ftserve.engine.errors import AdapterLoadError, EngineStopped, GenerationFailed
from ftserve.engine.generation import Listener, Row, accept, attach, emit, notify_finished
from ftserve.engine.grammar import Grammars
from ftserve.engine.messages import Done
from ftserve.models.bases import load_tokenizer
from ftserve.models.special_tokens import stop_token_ids
from ftserve.serving.backends.replicas import Replica, order

log = logging.getLogger(__name__)

UNSUPPORTED = "unsupported_on_backend"


class ReplicaFailed(Exception):
    """The replica could not be reached or failed (5xx, broken stream): try another one."""


def check_servable(base: str, rows: list[Row]) -> InvalidRequest | None:
    """What the vllm backend does not forward (yet), as the 400 naming it; None when every row is served.

    Logprobs would need vLLM's alternatives mapped back to token ids (`return_tokens_as_token_ids`); until
    then they are refused rather than dropped."""
    for row in rows:
        s = row.sampling
        if s.logprobs is not None or s.prompt_logprobs:
            return bad_request(
                f"logprobs (and best_of above n, which ranks candidates by them) are not served for base '{base}' "
                "(vllm backend)",
                param="logprobs",
                code=UNSUPPORTED,
            )
    return None


def structured_outputs(constraint: Constraint) -> dict[str, Any]:
    """A row's constraint as vLLM's `structured_outputs`: its own grammar backends (xgrammar, else llguidance,
    which reads the same Lark syntax as ftserve's engine, `%json` included) enforce it."""
    if constraint.kind == "json_object":
        return {"json_object": True}
    if constraint.kind == "json_schema":
        return {"json": json.loads(constraint.source)}
    return {"grammar": constraint.source}


def request_body(model: str, row: Row, stops: set[int]) -> dict[str, Any]:
    """vLLM's /v1/completions body for what remains of a row: its prompt plus what it generated so far
    (a row that moves to another replica mid-way continues where it was)."""
    s = row.sampling
    body: dict[str, Any] = {
        "model": model,
        "prompt": [*row.prompt_ids, *row.token_ids],
        "max_tokens": s.max_tokens - len(row.token_ids),
        "temperature": s.temperature,
        "top_p": s.top_p,
        "stream": True,
        "return_token_ids": True,
        # ftserve's stop set (EOS, the chat end-of-turn), so both backends stop on the same tokens; stop
        # strings are found by `accept` on ftserve's own text, and the stream is closed there.
        "stop_token_ids": sorted(stops),
        "skip_special_tokens": True,
    }
    if s.seed is not None:
        body["seed"] = s.seed
    if s.logit_bias:
        body["logit_bias"] = {str(t): b for t, b in s.logit_bias}
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.constraint is not None:
        body["structured_outputs"] = structured_outputs(s.constraint)
    return body


class VllmBackend:
    """Generation for the `vllm` bases; thread-safe; its HTTP calls run on one event loop thread of its own."""

    def __init__(self, settings: Settings, bases: dict[str, BaseModelSpec]) -> None:
        self.settings = settings
        self.bases = bases
        self.replicas = {name: [Replica(u.rstrip("/")) for u in spec.vllm_urls] for name, spec in bases.items()}
        self._tokenizers: dict[str, tuple[PreTrainedTokenizerBase, set[int]]] = {}
        self._tok_lock = threading.Lock()
        self._grammars: dict[str, Grammars] = {}
        self._load_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._client: httpx.AsyncClient | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="ftserve-vllm", daemon=True)
        self._thread.start()

    # --- the Backend interface -------------------------------------------------------------------------

    def tokenizer(self, base: str) -> PreTrainedTokenizerBase:
        return self._tokenizer(base)[0]

    def check_constraint(self, base: str, constraint: Constraint) -> None:
        """Compiled here with the builtin engine's library (llguidance, which vLLM's `guidance` structured-output
        backend runs too), so a constraint vLLM would refuse is the same 400 before any replica is asked."""
        with self._tok_lock:
            grammars = self._grammars.get(base)
        if grammars is None:
            tok, stops = self._tokenizer(base)
            grammars = Grammars(tok, len(tok), stops, self.settings.grammar_cache_size)
            with self._tok_lock:
                grammars = self._grammars.setdefault(base, grammars)
        grammars.compile(constraint)

    def submit(
        self,
        ref: ModelRef,
        rows: list[Row],
        done: Done,
        listen: Listener | None = None,
        cancelled: Callable[[], bool] | None = None,
        background: bool = False,
    ) -> None:
        if self._closed:
            done(EngineStopped())
            return
        refused = check_servable(ref.base, rows)
        if refused is not None:
            done(refused)
            return
        tok, stops = self._tokenizer(ref.base)
        attach(rows, None if ref.adapter is None else ref.adapter.key, listen, cancelled)
        self._call(self._job(ref, rows, done, tok, stops))

    async def generate(self, ref: ModelRef, rows: list[Row]) -> None:
        await generate_via(self.submit, ref, rows)

    def run(self, ref: ModelRef, rows: list[Row]) -> None:
        run_via(self.submit, ref, rows)

    def unload(self, base: str, adapter: str) -> None:
        """Drop a deleted model's adapter copy and unload it from every replica holding it (the unloading in
        the background)."""
        if base in self.replicas and not self._closed:
            self._call(self._unload(base, adapter))

    def resident_adapters(self) -> list[tuple[str, str]]:
        """(base, adapter key) of every adapter loaded on some replica (read on the loop that changes them) or
        copied to a shared adapter dir: the sweep unloads, and so removes, those of deleted models."""
        if self._closed:
            return []

        async def collect() -> set[tuple[str, str]]:
            return {(base, key) for base, reps in self.replicas.items() for r in reps for key in r.adapters}

        loaded = asyncio.run_coroutine_threadsafe(collect(), self._loop).result(timeout=30)
        return sorted(loaded | self._copies())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    # --- internals ---------------------------------------------------------------------------------------

    def _tokenizer(self, base: str) -> tuple[PreTrainedTokenizerBase, set[int]]:
        with self._tok_lock:
            if base not in self._tokenizers:
                tok, generation = load_tokenizer(self.settings, base)
                self._tokenizers[base] = (tok, stop_token_ids(generation, tok))
            return self._tokenizers[base]

    def _call(self, coro: Coroutine[Any, Any, None]) -> Future[None]:
        return asyncio.run_coroutine_threadsafe(self._tracked(coro), self._loop)

    async def _tracked(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        try:
            await task
        finally:
            self._tasks.discard(task)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # made on the loop's thread, where it is used
            timeout = httpx.Timeout(self.settings.vllm_timeout_seconds, connect=5.0)
            self._client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None))
        return self._client

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _job(
        self, ref: ModelRef, rows: list[Row], done: Done, tok: PreTrainedTokenizerBase, stops: set[int]
    ) -> None:
        """One request's rows, each its own vLLM request; the first row that fails fails the request."""
        started = time.monotonic()
        error: BaseException | None = None
        tasks = [asyncio.ensure_future(self._row(ref, row, tok, stops)) for row in rows]
        try:
            for next_done in asyncio.as_completed(tasks):
                try:
                    await next_done
                except ServiceError as exc:
                    error = error or exc
                except Exception as exc:
                    log.warning("a row of %s failed: %r", ref.name, exc)
                    error = error or GenerationFailed(exc)
                if error is not None:
                    for row in rows:
                        row.state.abandoned = True
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            done(EngineStopped())
            raise
        if error is None:
            metrics.REQUEST_SECONDS.observe(time.monotonic() - started)
        done(error)

    async def _row(self, ref: ModelRef, row: Row, tok: PreTrainedTokenizerBase, stops: set[int]) -> None:
        """Generate one row on the best replica, moving to the next one when a replica fails."""
        if row.sampling.max_tokens <= 0:  # scoring only: nothing to generate
            row.finish_reason = "length"
            emit(row, tok, final=True)
            self._finished(row)
            return
        key = None if ref.adapter is None else ref.adapter.key
        tried: set[str] = set()
        failures: list[str] = []
        while True:
            candidates = [
                r for r in order(self.replicas[ref.base], key, self.settings.vllm_affinity_slack) if r.url not in tried
            ]
            if not candidates:
                raise Unavailable(
                    f"No vLLM server of base '{ref.base}' could serve the request"
                    + (f": {'; '.join(failures)}" if failures else " (all are marked down)"),
                    code="backend_unavailable",
                    retry_after=self.settings.vllm_retry_seconds,
                )
            replica = candidates[0]
            tried.add(replica.url)
            try:
                await self._generate_on(replica, ref, row, tok, stops)
                self._finished(row)
                return
            except ReplicaFailed as exc:
                replica.down_until = time.monotonic() + self.settings.vllm_retry_seconds
                failures.append(f"{replica.url}: {exc}")
                log.warning("vLLM replica %s failed (%s); trying another one", replica.url, exc)

    def _finished(self, row: Row) -> None:
        metrics.GENERATED_TOKENS.inc(len(row.token_ids))
        reason = "cancelled" if row.was_cancelled else row.finish_reason or "stop"
        metrics.ROWS_FINISHED.labels(reason).inc()
        if not row.state.abandoned:
            notify_finished(row, row.finish_reason or "stop")

    async def _generate_on(
        self, replica: Replica, ref: ModelRef, row: Row, tok: PreTrainedTokenizerBase, stops: set[int]
    ) -> None:
        """Stream the row's tokens from one replica into `accept` until the row finishes."""
        replica.rows += 1
        try:
            for attempt in range(2):
                model = await self._model_on(replica, ref)
                body = request_body(model, row, stops)
                async with self.client.stream("POST", f"{replica.url}/v1/completions", json=body) as resp:
                    if resp.status_code == 404 and ref.adapter is not None and attempt == 0:
                        # The replica restarted and lost the adapter: load it again, once.
                        replica.adapters.discard(ref.adapter.key)
                        continue
                    await _check_status(resp, ref)
                    await self._consume(resp, row, tok, stops)
                    return
        except httpx.TransportError as exc:
            raise ReplicaFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            replica.rows -= 1

    async def _consume(self, resp: httpx.Response, row: Row, tok: PreTrainedTokenizerBase, stops: set[int]) -> None:
        """Feed the streamed token ids to the row until it finishes (or is cancelled); ReplicaFailed if the
        stream breaks first."""
        vllm_reason: str | None = None
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise ReplicaFailed(f"error in stream: {chunk['error']}")
            for choice in chunk.get("choices", []):
                for token in choice.get("token_ids") or []:
                    if accept(row, int(token), tok, stops):
                        return  # leaving the stream closes it: vLLM aborts the request
                vllm_reason = choice.get("finish_reason") or vllm_reason
            check = row.state.cancelled
            if row.state.abandoned or (check is not None and check()):
                row.was_cancelled = True
                return
        if vllm_reason is None:
            raise ReplicaFailed("the stream ended before the request finished")
        # vLLM finished without a token that ends the row here (a stop token it left out of token_ids).
        row.finish_reason = "length" if vllm_reason == "length" else "stop"
        emit(row, tok, final=True)

    async def _model_on(self, replica: Replica, ref: ModelRef) -> str:
        """The model name to ask this replica for: the base's served name, or the adapter (loaded if needed)."""
        if replica.served_name is None:
            try:
                resp = await self.client.get(f"{replica.url}/v1/models")
            except httpx.TransportError as exc:
                raise ReplicaFailed(f"{type(exc).__name__}: {exc}") from exc
            if resp.status_code != 200:
                raise ReplicaFailed(f"GET /v1/models answered {resp.status_code}")
            models = resp.json()["data"]
            bases = [m["id"] for m in models if not m.get("parent")]
            replica.served_name = bases[0] if bases else models[0]["id"]
        if ref.adapter is None:
            return replica.served_name
        key = ref.adapter.key
        lock = self._load_locks.setdefault((replica.url, key), asyncio.Lock())
        async with lock:
            if key not in replica.adapters:
                await self._load(replica, ref)
                replica.adapters.add(key)
        return key

    async def _load(self, replica: Replica, ref: ModelRef) -> None:
        assert ref.adapter is not None
        key = ref.adapter.key
        path = await asyncio.to_thread(self._adapter_path, ref)
        try:
            resp = await self.client.post(
                f"{replica.url}/v1/load_lora_adapter", json={"lora_name": key, "lora_path": str(path)}
            )
        except httpx.TransportError as exc:
            raise ReplicaFailed(f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code == 200 or "already" in resp.text:
            metrics.ADAPTER_LOADS.inc()
            return
        if resp.status_code >= 500:
            raise ReplicaFailed(f"loading the adapter answered {resp.status_code}")
        metrics.ADAPTER_LOAD_FAILURES.inc()
        raise AdapterLoadError(ref.name, f"vLLM refused it ({resp.status_code}): {_message(resp)}")

    def _adapter_path(self, ref: ModelRef) -> Path:
        """The adapter's directory as the vLLM servers see it: a copy in the base's shared adapter dir, or
        this host's own copy when none is set (vLLM on the same host)."""
        assert ref.adapter is not None
        local = ref.adapter.locate()
        if not isinstance(local, Path):  # serving's refs name directories; in-memory adapters are training's
            raise AdapterLoadError(ref.name, "its files are missing")
        shared = self.bases[ref.base].vllm_adapter_dir
        if shared is None:
            return local
        target = Path(shared) / ref.base / ref.adapter.key
        if not target.exists():
            tmp = target.with_name(f".{target.name}.tmp-{threading.get_ident()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(local, tmp)
            try:
                tmp.rename(target)  # whole or absent: a server never reads a half-copied adapter
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not target.exists():
                    raise
        return target

    async def _unload(self, base: str, key: str) -> None:
        """Drop the adapter's shared copy first, then unload it from every replica holding it.

        The copy goes first so that deletion's end state does not hang on the replicas: a server that stops
        between the two steps has lost the loaded adapter anyway, and the copy is already gone (a replica
        keeps what it loaded in memory, so a request in flight still finishes)."""
        await asyncio.to_thread(self._drop_copy, base, key)
        for replica in self.replicas[base]:
            if key not in replica.adapters:
                continue
            replica.adapters.discard(key)
            try:
                resp = await self.client.post(f"{replica.url}/v1/unload_lora_adapter", json={"lora_name": key})
                if resp.status_code == 200:
                    metrics.ADAPTER_UNLOADS.inc()
                else:
                    log.warning("unloading %s from %s answered %s", key, replica.url, resp.status_code)
            except httpx.TransportError as exc:  # a replica that is down lost its adapters anyway
                log.warning("unloading %s from %s failed: %s", key, replica.url, exc)

    def _drop_copy(self, base: str, key: str) -> None:
        """Remove the adapter's copy from the base's shared dir: renamed away in one step (so it is gone from
        its path at once), then deleted; a failure to delete is logged, and the sweep retries it."""
        shared = self.bases[base].vllm_adapter_dir
        if shared is None:
            return
        target = Path(shared) / base / key
        doomed = target.with_name(f".{key}.deleted-{threading.get_ident()}")
        with contextlib.suppress(FileNotFoundError):  # no copy: never loaded here, or already removed
            target.rename(doomed)
        for leftover in target.parent.glob(f".{key}.deleted-*"):
            try:
                shutil.rmtree(leftover)
            except OSError as exc:
                log.warning("could not remove the deleted adapter copy %s: %s", leftover, exc)

    def _copies(self) -> set[tuple[str, str]]:
        """(base, adapter key) of every adapter copy in the shared dirs, including those a stopped role left
        behind and those renamed away but not yet deleted (copies still being written are not listed)."""
        found: set[tuple[str, str]] = set()
        for base in self.replicas:
            shared = self.bases[base].vllm_adapter_dir
            folder = None if shared is None else Path(shared) / base
            if folder is None or not folder.is_dir():
                continue
            for path in folder.iterdir():
                match = _COPY.fullmatch(path.name)
                if match:
                    found.add((base, match["key"] or match["gone"]))
        return found


# An adapter copy's name in a shared dir: `{key}`, or `.{key}.deleted-{n}` once renamed away for deletion.
_COPY = re.compile(r"(?P<key>[^.].*-(?:final|\d+))|\.(?P<gone>.+-(?:final|\d+))\.deleted-\d+")


async def _check_status(resp: httpx.Response, ref: ModelRef) -> None:
    """A server error fails the replica over; what vLLM refuses as bad input is the request's 400."""
    if resp.status_code == 200:
        return
    await resp.aread()
    if resp.status_code >= 500 or resp.status_code in (404, 408, 429):
        raise ReplicaFailed(f"answered {resp.status_code}: {_message(resp)}")
    message = f"The vLLM server refused the request for '{ref.name}': {_message(resp)}"
    raise bad_request(message, code="backend_rejected")


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:300]
