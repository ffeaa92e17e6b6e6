"""The Batch API's runner, in the inference role: it claims a batch from the DB under a lease, submits its
requests to the engine many at a time (the batcher runs them at full batch width; no HTTP per line), records
each finished request in the DB as it completes (a restart redoes none), then writes the output and error
files in OpenAI's line shapes. A batch line is planned and answered by the same code as an HTTP request, state
included: a /v1/responses line continues its previous_response_id and is stored when its `store` says so."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import ValidationError
from transformers import PreTrainedTokenizerBase

from ftserve.core import metrics
from ftserve.core.config import Settings
from ftserve.core.datasets.batch import BatchLine, iter_batch_lines
from ftserve.core.datasets.formats import DatasetError
from ftserve.core.envelope import envelope
from ftserve.core.errors import ServiceError, bad_request
from ftserve.core.ids import new_id, now
from ftserve.core.storage import Storage
from ftserve.engine.engine import ModelRef
from ftserve.engine.errors import EngineStopped
from ftserve.serving.backends.base import Backend
from ftserve.serving.handlers import HANDLERS, Caller, Handler, Plan
from ftserve.serving.leased import FLUSH_SECONDS, LeasedRunner, Stopping, drain, flush_due
from ftserve.serving.ports import BatchLost, BatchStore, ClaimedBatch, ModelCatalog, ResponseStore, Result
from ftserve.serving.refs import model_ref

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A request of the batch in the engine."""

    line: BatchLine
    handler: Handler[Any, Any]
    plan: Plan
    tok: PreTrainedTokenizerBase


@dataclass
class _Run:
    """One batch's requests while they run: what is in the engine and the results not recorded yet."""

    claimed: ClaimedBatch
    lines: Iterator[BatchLine]
    cancel: threading.Event
    finished: queue.Queue[tuple[Pending, BaseException | None]] = field(default_factory=queue.Queue)
    models: dict[str, tuple[ModelRef, PreTrainedTokenizerBase] | ServiceError] = field(default_factory=dict)
    in_flight: dict[int, Pending] = field(default_factory=dict)
    buffer: list[Result] = field(default_factory=list)
    rows: int = 0  # rows of the requests in flight
    exhausted: bool = False
    outcome: str = "completed"
    flushed: float = field(default_factory=time.monotonic)  # when results were last recorded (or the lease renewed)

    def take_finished(self, wait_s: float) -> list[tuple[Pending, BaseException | None]]:
        return drain(self.finished, wait_s)

    def due(self, renew_s: float) -> bool:
        """Whether to record now: enough results, results waiting too long, or the lease needs renewing."""
        return flush_due(len(self.buffer), self.flushed, renew_s)


