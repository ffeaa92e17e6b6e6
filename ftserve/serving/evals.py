"""The Evals API's runner, in the inference role, run like the Batch API's: it claims a run from the DB under a
lease, keeps the engine full with the run's sampling requests (background admission at full batch width, no HTTP
per item), grades each sample in a thread pool while generation goes on, and records graded items as they finish
(a restart of the inference role resumes the run and grades none of them again). A cancel or delete by the api
makes its next write fail (EvalRunLost), and the rows still in the engine stop."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ftserve import graders
from ftserve.core import metrics
from ftserve.core.config import Settings
from ftserve.core.datasets.formats import DatasetError
from ftserve.core.envelope import envelope
from ftserve.core.errors import ServiceError
from ftserve.core.evals.items import EvalItem, content_items, file_items
from ftserve.core.evals.records import ClaimedEvalRun, EvalRunLost, GradedItem, ModelUsage
from ftserve.core.storage import Storage
from ftserve.engine.errors import EngineStopped
from ftserve.graders.http_judge import HttpJudge, judge_url
from ftserve.graders.input_messages import ItemMismatch
from ftserve.serving import eval_grading
from ftserve.serving.backends.base import Backend
from ftserve.serving.eval_samples import Sampler, data_source, line_sample, sample_record
from ftserve.serving.handlers import Plan
from ftserve.serving.leased import FLUSH_SECONDS, LeasedRunner, Stopping, drain, flush_due
from ftserve.serving.ports import EvalStore, ModelCatalog, ResponseStore

log = logging.getLogger(__name__)


@dataclass
class _Sampling:
    """An item whose rows are in the engine."""

    item: EvalItem
    plan: Plan
    messages: list[dict[str, str]]


@dataclass
class _Run:
    """One run while it goes: what is in the engine, what is being graded, and what is not recorded yet."""

    claimed: ClaimedEvalRun
    items: Iterator[EvalItem]
    sampler: Sampler | None  # None: a jsonl run, whose samples are its lines'
    criteria: list[eval_grading.Criterion]
    cancel: threading.Event = field(default_factory=threading.Event)
    # ("sampled", _Sampling, error) from the engine's threads; ("graded", GradedItem, None) from the graders'.
    events: queue.Queue[tuple[str, Any, BaseException | None]] = field(default_factory=queue.Queue)
    in_flight: dict[int, _Sampling] = field(default_factory=dict)
    rows: int = 0  # rows of the items in the engine
    grading: int = 0  # items in the grader pool
    buffer: list[GradedItem] = field(default_factory=list)
    exhausted: bool = False
    flushed: float = field(default_factory=time.monotonic)

    def take(self, wait_s: float) -> list[tuple[str, Any, BaseException | None]]:
        return drain(self.events, wait_s)

    def due(self, renew_s: float) -> bool:
        return flush_due(len(self.buffer), self.flushed, renew_s)


class EvalRunner(LeasedRunner[ClaimedEvalRun]):
    """Runs one eval run at a time through the engine; `run_forever` is the inference role's background loop."""

    what = "eval run"

    def __init__(
        self, engine: Backend, settings: Settings, store: EvalStore, catalog: ModelCatalog, responses: ResponseStore
    ) -> None:
        super().__init__(store, settings.eval_poll_seconds, EvalRunLost)
        self.engine, self.settings = engine, settings
        self.store: EvalStore = store
        self.catalog, self.responses = catalog, responses
        # Rows kept in the engine: twice a full batch, so a finished row's place is taken at once; grading may lag
        # generation by as much again before new items wait for it.
        self.window = 2 * settings.max_batch_rows
        self.pool = ThreadPoolExecutor(settings.eval_grader_threads, thread_name_prefix="eval-grader")
        self.limits = graders.limits_for(settings.python_grader_timeout_seconds, settings.python_grader_memory_bytes)

    def stop(self, timeout: float = 30.0) -> None:
        """Leave the running run (graded items kept, lease released) before the engine stops."""
        super().stop(timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, claimed: ClaimedEvalRun) -> None:
        try:
            items = self._items(claimed)
            ds = data_source(claimed.data_source)
            sampler = None if ds.type == "jsonl" else self._sampler(ds, claimed.org)
        except (OSError, DatasetError) as exc:
            self.store.fail(claimed.id, "invalid_data_source", f"The run's items cannot be read: {exc}")
            return
        except ServiceError as exc:  # its model was deleted since the run was created
            self.store.fail(claimed.id, exc.code or "invalid_data_source", str(exc))
            return
        self.store.start(claimed.id, len(items))
        done = self.store.graded_items(claimed.id)
        judging, release = self._judging(claimed)
        try:
            found = eval_grading.criteria(claimed.testing_criteria, self.limits, judging)
            todo = (i for i in items if i.index not in done)
            self._drive(_Run(claimed, todo, sampler, found))
        finally:
            release()
        self.store.finish(claimed.id)

    def _items(self, claimed: ClaimedEvalRun) -> list[EvalItem]:
        source = claimed.data_source["source"]
        if source["type"] == "file_content":
            return content_items(source["content"], claimed.item_schema)
        path = Storage(self.settings).local_file(source["id"])
        return file_items(path, self.settings.max_line_bytes, claimed.item_schema)

    def _sampler(self, ds: Any, org: str) -> Sampler:
        return Sampler(ds, org, self.engine, self.settings, self.catalog, self.responses)

    def _judging(self, claimed: ClaimedEvalRun) -> tuple[graders.JudgeConfig, Callable[[], None]]:
        """The judge model graders ask (the serving path over HTTP, as the run's org), and how to let it go."""
        if not eval_grading.uses_a_judge(claimed.testing_criteria):
            return graders.JudgeConfig(model_map=self.settings.grader_model_map), lambda: None
        url = judge_url(self.settings, serves_inference=True) or "http://127.0.0.1"
        judge = HttpJudge(url, self.store.judge_authorization(claimed.id))

        def release() -> None:
            judge.close()
            self.store.revoke_judge_authorization(claimed.id)

        return graders.JudgeConfig(judge=judge, model_map=self.settings.grader_model_map), release

    def _drive(self, run: _Run) -> None:
        """Keep the engine and the graders busy with the run's items, recording graded ones as they come."""
        try:
            while True:
                self._fill(run)
                if not run.in_flight and not run.grading and (run.exhausted or run.cancel.is_set()):
                    break
                self._collect(run)
                if run.due(self.settings.eval_lease_seconds / 3):
                    self._flush(run)
                if self.stopping.is_set():
                    run.cancel.set()
                    if not run.in_flight:
                        break
            if run.buffer:
                self._flush(run)
        finally:
            run.cancel.set()  # leaving for any reason (canceled, lost lease, DB error): rows in the engine stop
        if self.stopping.is_set():
            raise Stopping()  # what is not recorded yet is run by the next runner

    def _fill(self, run: _Run) -> None:
        """Start the next items until the engine holds a window's rows (and the graders a window's items)."""
        while not run.cancel.is_set() and not run.exhausted and run.rows < self.window and run.grading < self.window:
            item = next(run.items, None)
            if item is None:
                run.exhausted = True
                return
            if item.error is not None:
                run.buffer.append(eval_grading.errored(item.index, item.item, _unsampled(), "invalid_item", item.error))
            elif run.sampler is None:
                sample, record = line_sample(item)
                self._grade(run, item, sample, record, ())
            else:
                self._submit(run, run.sampler, item)

    def _submit(self, run: _Run, sampler: Sampler, item: EvalItem) -> None:
        try:
            plan, messages = sampler.plan(item)
        except ItemMismatch as exc:
            run.buffer.append(eval_grading.errored(item.index, item.item, _unsampled(), "invalid_item", str(exc)))
            return
        except ServiceError as exc:
            _, body = envelope(exc)
            error = body["error"]
            record = _unsampled()
            run.buffer.append(eval_grading.errored(item.index, item.item, record, error["code"] or "invalid_request",
                                                   f"{item.where}: {error['message']}"))  # fmt: skip
            return
        pending = _Sampling(item, plan, messages)
        run.in_flight[item.index] = pending
        run.rows += len(plan.rows)
        done = partial(_put, run.events, "sampled", pending)
        self.engine.submit(sampler.ref, plan.rows, done, cancelled=run.cancel.is_set, background=True)

    def _collect(self, run: _Run) -> None:
        """Hand finished samples to the graders, and graded items to the buffer."""
        for kind, what, error in run.take(FLUSH_SECONDS):
            if kind == "graded":
                run.grading -= 1
                run.buffer.append(what)
                continue
            pending: _Sampling = what
            del run.in_flight[pending.item.index]
            run.rows -= len(pending.plan.rows)
            item = pending.item
            if isinstance(error, EngineStopped):
                self.stopping.set()
            elif any(r.was_cancelled for r in pending.plan.rows):
                continue
            elif error is not None:
                _, body = envelope(error)
                record = sample_record(run.sampler.model if run.sampler else None, pending.messages, "", None, None)
                code = body["error"].get("code") or "sampling_failed"
                run.buffer.append(eval_grading.errored(item.index, item.item, record, code, body["error"]["message"]))
            else:
                assert run.sampler is not None
                sample, record, usage = run.sampler.sample(pending.plan, pending.messages)
                self._grade(run, item, sample, record, (usage,))

    def _grade(
        self, run: _Run, item: EvalItem, sample: graders.Sample, record: dict[str, Any], usage: tuple[ModelUsage, ...]
    ) -> None:
        run.grading += 1

        def work() -> None:
            try:
                graded = eval_grading.grade(run.criteria, item.index, item.item, sample, record, usage)
            except Exception as exc:  # never lose an item to a bug: it errors, the run goes on
                log.exception("grading item %s failed", item.index)
                graded = eval_grading.errored(item.index, item.item, record, "grading_failed", str(exc))
            run.events.put(("graded", graded, None))

        self.pool.submit(work)

    def _flush(self, run: _Run) -> None:
        """Record the graded items (or just renew the lease); EvalRunLost once the api canceled or deleted the run."""
        if run.buffer:
            self.store.record(run.claimed.id, run.buffer)
            for graded in run.buffer:
                metrics.EVAL_ITEMS.labels(graded.status).inc()
        else:
            self.store.renew(run.claimed.id)
        run.buffer, run.flushed = [], time.monotonic()


def _unsampled() -> dict[str, Any]:
    return sample_record(None, [], "", None, None)


def _put(
    events: queue.Queue[tuple[str, Any, BaseException | None]], kind: str, what: Any, error: BaseException | None
) -> None:
    events.put((kind, what, error))
