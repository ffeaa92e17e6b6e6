"""What serving needs from the control plane, as ports the control plane implements (control/services:
serving_catalog.SqlModelCatalog, batch_store.SqlBatchStore, response_store.SqlResponseStore,
eval_store.SqlEvalStore) and hands to `serving.app.install`: who the caller is and what a model name means, the
Batch API's leased store, the Responses API's stored responses and the Evals API's leased runs (whose records are
core's, ftserve/core/evals/records, so the store implements this port without importing serving). Torch-free;
stands on core alone."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ftserve.core.evals.records import ClaimedEvalRun, EvalRunLost, GradedItem
from ftserve.core.resolved import ResolvedModel

__all__ = ["ClaimedEvalRun", "EvalRunLost", "GradedItem"]  # the eval records, re-exported beside their port

# (job id, step or None for the final adapter): one fine-tuned adapter.
AdapterId = tuple[str, int | None]


class ModelCatalog(Protocol):
    """The caller's organization and the org's model names; errors are domain errors (core/errors)."""

    def org_for(self, authorization: str | None) -> str:
        """The org an Authorization header belongs to (Unauthenticated when it is refused)."""
        ...

    def resolve(self, org: str, model: str) -> ResolvedModel:
        """A model name for this org: a base, or a live fine-tuned model of the org (NotFound otherwise)."""
        ...

    def servable_adapters(self, adapters: set[AdapterId]) -> set[AdapterId]:
        """Those adapters that still back a model nobody deleted."""
        ...


class BatchLost(Exception):
    """This runner no longer holds the batch's lease (another process took it over)."""


@dataclass(frozen=True)
class ClaimedBatch:
    id: str
    org: str
    endpoint: str
    input_file_id: str
    status: str
    expires_at: int


@dataclass(frozen=True)
class Result:
    """A finished request: its line, whether it goes to the output file (else the error file), the line's JSON."""

    line: int
    ok: bool
    record: dict[str, Any]


class BatchStore(Protocol):
    """The batches one runner claims; every write checks the lease is still its own (else BatchLost)."""

    def claim(self) -> ClaimedBatch | None:
        """The oldest active batch whose lease is free or expired, now leased to this runner; None if none."""
        ...

    def start(self, batch_id: str, total: int) -> None:
        """validating → in_progress with its request count."""
        ...

    def fail(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        """The batch cannot run (its input file is gone or unreadable): failed, with the reasons."""
        ...

    def renew(self, batch_id: str) -> str:
        """Extend the lease; returns the batch's status (the api may have moved it to cancelling)."""
        ...

    def release(self, batch_id: str) -> None:
        """Give the lease up (this process is stopping), so the next runner takes over at once."""
        ...

    def finished_lines(self, batch_id: str) -> set[int]:
        """Lines already recorded: a restarted batch skips them."""
        ...

    def record(self, batch_id: str, results: Iterable[Result]) -> str:
        """Store finished requests and their counts and renew the lease, together; returns the status."""
        ...

    def finalizing(self, batch_id: str) -> None:
        """in_progress → finalizing (the output files are being written)."""
        ...

    def finish(self, batch_id: str, org: str, status: str, unrun: list[dict[str, Any]]) -> None:
        """Write the output and error files (`unrun` lines last) and move the batch to `status`, all or nothing."""
        ...


@dataclass(frozen=True)
class SavedResponse:
    """A stored Responses API response: the Response object (JSON), this request's input items (each with its
    id) and the conversation before them (the previous responses' inputs and outputs, instructions left out)."""

    id: str
    created_at: int
    body: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]


class ResponseStore(Protocol):
    """The org's stored responses; another org's id, or one deleted or never stored, is NotFound."""

    def save(self, org: str, response: SavedResponse) -> None: ...

    def get(self, org: str, response_id: str) -> SavedResponse: ...

    def delete(self, org: str, response_id: str) -> None: ...

    def input_items(
        self, org: str, response_id: str, after: str | None, limit: int, order: str
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of the response's input items (order "asc" or "desc") after the item `after`; (items, has_more)."""
        ...


class EvalStore(Protocol):
    """The eval runs one runner claims; every write checks the lease is still its own and the run still in
    progress (else EvalRunLost: canceled or deleted by the api, or taken over)."""

    def claim(self) -> ClaimedEvalRun | None:
        """The oldest queued or running run whose lease is free or expired, now in_progress and leased to this
        runner; None if none."""
        ...

    def start(self, run_id: str, item_count: int) -> None:
        """The run's item count, once its data source is read."""
        ...

    def renew(self, run_id: str) -> None: ...

    def release(self, run_id: str) -> None:
        """Give the lease up (this process is stopping), so the next runner takes over at once."""
        ...

    def graded_items(self, run_id: str) -> set[int]:
        """Items already recorded: a resumed run skips them."""
        ...

    def record(self, run_id: str, items: Iterable[GradedItem]) -> None:
        """Store graded items and add them to the run's counts, renewing the lease, together."""
        ...

    def finish(self, run_id: str) -> None:
        """in_progress → completed."""
        ...

    def fail(self, run_id: str, code: str, message: str) -> None:
        """The run cannot go on (its data source is gone or its model deleted): failed, with the reason."""
        ...

    def judge_authorization(self, run_id: str) -> str | None:
        """The Authorization header its model graders' judge calls carry: a key for the run's org (revoked by
        revoke_judge_authorization), or None where the server takes no keys."""
        ...

    def revoke_judge_authorization(self, run_id: str) -> None: ...
