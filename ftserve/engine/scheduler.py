"""The batcher: one background thread owns every resident model and runs continuous batched decoding.

Requests arrive in an inbox; a request joins its base's running batch (prefill + KV merge) once its
adapter is attached and it has waited the batch window, so requests arriving close together share
one prefill. Adapters are read from disk by a loader thread, never by the decode loop, and attached
between steps. A row leaves the batch as soon as it finishes, and its request completes then.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ftserve.core import metrics
from ftserve.engine.adapter_files import LoadedAdapter, read_adapter
from ftserve.engine.adapters import AdapterCache
from ftserve.engine.errors import AdapterLoadError, EngineStopped, GenerationFailed
from ftserve.engine.generation import DecodeBatch, Row, notify_finished
from ftserve.engine.grammar import Grammars
from ftserve.engine.lora import BASE_SLOT
from ftserve.engine.messages import Job, ListResident, Loaded, Message, Stop, Submit, Unload

log = logging.getLogger(__name__)


@dataclass
class Resident:
    """One base in memory: its model, tokenizer, adapter slots, running batch and compiled grammars."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    stop_ids: set[int]
    adapters: AdapterCache
    batch: DecodeBatch
    grammars: Grammars


class Scheduler:
    """Runs every forward pass of the process in one thread; thread-safe submit/unload."""

    def __init__(self, residents: dict[str, Resident], window_s: float, max_rows: int) -> None:
        self.residents = residents
        self.window_s = window_s
        self.max_rows = max_rows
        # Background rows join a running batch only this many at a time: a prefill pass of one or two short
        # prompts costs about half a 64-row decode step (SmolLM2 on CPU), one of 8 rows not much more.
        self.min_group = max(1, max_rows // 8)
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.waiting: list[Job] = []
        self.loading: set[tuple[str, str]] = set()
        self.loaded: dict[tuple[str, str], LoadedAdapter] = {}
        # (rows, distinct models) of recent prefills: what the batcher grouped, for tests and debugging;
        # (rows admitted, rows already running) of the same prefills.
        self.prefills: deque[tuple[int, int]] = deque(maxlen=256)
        self.admissions: deque[tuple[int, int]] = deque(maxlen=256)
        self.loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="adapter-loader")
        self.thread = threading.Thread(target=self._run, name="ftserve-batcher", daemon=True)
        self.stopping = False
        self.thread.start()

    # -- called from any thread -------------------------------------------------------------
    def submit(self, job: Job) -> None:
        self.inbox.put(Submit(job))

    def unload(self, base: str, adapter: str) -> None:
        self.inbox.put(Unload(base, adapter))

    def resident_adapters(self, timeout: float = 30.0) -> list[tuple[str, str]]:
        """(base, adapter name) of every resident adapter, read by the scheduler thread itself."""
        answer: Future[list[tuple[str, str]]] = Future()
        self.inbox.put(ListResident(answer))
        return answer.result(timeout)

    def stop(self) -> None:
        self.inbox.put(Stop())
        self.thread.join(timeout=30)
        self.loader.shutdown(wait=False, cancel_futures=True)

    # -- the scheduler thread ---------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopping:
            self._drain(block=not self._busy(), timeout=self._wake_in())
            try:
                self._admit()
                self._step()
            except Exception:  # never let the thread die; the failing batch's rows get the error
                log.exception("batcher iteration failed")

    def _busy(self) -> bool:
        return any(len(r.batch) for r in self.residents.values())

    def _wake_in(self) -> float | None:
        """How long an idle loop may sleep: until the oldest ready job's window closes."""
        ready = [j for j in self.waiting if self._slot(j) is not None]
        if not ready:
            return None
        return max(0.0, min(j.submitted for j in ready) + self.window_s - time.monotonic())

    def _drain(self, block: bool, timeout: float | None) -> None:
        try:
            msg = self.inbox.get(timeout=timeout) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(msg)
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, msg: Message) -> None:
        match msg:
            case Stop():
                self._stop_all()
            case Submit(job):
                job.remaining = len(job.rows)
                self.waiting.append(job)
                self._count_lookup(job)
            case Loaded(key, result):
                self.loading.discard(key)
                if isinstance(result, BaseException):
                    metrics.ADAPTER_LOAD_FAILURES.inc()
                    self._fail_waiting(key, result)
                else:
                    self.loaded[key] = result
            case ListResident(answer):
                answer.set_result([(base, name) for base, r in self.residents.items() for name in r.adapters.entries])
            case Unload(base, name):
                self.loaded.pop((base, name), None)
                resident = self.residents.get(base)
                if resident is not None and resident.adapters.unload(name):
                    metrics.ADAPTER_UNLOADS.inc()

    def _stop_all(self) -> None:
        self.stopping = True
        error = EngineStopped()
        jobs = {id(j): j for j in self.waiting}
        for res in self.residents.values():
            jobs.update((id(r.state.job), r.state.job) for r in res.batch.rows)
            res.batch.rows, res.batch.cache = [], None
        for job in jobs.values():
            job.done(error)
        self.waiting.clear()

    def _count_lookup(self, job: Job) -> None:
        if job.adapter is None:
            return
        res = self.residents[job.base]
        if res.adapters.slot(job.adapter) is not None:
            metrics.ADAPTER_HITS.inc()
            return
        metrics.ADAPTER_MISSES.inc()
        key = (job.base, job.adapter)
        if key not in self.loading and key not in self.loaded:
            self.loading.add(key)
            dtype = res.model.dtype
            self.loader.submit(self._load, key, job.model, job.locate, dtype)

    def _load(
        self,
        key: tuple[str, str],
        model: str,
        locate: Callable[[], Path | LoadedAdapter | None] | None,
        dtype: torch.dtype,
    ) -> None:
        """Loader thread: read the adapter's safetensors into CPU tensors (or take the tensors it is given), then
        hand them to the batcher."""
        try:
            found = None if locate is None else locate()
            if found is None:
                raise AdapterLoadError(model, "no complete safetensors adapter on disk")
            result: LoadedAdapter | BaseException = (
                found if isinstance(found, LoadedAdapter) else read_adapter(found, dtype)
            )
        except AdapterLoadError as exc:
            result = exc
        except Exception as exc:
            log.warning("adapter load failed for %s: %s", model, exc)
            result = AdapterLoadError(model, f"{type(exc).__name__}: {exc}")
        self.inbox.put(Loaded(key, result))

    def _fail_waiting(self, key: tuple[str, str], error: BaseException) -> None:
        failed = [j for j in self.waiting if (j.base, j.adapter) == key]
        self.waiting = [j for j in self.waiting if (j.base, j.adapter) != key]
        for job in failed:
            metrics.ROWS_FINISHED.labels("error").inc(len(job.rows))
            job.done(error)

    def _slot(self, job: Job) -> int | None:
        """The job's slot if its adapter is attached (attaching a loaded one when room allows), else None."""
        if job.adapter is None:
            return BASE_SLOT
        res = self.residents[job.base]
        slot = res.adapters.slot(job.adapter)
        key = (job.base, job.adapter)
        if slot is not None or key not in self.loaded:
            return slot
        adapter = self.loaded[key]
        if not res.adapters.make_room(adapter.nbytes):
            return None  # every resident adapter is in use: wait for rows to finish
        del self.loaded[key]
        try:
            slot = res.adapters.attach(job.adapter, adapter)
        except Exception as exc:
            metrics.ADAPTER_LOAD_FAILURES.inc()
            self._fail_waiting(key, AdapterLoadError(job.model, f"{type(exc).__name__}: {exc}"))
            return None
        metrics.ADAPTER_LOADS.inc()
        return slot

    def _admit(self) -> None:
        """Move ready jobs into their base's batch once the oldest has waited the window."""
        now = time.monotonic()
        ready: dict[str, list[Job]] = {}
        for job in list(self.waiting):
            if job in self.waiting and self._slot(job) is not None:
                ready.setdefault(job.base, []).append(job)
        for base, jobs in ready.items():
            res = self.residents[base]
            rows_ready = sum(len(j.rows) for j in jobs)
            if min(j.submitted for j in jobs) + self.window_s > now and rows_ready + len(res.batch) < self.max_rows:
                continue
            room = self.max_rows - len(res.batch)
            if len(res.batch) and room < self.min_group and all(j.background for j in jobs):
                continue  # only background rows wait: let more places free up and prefill them together
            take: list[Job] = []
            for job in jobs:
                if len(job.rows) > room and (take or len(res.batch)):
                    break
                take.append(job)
                room -= len(job.rows)
            if take:
                self._prefill(res, take)

    def _prefill(self, res: Resident, jobs: list[Job]) -> None:
        rows: list[Row] = []
        now = time.monotonic()
        for job in jobs:
            self.waiting.remove(job)
            slot = self._slot(job)
            assert slot is not None
            for row in job.rows:
                row.state.slot = slot
                row.state.job = job
                metrics.QUEUE_SECONDS.observe(now - job.submitted)
                if job.adapter is not None:
                    res.adapters.pin(job.adapter)
            rows.extend(job.rows)
        self.prefills.append((len(rows), len({j.adapter for j in jobs})))
        self.admissions.append((len(rows), len(res.batch)))
        try:
            with torch.inference_mode():
                finished = res.batch.admit([job.rows for job in jobs])
        except Exception as exc:
            log.exception("prefill failed")
            self._fail_rows(res, rows, exc)
            return
        metrics.GENERATED_TOKENS.inc(sum(len(r.token_ids) for r in rows))
        self._finish(res, finished)

    def _step(self) -> None:
        for res in self.residents.values():
            if not len(res.batch):
                continue
            n = len(res.batch)
            rows = list(res.batch.rows)
            before = sum(len(r.token_ids) for r in rows)
            started = time.perf_counter()
            try:
                with torch.inference_mode():
                    finished = res.batch.step()
            except Exception as exc:
                log.exception("decode step failed")
                res.batch.rows, res.batch.cache = [], None  # the cache may be half-updated: start afresh
                self._fail_rows(res, rows, exc)
                continue
            produced = sum(len(r.token_ids) for r in rows) - before
            metrics.BATCH_ROWS.observe(n)
            metrics.GENERATED_TOKENS.inc(produced)
            metrics.TOKENS_PER_SECOND.set(produced / max(time.perf_counter() - started, 1e-9))
            self._finish(res, finished)
        metrics.ACTIVE_ROWS.set(sum(len(r.batch) for r in self.residents.values()))

    def _finish(self, res: Resident, rows: list[Row]) -> None:
        """Rows that left the batch: a failed row fails its request alone; the request completes with its last row."""
        for row in rows:
            job: Job = row.state.job
            error = row.state.error
            if error is not None and not job.failed:
                log.warning("a row of %s failed: %r", job.model, error)
                job.failed = True
                for sibling in job.rows:  # the request has failed: its other rows stop at the next step
                    sibling.state.abandoned = True
                job.done(GenerationFailed(error))
            failed = error is not None or row.state.abandoned
            reason = "error" if failed else "cancelled" if row.was_cancelled else row.finish_reason or "stop"
            metrics.ROWS_FINISHED.labels(reason).inc()
            if not failed:
                notify_finished(row, row.finish_reason or "stop")
            if job.adapter is not None:
                res.adapters.unpin(job.adapter)
            job.remaining -= 1
            if job.remaining == 0 and not job.failed:
                metrics.REQUEST_SECONDS.observe(time.monotonic() - job.submitted)
                job.done(None)

    def _fail_rows(self, res: Resident, rows: list[Row], exc: Exception) -> None:
        """A forward pass failed: every request with a row in it fails with a server error."""
        error = GenerationFailed(exc)
        jobs: dict[int, Job] = {}
        for row in rows:
            job: Job = row.state.job
            jobs[id(job)] = job
            if job.adapter is not None:
                res.adapters.unpin(job.adapter)
        for job in jobs.values():
            metrics.ROWS_FINISHED.labels("error").inc(len(job.rows))
            job.done(error)