class BatchRunner(LeasedRunner[ClaimedBatch]):
    """Runs one batch at a time through the engine; `run_forever` is the inference role's background loop."""

    what = "batch"

    def __init__(
        self, engine: Backend, settings: Settings, store: BatchStore, catalog: ModelCatalog, responses: ResponseStore
    ) -> None:
        super().__init__(store, settings.batch_poll_seconds, BatchLost)
        self.engine = engine
        self.settings = settings
        self.store: BatchStore = store
        self.catalog = catalog
        self.responses = responses
        # Rows kept in the engine: twice a full batch, so a finished row's place is taken at once.
        self.window = 2 * settings.max_batch_rows

    def _run(self, claimed: ClaimedBatch) -> None:
        if claimed.status == "finalizing":  # every request was recorded before its runner died
            self.store.finish(claimed.id, claimed.org, "completed", [])
            return
        try:
            path = Storage(self.settings).local_file(claimed.input_file_id)
            lines = list(iter_batch_lines(path, self.settings.max_line_bytes))
        except (OSError, DatasetError) as exc:
            error = {"code": "invalid_input_file", "message": f"The input file cannot be read: {exc}"}
            self.store.fail(claimed.id, [{**error, "param": "input_file_id", "line": getattr(exc, "line", None)}])
            return
        if claimed.status == "validating":
            self.store.start(claimed.id, len(lines))
        done = self.store.finished_lines(claimed.id)
        todo = [line for line in lines if line.line not in done]
        if claimed.status == "cancelling":
            outcome = "cancelled"
        elif now() >= claimed.expires_at:
            outcome = "expired"
        else:
            outcome = self._execute(claimed, todo)
        left = {line.line for line in todo} - self.store.finished_lines(claimed.id)
        reason = {"cancelled": "the batch was cancelled", "expired": "the batch expired before this request ran"}
        unrun = [
            {
                "id": new_id("batch_req_"),
                "custom_id": line.custom_id,
                "response": None,
                "error": {"code": f"batch_{outcome}", "message": f"Not run: {reason.get(outcome, outcome)}"},
            }
            for line in todo
            if line.line in left
        ]
        if outcome == "completed":
            self.store.finalizing(claimed.id)
        self.store.finish(claimed.id, claimed.org, outcome, unrun)

    def _execute(self, claimed: ClaimedBatch, todo: list[BatchLine]) -> str:
        """Run the requests, keeping the engine full; 'completed', or 'cancelled'/'expired' if stopped early."""
        cancel = threading.Event()
        try:
            return self._drive(claimed, todo, cancel)
        finally:
            cancel.set()  # leaving for any reason (lost lease, DB error): rows still in the engine stop

    def _drive(self, claimed: ClaimedBatch, todo: list[BatchLine], cancel: threading.Event) -> str:
        """Keep the engine full with the batch's requests, record results as they finish, and renew the lease;
        the outcome ('completed', 'cancelled', 'expired'), or Stopping when this process leaves the batch."""
        run = _Run(claimed, iter(todo), cancel)
        while True:
            self._fill(run)
            if not run.in_flight and (run.exhausted or cancel.is_set()):
                break
            self._collect(run)
            if run.due(self._renew_s):
                self._flush(run)
            if self.stopping.is_set():
                cancel.set()
                if not run.in_flight:
                    break
        if run.buffer:
            self.store.record(claimed.id, run.buffer)
            self._count(run.buffer)
        if self.stopping.is_set() and run.outcome == "completed":
            raise Stopping()  # what is not recorded yet is run by the next runner
        return run.outcome

    def _fill(self, run: _Run) -> None:
        """Submit the next lines until the engine holds a window's worth of rows (a line that cannot run is
        answered at once)."""
        while not run.cancel.is_set() and not run.exhausted and run.rows < self.window:
            line = next(run.lines, None)
            if line is None:
                run.exhausted = True
                return
            try:
                pending, ref = self._prepare(run.claimed.org, line, run.models)
            except ServiceError as exc:
                run.buffer.append(self._failure(line, exc))
                continue
            run.in_flight[line.line] = pending
            run.rows += len(pending.plan.rows)
            done = partial(_put, run.finished, pending)
            self.engine.submit(ref, pending.plan.rows, done, cancelled=run.cancel.is_set, background=True)

    def _collect(self, run: _Run) -> None:
        """Take the requests that finished (waiting up to FLUSH_SECONDS for the first) into the results."""
        for pending, error in run.take_finished(FLUSH_SECONDS):
            del run.in_flight[pending.line.line]
            run.rows -= len(pending.plan.rows)
            # The engine is stopping: this request did not run. (A vLLM base with no replica left is
            # Unavailable too, but that fails the line like any other error.)
            if isinstance(error, EngineStopped):
                self.stopping.set()
            elif not any(r.was_cancelled for r in pending.plan.rows):
                done = self._failure(pending.line, error) if error else self._success(run.claimed.org, pending)
                run.buffer.append(done)

    def _flush(self, run: _Run) -> None:
        """Record the results (or just renew the lease); a batch the api is cancelling, or past its expiry, stops."""
        claimed = run.claimed
        status = self.store.record(claimed.id, run.buffer) if run.buffer else self.store.renew(claimed.id)
        self._count(run.buffer)
        run.buffer, run.flushed = [], time.monotonic()
        if status == "cancelling":
            run.outcome = "cancelled"
        elif now() >= claimed.expires_at:
            run.outcome = "expired"
        if run.outcome != "completed":
            run.cancel.set()

    @property
    def _renew_s(self) -> float:
        return self.settings.batch_lease_seconds / 3

    def _prepare(
        self, org: str, line: BatchLine, models: dict[str, tuple[ModelRef, PreTrainedTokenizerBase] | ServiceError]
    ) -> tuple[Pending, ModelRef]:
        """The request's model and rows, exactly as its HTTP route would build them; ServiceError if it cannot run."""
        handler = HANDLERS[line.url]  # the url was checked at upload
        try:
            req = handler.endpoint.request.model_validate(line.body)
        except ValidationError as exc:  # checked at upload; kept for files validated by an older version
            raise bad_request(f"Invalid request body: {exc.errors()[0].get('msg')}") from None
        if req.model not in models:
            try:
                ref = model_ref(self.catalog.resolve(org, req.model), Storage(self.settings))
                models[req.model] = (ref, self.engine.tokenizer(ref.base))
            except ServiceError as exc:
                models[req.model] = exc
        found = models[req.model]
        if isinstance(found, ServiceError):
            raise found
        ref, tok = found
        plan = handler.plan(handler.given(req, Caller(org, self.responses)), tok, self.settings, ref.base)
        handler.check(self.engine, ref.base, plan)
        return Pending(line, handler, plan, tok), ref

    def _success(self, org: str, p: Pending) -> Result:
        """The line's output; a response to store is stored first (its line fails if that cannot be done)."""
        body = p.handler.body(p.plan, p.tok, new_id(p.handler.endpoint.id_prefix), now())
        try:
            p.handler.keep(Caller(org, self.responses), p.plan, body)
        except ServiceError as exc:
            return self._failure(p.line, exc)
        return Result(p.line.line, True, _record(p.line, 200, body.model_dump(mode="json")))

    def _failure(self, line: BatchLine, error: BaseException) -> Result:
        status, body = envelope(error)
        return Result(line.line, False, _record(line, status, body))

    @staticmethod
    def _count(results: list[Result]) -> None:
        for r in results:
            metrics.BATCH_REQUESTS.labels("ok" if r.ok else "failed").inc()


def _record(line: BatchLine, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's output/error line: the response as the endpoint would have sent it."""
    response = {"status_code": status, "request_id": new_id("req_"), "body": body}
    return {"id": new_id("batch_req_"), "custom_id": line.custom_id, "response": response, "error": None}


def _put(finished: queue.Queue[tuple[Pending, BaseException | None]], p: Pending, error: BaseException | None) -> None:
    finished.put((p, error))
